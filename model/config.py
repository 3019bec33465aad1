"""Typed, validated hyper-parameters of the method (network, EMA, bank, pseudo-labels, losses).

Every choice that the seed does not fix is a field here, with the default we use and a
comment saying whose choice it is. ``distributed.config`` nests these into one run config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Labeler = Literal["none", "pl", "ppl_hard", "ppl_soft", "em_mil", "poibin", "oracle"]
LABELERS: tuple[str, ...] = get_args(Labeler)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {msg}")


def _check_finite(config, prefix: str) -> None:
    """inf and NaN satisfy none of the range checks' intent (``tau > 0`` holds for inf): refuse them first."""
    for name, value in vars(config).items():
        if isinstance(value, float):
            _check(float("-inf") < value < float("inf"), f"{prefix}.{name}", f"must be a finite number, got {value!r}")


@dataclass
class NetworkConfig:
    """Sizes of the parser (seed §1, Table 1). ``preset`` selects a block structure, not magic numbers."""

    preset: Literal["ppl", "han"] = "ppl"
    # which two streams: audio + visual (LLP: audio_dim, visual_2d_dim, visual_3d_dim) or, for W-TAL (THUMOS14),
    # RGB + flow I3D snippets (rgb_dim, flow_dim) in the audio and visual places; variable length with masks
    streams: Literal["audio_visual", "rgb_flow"] = "audio_visual"
    num_classes: int = 25
    num_segments: int = 10
    audio_dim: int = 128
    visual_2d_dim: int = 2048
    visual_3d_dim: int = 512
    rgb_dim: int = 1024                   # streams=rgb_flow: I3D RGB width per snippet
    flow_dim: int = 1024                  # streams=rgb_flow: I3D flow width per snippet
    model_dim: int = 512                  # d in Eq. 1-5
    # "ppl" preset (our reading of the garbled Table 1, see docs/method.md)
    audio_hidden: int = 256
    visual_hidden: int = 1024
    attention_scale: Literal["d", "sqrt_d"] = "d"   # Eq. 4 divides by d; "sqrt_d" is Vaswani's
    # "han" preset (Tian et al. 2020): one hybrid self+cross attention layer with an FFN
    han_heads: int = 1
    han_ffn_dim: int = 512
    dropout: float = 0.1
    leaky_relu_slope: float = 0.01
    # EM-MIL (Luo et al. 2020): a class-agnostic key-instance head per modality; needed by ppl.labeler=em_mil
    key_instance_head: bool = False

    def validate(self, prefix: str = "model") -> None:
        _check_finite(self, prefix)
        _check(self.preset in ("ppl", "han"), f"{prefix}.preset", f"must be 'ppl' or 'han', got {self.preset!r}")
        _check(self.streams in ("audio_visual", "rgb_flow"), f"{prefix}.streams",
               f"must be 'audio_visual' or 'rgb_flow', got {self.streams!r}")
        for name in ("num_classes", "num_segments", "audio_dim", "visual_2d_dim", "visual_3d_dim", "rgb_dim",
                     "flow_dim", "model_dim", "audio_hidden", "visual_hidden", "han_heads", "han_ffn_dim"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value > 0, f"{prefix}.{name}", f"must be a positive integer, got {value!r}")
        _check(self.model_dim % self.han_heads == 0, f"{prefix}.han_heads", "must divide model_dim")
        _check(self.attention_scale in ("d", "sqrt_d"), f"{prefix}.attention_scale", "must be 'd' or 'sqrt_d'")
        _check(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", f"must be in [0, 1), got {self.dropout!r}")
        _check(0.0 <= self.leaky_relu_slope < 1.0, f"{prefix}.leaky_relu_slope",
               f"must be in [0, 1), got {self.leaky_relu_slope!r}")


@dataclass
class PPLConfig:
    """Momentum encoder, prototype bank and pseudo-labels (DESIGN §3.2-3.4.1).

    ``labeler``: none = Base (MIL only); pl = naive self-training on thresholded predictions;
    ppl_hard / ppl_soft = prototype pseudo-labels (one-hot argmax / softmax with temperature tau);
    em_mil = EM-MIL's key instances (Luo et al. 2020); poibin = PoiBin-style count-matched labels
    (after Rachavarapu & Rajagopalan 2023, reconstructed); oracle = the per-segment truth as pseudo-labels, a
    diagnostic ceiling for synthetic data only (how much any pseudo-labeler could add). See docs/method.md.
    """

    labeler: Labeler = "ppl_soft"
    tau: float = 0.1                       # seed Table 3 best
    ema_decay: float | None = 0.999        # None = "without EMA" (seed Table 4): online features, detached
    ema_warmup: bool = True                # ours: alpha_t = min(alpha, (1+t)/(10+t)), model/momentum.py
    # ours: the dtype the momentum teacher's forward runs in (autocast on the inputs' device; outputs float32).
    # It only ever runs without gradients, so bfloat16 costs little accuracy and makes it ~3x cheaper where
    # the hardware has bf16 matmuls (CUDA Ampere+, CPUs with AMX / AVX512-BF16); see docs/method.md
    teacher_precision: Literal["float32", "bfloat16"] = "float32"
    # prototype bank (ours: the main paper's Sec. 4 is not available)
    prototypes_per_class: int = 1          # K
    # which of its class's K slots a key segment updates (ours; docs/method.md): nearest = online spherical
    # k-means; sinkhorn = SwAV's Sinkhorn-Knopp balanced codes over the step's key segments of all ranks
    prototype_assignment: Literal["nearest", "sinkhorn"] = "nearest"
    sinkhorn_epsilon: float = 0.05         # SwAV's entropic regularisation (Caron et al. 2020)
    sinkhorn_iterations: int = 3           # SwAV's default
    bank_momentum: float = 0.99            # beta in mu <- normalise(beta*mu + (1-beta)*mean)
    center_features: bool = True           # compare features after subtracting their running mean
    key_top_k: int = 1                     # key segments per (video, labelled class, modality)
    key_min_prob: float = 0.5              # confidence floor for key segments
    # low_confidence: one background prototype per modality from segments where every labelled class
    #   is < background_max_prob (at most background_top_k per video and modality);
    # negatives: per class, a negative prototype from all segments of videos WITHOUT that class
    #   (certain negatives under weak labels); needs competition=per_class
    # in_video_negatives: per class, a negative prototype from the background_top_k least likely segments of c
    #   (probability < background_max_prob) in each video labelled c: context-matched negatives; per_class only
    background: Literal["none", "low_confidence", "negatives", "in_video_negatives"] = "negatives"
    background_max_prob: float = 0.1
    background_top_k: int = 1              # at most this many least-confident segments per video+modality
    # how pseudo-labels are formed from similarities
    competition: Literal["across_classes", "per_class"] = "per_class"
    # across_classes: one softmax over labelled classes + background (seed Eq. 10 as we read it);
    # per_class: each labelled class vs background, softmax over the pair (co-occurring events don't compete)
    # what a per_class pseudo-label compares s_c with (ours, docs/method.md): prototype_pair = s_bg, the similarity to
    # c's negative (or background) prototype; midpoint = the threshold halfway between the mean s_c of c's key
    # segments and of c's negatives (running means in the bank, all-reduced with it)
    decision: Literal["prototype_pair", "midpoint"] = "prototype_pair"
    # what a per_class pseudo-label weighs (ours, docs/method.md): prototypes = sigmoid((s_c - s_bg) / tau) alone;
    # prototypes_and_teacher = the prototype margin added to the momentum teacher's own logit (ProDA-style rectification)
    pl_evidence: Literal["prototypes", "prototypes_and_teacher"] = "prototypes"
    confidence_gate: float = 0.0           # loss only where the pseudo-label's winning prob >= gate
    pl_threshold: float = 0.5              # naive PL: target = prediction >= threshold
    # loss schedule
    pl_weight: float = 0.5                 # lambda_pl
    contrastive_weight: float = 0.0        # lambda_con
    contrastive_tau: float = 0.1
    warmup_epochs: int = 2                 # MIL-only epochs before pseudo-labels switch on
    rampup_epochs: int = 1                 # linear ramp of lambda_pl after warm-up
    # ours (the abstract's "iteratively re-estimated", read as EM): 0 = pseudo-labels from the live bank every
    # step; N = from the bank frozen at the start of every N-th epoch after warm-up (E-step), trained on (M-step)
    reestimate_every: int = 0
    # em_mil (Luo et al. 2020, authors' code airmachine/EM-MIL-WeaklyActionDetection)
    em_mil_gamma: float = 0.15             # key instances: key > mean + gamma*(max - min) (authors' default)
    em_mil_alternate_epochs: int = 1       # after warm-up: E, M, E, ... blocks of this many epochs (authors: 1)
    # poibin (ours, reconstructed): expected positives per labelled (video, modality, class) = fraction * T;
    # 0.6 ~ the LLP val+test share of a labelled class's segments that are positive (0.67 audio, 0.53 visual)
    poibin_positive_fraction: float = 0.6
    # MIL loss options (HAN)
    modality_losses: bool = False          # HAN's extra per-modality BCE terms
    visual_label_smoothing: float = 0.0    # HAN: Pv = (1-eps)*W + eps*0.5 with eps = 0.1

    def validate(self, prefix: str = "ppl") -> None:
        _check_finite(self, prefix)
        _check(self.labeler in LABELERS, f"{prefix}.labeler",
               f"must be one of {', '.join(LABELERS)}, got {self.labeler!r}")
        _check(isinstance(self.tau, (int, float)) and self.tau > 0, f"{prefix}.tau", f"must be > 0, got {self.tau!r}")
        _check(self.tau >= 1e-6, f"{prefix}.tau", f"must be >= 1e-6 (smaller overflows the float32 similarities; "
               f"ppl_hard is the tau -> 0 limit), got {self.tau!r}")
        if self.ema_decay is not None:
            _check(isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0, f"{prefix}.ema_decay",
                   f"must be in [0, 1) or none, got {self.ema_decay!r}")
        _check(self.teacher_precision in ("float32", "bfloat16"), f"{prefix}.teacher_precision",
               f"must be float32 or bfloat16, got {self.teacher_precision!r}")
        _check(isinstance(self.prototypes_per_class, int) and self.prototypes_per_class >= 1,
               f"{prefix}.prototypes_per_class", "must be an integer >= 1")
        _check(0.0 <= self.bank_momentum < 1.0, f"{prefix}.bank_momentum", f"must be in [0, 1), got {self.bank_momentum!r}")
        _check(isinstance(self.key_top_k, int) and self.key_top_k >= 1, f"{prefix}.key_top_k", "must be an integer >= 1")
        _check(isinstance(self.background_top_k, int) and self.background_top_k >= 1,
               f"{prefix}.background_top_k", "must be an integer >= 1")
        for name in ("key_min_prob", "background_max_prob", "confidence_gate", "pl_threshold"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{prefix}.{name}", f"must be in [0, 1], got {value!r}")
        _check(self.background in ("none", "low_confidence", "negatives", "in_video_negatives"), f"{prefix}.background",
               "must be none, low_confidence, negatives or in_video_negatives")
        _check(not (self.background in ("negatives", "in_video_negatives") and self.competition != "per_class"),
               f"{prefix}.background", f"{self.background} needs ppl.competition=per_class (each class is scored "
               f"against its own negative)")
        _check(not (self.background == "none" and self.competition == "per_class"
                    and self.labeler in ("ppl_hard", "ppl_soft")), f"{prefix}.background",
               "none leaves per_class competition nothing to score a class against (no positive pseudo-label "
               "could ever form): use negatives or low_confidence, or ppl.competition=across_classes")
        _check(self.competition in ("across_classes", "per_class"), f"{prefix}.competition",
               "must be across_classes or per_class")
        _check(self.decision in ("prototype_pair", "midpoint"), f"{prefix}.decision",
               f"must be prototype_pair or midpoint, got {self.decision!r}")
        _check(self.decision == "prototype_pair" or (self.competition == "per_class" and self.background in (
            "negatives", "in_video_negatives")), f"{prefix}.decision",
            "midpoint needs ppl.competition=per_class and ppl.background=negatives or in_video_negatives "
            "(the threshold sits between c's key segments and c's negatives)")
        _check(self.pl_evidence in ("prototypes", "prototypes_and_teacher"), f"{prefix}.pl_evidence",
               f"must be prototypes or prototypes_and_teacher, got {self.pl_evidence!r}")
        _check(self.pl_evidence == "prototypes" or self.competition == "per_class", f"{prefix}.pl_evidence",
               "prototypes_and_teacher needs ppl.competition=per_class (the teacher gives per-class odds, no "
               "background probability to compete across classes with)")
        for name in ("pl_weight", "contrastive_weight"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
            _check(getattr(self, name) <= 1000, f"{prefix}.{name}", "must be <= 1000 (the loss would overflow)")
        _check(self.contrastive_tau > 0, f"{prefix}.contrastive_tau", "must be > 0")
        _check(self.contrastive_tau >= 1e-6, f"{prefix}.contrastive_tau", "must be >= 1e-6 (smaller overflows float32)")
        for name in ("warmup_epochs", "rampup_epochs"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"{prefix}.{name}",
                   "must be an integer >= 0")
        _check(0.0 <= self.visual_label_smoothing < 1.0, f"{prefix}.visual_label_smoothing", "must be in [0, 1)")
        _check(self.prototype_assignment in ("nearest", "sinkhorn"), f"{prefix}.prototype_assignment",
               f"must be nearest or sinkhorn, got {self.prototype_assignment!r}")
        _check(self.sinkhorn_epsilon > 0, f"{prefix}.sinkhorn_epsilon", f"must be > 0, got {self.sinkhorn_epsilon!r}")
        _check(isinstance(self.sinkhorn_iterations, int) and 1 <= self.sinkhorn_iterations <= 100,
               f"{prefix}.sinkhorn_iterations", "must be an integer in [1, 100] (one all-reduce each per step)")
        _check(isinstance(self.reestimate_every, int) and self.reestimate_every >= 0, f"{prefix}.reestimate_every",
               "must be an integer >= 0 (0 = re-estimate every step)")
        _check(0.0 <= self.em_mil_gamma < 1.0, f"{prefix}.em_mil_gamma",
               f"must be in [0, 1), got {self.em_mil_gamma!r}")
        _check(isinstance(self.em_mil_alternate_epochs, int) and self.em_mil_alternate_epochs >= 1,
               f"{prefix}.em_mil_alternate_epochs", "must be an integer >= 1")
        _check(0.0 < self.poibin_positive_fraction < 1.0, f"{prefix}.poibin_positive_fraction",
               f"must be in (0, 1), got {self.poibin_positive_fraction!r}")


def check_compatible(network: NetworkConfig, ppl: PPLConfig) -> None:
    """Cross-section rules a run config must satisfy (PPL's constructor calls this)."""
    _check(ppl.labeler != "em_mil" or network.key_instance_head, "ppl.labeler",
           "em_mil needs model.key_instance_head=true (its class-agnostic key-instance head)")
    _check(network.streams != "rgb_flow" or ppl.labeler not in ("em_mil", "poibin"), "ppl.labeler",
           f"{ppl.labeler} is not built for variable-length (model.streams=rgb_flow) videos: its key instances / "
           f"expected counts are taken over every snippet, padding included; use none, pl, ppl_hard or ppl_soft")

