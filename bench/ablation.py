"""Base vs PPL variants on one synthetic (or real-feature) LLP-layout dataset, in one process.

Prints val/test segment & event Type@AV and the pseudo-label quality per variant, so the design
choices of DESIGN §3.4.1 are compared with numbers, not assumed. Usage:
    python bench/ablation.py --data DIR [--epochs 8] [--variants base,ppl_soft,...] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from distributed.common.config import load_config  # noqa: E402
from distributed.train import train  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "base": ["ppl.labeler=none"],
    "pl": ["ppl.labeler=pl"],
    "ppl_soft_across": ["ppl.labeler=ppl_soft", "ppl.competition=across_classes"],
    "ppl_soft": ["ppl.labeler=ppl_soft", "ppl.competition=per_class"],
    "ppl_hard": ["ppl.labeler=ppl_hard", "ppl.competition=per_class"],
    "ppl_soft_gated": ["ppl.labeler=ppl_soft", "ppl.competition=per_class", "ppl.confidence_gate=0.8"],
    "ppl_neg": ["ppl.labeler=ppl_soft", "ppl.competition=per_class", "ppl.background=negatives"],
    "ppl_neg_hard": ["ppl.labeler=ppl_hard", "ppl.competition=per_class", "ppl.background=negatives"],
    "ppl_centered": ["ppl.labeler=ppl_soft", "ppl.competition=per_class", "ppl.center_features=true"],
    "ppl_neg_centered": ["ppl.labeler=ppl_soft", "ppl.competition=per_class", "ppl.background=negatives",
                         "ppl.center_features=true"],
    "ppl_soft_noema": ["ppl.labeler=ppl_soft", "ppl.competition=per_class", "ppl.ema_decay=none"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="folder with annotations/ and features/")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--variants", default="base,ppl_soft")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every variant")
    parser.add_argument("--seeds", type=int, default=1, help="runs per variant (seed 0..N-1); mean ± std")
    args = parser.parse_args()
    data = Path(args.data)
    rows, per_variant = [], {}
    for name, seed in [(n, s) for n in args.variants.split(",") for s in range(args.seeds)]:
        started = time.perf_counter()
        cfg = load_config("ppl", [f"data.annotations={data / 'annotations'}", f"data.features={data / 'features'}",
                                  f"output_dir={Path(args.out) / name / f'seed{seed}'}", "distributed.num_workers=0",
                                  "distributed.engine=torch", f"optim.epochs={args.epochs}", f"name={name}",
                                  f"seed={seed}", "tracking.mlflow=false", *VARIANTS[name], *args.set])
        res = train(cfg, mlflow=False, resume=True)   # a rerun continues its runs
        per_variant.setdefault(name, []).append(res["test"])
        last = res["history"][-1]
        best = res["history"][res["best_epoch"] - 1]
        rows.append((f"{name}/s{seed}", res["val"].get("seg_type", float("nan")), res["test"]["seg_type"], res["test"]["evt_type"],
                     res["test"]["seg_a"], res["test"]["seg_v"], res["test"]["seg_av"], best.get("pl_f1", float("nan")),
                     best.get("pl_model_f1", float("nan")), last.get("pl_background_share", float("nan")),
                     res["best_epoch"], time.perf_counter() - started))
        print(json.dumps({"variant": name, "test": res["test"]}), flush=True)
    print(f"\n{'variant':<18}{'val seg':>8}{'test seg':>9}{'test evt':>9}{'seg A':>7}{'seg V':>7}{'seg AV':>7}"
          f"{'PL-F1':>7}{'mdl-F1':>7}{'bg%':>6}{'best':>5}{'s':>6}")
    for r in rows:
        print(f"{r[0]:<18}" + "".join(f"{v:>{w}.1f}" for v, w in zip(r[1:10], (8, 9, 9, 7, 7, 7, 7, 7, 6)))
              + f"{r[10]:>5}{r[11]:>6.0f}")
    keys = ["seg_a", "seg_v", "seg_av", "seg_type", "seg_event", "evt_a", "evt_v", "evt_av", "evt_type", "evt_event"]
    print(f"\ntest, mean ± std over {args.seeds} seed(s)\n{'variant':<18}" + "".join(f"{k:>13}" for k in keys))
    for name, runs in per_variant.items():
        values = np.array([[r[k] for k in keys] for r in runs])
        std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(keys))
        print(f"{name:<18}" + "".join(f"{m:>7.1f} ±{s:>4.1f}" for m, s in zip(values.mean(0), std)))


if __name__ == "__main__":
    main()
