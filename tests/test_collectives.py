"""Device discipline without a GPU: with the backend reported as NCCL, every collective of a run must get
tensors on the engine's device (NCCL takes CUDA tensors only; gloo takes anything, so gloo runs alone never
catch a CPU counter). The engine device here is ``meta`` (a non-CPU device that exists on every build);
a stand-in for torch.distributed records what NCCL would receive. The real gloo collectives run in
tests/test_bank_allreduce.py and the Ray Train tests."""
import pytest
import torch
import torch.distributed as dist

from distributed.runtime.collectives import Collectives
from distributed.runtime.counters import EpochCounters
from distributed.runtime.evaluation import gather_in_split_order
from distributed.runtime.loop import assert_bank_in_sync
from model.config import NetworkConfig, PPLConfig
from model.ppl import PPL
from model.pseudo_labels import PL_COUNT_NAMES, PseudoLabels, pseudo_label_counts

META = torch.device("meta")


class NcclRules:
    """What NCCL enforces: every tensor handed to a collective lives on the configured device."""

    ReduceOp = dist.ReduceOp

    def __init__(self, device: torch.device):
        self.device, self.calls = device, []

    def get_backend(self):
        return "nccl"

    def is_initialized(self):
        return True

    def _take(self, op, *tensors):
        for t in tensors:
            if t.device != self.device:
                raise AssertionError(f"{op} was handed a tensor on {t.device}; NCCL needs {self.device}")
        self.calls.append(op)

    def all_reduce(self, tensor, op=None):
        self._take("all_reduce", tensor)

    def all_gather(self, out, tensor):
        self._take("all_gather", tensor, *out)

    def all_gather_object(self, out, obj):
        self.calls.append("all_gather_object")
        out[:] = [obj] * len(out)

    def barrier(self):
        self.calls.append("barrier")


class MetaCollectives(Collectives):
    """Values of meta tensors cannot be read back: the host copy is zeros of the right shape."""

    def host(self, tensor):
        assert tensor.device == self.device
        return torch.zeros(tensor.shape, dtype=tensor.dtype)


def meta_comm(world_size: int = 2):
    rules = NcclRules(META)
    return MetaCollectives(world_size, META, dist_api=rules), rules


def test_nccl_backend_refuses_a_cpu_engine_device():
    with pytest.raises(RuntimeError, match="NCCL backend needs a CUDA device"):
        Collectives(2, "cpu", dist_api=NcclRules(torch.device("cpu")))


def test_every_collective_builds_its_tensors_on_the_engine_device():
    comm, rules = meta_comm()
    assert comm.backend == "nccl"
    comm.sum_(comm.zeros(3))
    comm.sum_floats(1.0, 2.0)
    comm.same_on_every_rank(comm.tensor([1.0, 2.0]))
    comm.gather_objects({"a": 1})
    comm.barrier()
    assert rules.calls == ["all_reduce", "all_reduce", "all_gather", "all_gather_object", "barrier"]


def test_a_cpu_tensor_is_refused_before_it_reaches_nccl():
    comm, rules = meta_comm()
    with pytest.raises(RuntimeError, match="tensor on cpu"):
        comm.sum_(torch.zeros(3))
    assert rules.calls == []


def test_epoch_counters_reduce_on_the_engine_device():
    comm, rules = meta_comm()
    counters = EpochCounters(comm)
    counters.add({"loss_total": 1.0}, torch.zeros(len(PL_COUNT_NAMES), device=META), torch.zeros(2, 26, 1, device=META))
    metrics = counters.summary(videos_per_step=16)
    assert "loss_total" in metrics and rules.calls.count("all_reduce") == 2


def test_pseudo_label_counts_stay_on_the_step_device():
    """Every count, n_pairs included, is built on the device of the step's tensors (a CPU n_pairs stacked
    with CUDA counts crashed the first GPU step with dense truth)."""
    b, t, c = 2, 10, 25
    labels = PseudoLabels(targets=torch.zeros(b, t, 2, c, device=META), weights=torch.ones(b, t, 2, c, device=META),
                          assignment=torch.zeros(b, t, 2, dtype=torch.long, device=META))
    counts = pseudo_label_counts(labels, torch.zeros(b, t, 2, c, device=META), torch.zeros(b, c, device=META),
                                 torch.ones(b, c, device=META), torch.zeros(b, t, 2, c, device=META))
    assert counts.device == META and counts.shape == (len(PL_COUNT_NAMES),)


def test_bank_sync_check_compares_every_bank_buffer_on_the_engine_device():
    comm, rules = meta_comm()
    method = PPL(NetworkConfig(model_dim=16, audio_hidden=8, visual_hidden=16), PPLConfig())
    assert_bank_in_sync(method, comm, step=1)
    names = list(method.bank.state_dict())
    assert {"prototypes", "negatives", "center", "initialized"} <= set(names)
    assert rules.calls == ["all_gather"] * len(names)


def test_gathered_rows_are_in_split_order_for_any_rank_layout():
    import numpy as np

    rows = {"video_id": ["c", "a", "b"], "split_row": [np.array([2, 0]), np.array([1])],
            "frame_prob": [np.arange(2.0)[:, None], np.array([[9.0]])], "global_prob": [], "weak_labels": [],
            "dense_audio": [], "dense_visual": []}
    comm = Collectives(1, "cpu")
    merged = gather_in_split_order(rows, comm)
    assert merged["video_id"] == ["a", "b", "c"] and merged["split_row"].tolist() == [0, 1, 2]
    assert merged["frame_prob"][:, 0].tolist() == [1.0, 9.0, 0.0]
    assert "global_prob" not in merged and "dense_audio" not in merged   # absent parts stay absent


def test_a_whole_ppl_step_builds_every_tensor_on_the_engine_device():
    """Forward, pseudo-labels, losses, EMA update, bank update through the reducer, pseudo-label counts:
    on a non-CPU engine device nothing may fall back to a CPU tensor (it would raise on meta)."""
    method = PPL(NetworkConfig(model_dim=16, audio_hidden=8, visual_hidden=16), PPLConfig(warmup_epochs=0)).to(META)
    b, t, c = 2, 10, 25
    inputs = (torch.zeros(b, t, 128, device=META), torch.zeros(b, 8 * t, 2048, device=META),
              torch.zeros(b, t, 512, device=META))
    weak = torch.zeros(b, c, device=META)
    online = method.network(*inputs)
    step = method.losses(online, inputs, weak, epoch=3)
    assert step.losses.total.device == META and step.labels.targets.device == META
    comm, rules = meta_comm()
    bank_counts = method.after_optimizer_step(method.network, step.momentum, weak, comm.sum_)
    assert bank_counts.device == META and rules.calls == ["all_reduce"]
    dense = torch.zeros(b, t, 2, c, device=META)
    counts = pseudo_label_counts(step.labels, online.frame_prob, online.global_prob, weak, dense)
    assert counts.device == META


@pytest.mark.parametrize("labeler, epoch, options, bank_reduces", [
    ("em_mil", 0, {}, 0),                                           # E-step: the key-instance head's targets
    ("em_mil", 1, {}, 0),                                           # M-step
    ("poibin", 1, {}, 0),
    ("ppl_soft", 1, {"prototypes_per_class": 3, "prototype_assignment": "sinkhorn", "contrastive_weight": 0.1,
                     "reestimate_every": 2}, 3 + 1),                # sinkhorn's 3 column sums + the bank buffer
], ids=["em_mil_E", "em_mil_M", "poibin", "ppl_soft_sinkhorn_k3_contrastive_reestimated"])
def test_every_labeler_builds_its_step_on_the_engine_device(labeler, epoch, options, bank_reduces):
    """The same whole step on meta for the labelers and bank options added after PPL's own."""
    net = NetworkConfig(model_dim=16, audio_hidden=8, visual_hidden=16, key_instance_head=labeler == "em_mil")
    method = PPL(net, PPLConfig(labeler=labeler, warmup_epochs=0, **options)).to(META)
    b, t, c = 2, 10, 25
    inputs = (torch.zeros(b, t, 128, device=META), torch.zeros(b, 8 * t, 2048, device=META),
              torch.zeros(b, t, 512, device=META))
    weak = torch.zeros(b, c, device=META)
    online = method.network(*inputs)
    step = method.losses(online, inputs, weak, epoch=epoch)
    assert step.losses.total.device == META and step.labels.targets.device == META
    assert step.labels.key_targets is None or step.labels.key_targets.device == META
    comm, rules = meta_comm()
    bank_counts = method.after_optimizer_step(method.network, step.momentum, weak, comm.sum_)
    assert rules.calls == ["all_reduce"] * bank_reduces
    assert bank_counts is None if bank_reduces == 0 else bank_counts.device == META
    dense = torch.zeros(b, t, 2, c, device=META)
    assert pseudo_label_counts(step.labels, online.frame_prob, online.global_prob, weak, dense).device == META
