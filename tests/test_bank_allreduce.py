"""The bank all-reduce over real gloo process groups: identical on every rank after every step, and
equal to what one process computes on the union of the ranks' batches — for nearest assignment (K = 2) and
for sinkhorn (K = 3), whose column sums go through the same reducer once per iteration."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distributed.runtime.engine import free_port
from distributed.runtime.collectives import Collectives
from model.config import PPLConfig
from model.prototypes import PrototypeBank, select_key_segments

C, D, STEPS, PER_RANK = 25, 32, 4, 6
CFG = PPLConfig(key_top_k=2, key_min_prob=0.3, background_max_prob=0.3, background_top_k=2)


def step_data(step: int, rank: int):
    g = torch.Generator().manual_seed(1000 * step + rank)
    features = torch.randn(PER_RANK, 10, 2, D, generator=g)
    prob = torch.rand(PER_RANK, 10, 2, C, generator=g)
    weak = (torch.rand(PER_RANK, C, generator=g) < 0.2).float()
    weak[:, rank] = 1.0
    return features, prob, weak


SINKHORN = dict(prototypes_per_class=3, assignment="sinkhorn", center=True)


def _worker(rank: int, world: int, port: int, out_dir: str, bank_options: dict | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    bank = PrototypeBank(C, D, momentum=0.9, seed=0, **(bank_options or {"prototypes_per_class": 2}))
    comm = Collectives(world, torch.device("cpu"))
    history, counts, midpoints = [], [], []
    for step in range(STEPS):
        features, prob, weak = step_data(step, rank)
        negatives = ~weak.bool() if bank.track_similarities else None
        counts.append(bank.update(features, select_key_segments(prob, weak, CFG), reducer=comm.sum_,
                                  negative_members=negatives))
        history.append(bank.prototypes.clone())
        if bank.track_similarities:
            midpoints.append(bank.midpoint())
    torch.save(torch.stack(history), os.path.join(out_dir, f"bank_rank{rank}.pt"))
    if midpoints:
        torch.save(torch.stack(midpoints), os.path.join(out_dir, f"midpoint_rank{rank}.pt"))
    torch.save(torch.stack(counts), os.path.join(out_dir, f"counts_rank{rank}.pt"))
    dist.destroy_process_group()


def _spawn(out, bank_options=None):
    mp.spawn(_worker, args=(2, free_port(), str(out), bank_options), nprocs=2, join=True)
    return ([torch.load(out / f"bank_rank{r}.pt", weights_only=True) for r in range(2)],
            [torch.load(out / f"counts_rank{r}.pt", weights_only=True) for r in range(2)])


@pytest.fixture(scope="module")
def two_rank_history(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("bank"))[0]


@pytest.fixture(scope="module")
def two_rank_sinkhorn(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("bank_sinkhorn"), SINKHORN)


MIDPOINT = dict(prototypes_per_class=2, center=True, track_similarities=True)


@pytest.fixture(scope="module")
def two_rank_midpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("bank_midpoint")
    _spawn(out, MIDPOINT)
    return [torch.load(out / f"midpoint_rank{r}.pt", weights_only=True) for r in range(2)]


def test_midpoint_thresholds_are_identical_on_both_ranks_and_equal_the_union(two_rank_midpoint):
    """ppl.decision=midpoint's running similarity means travel in the same buffer as the prototypes."""
    rank0, rank1 = two_rank_midpoint
    bank = PrototypeBank(C, D, momentum=0.9, seed=0, **MIDPOINT)
    for step in range(STEPS):
        assert torch.equal(rank0[step], rank1[step]), f"ranks differ after step {step}"
        parts = [step_data(step, r) for r in range(2)]
        features, prob, weak = (torch.cat(x) for x in zip(*parts))
        bank.update(features, select_key_segments(prob, weak, CFG), negative_members=~weak.bool())
        known = torch.isfinite(bank.midpoint())
        assert torch.equal(known, torch.isfinite(rank0[step])), f"step {step}"
        assert torch.allclose(bank.midpoint()[known], rank0[step][known], atol=1e-6), f"step {step}"
        assert known.any() == (step > 0)   # similarities are taken against the previous step's prototypes


def test_bank_bitwise_identical_on_both_ranks_after_every_step(two_rank_history):
    rank0, rank1 = two_rank_history
    for step in range(STEPS):
        assert torch.equal(rank0[step], rank1[step]), f"ranks differ after step {step}"


def test_bank_equals_single_process_on_union_of_batches(two_rank_history):
    bank = PrototypeBank(C, D, prototypes_per_class=2, momentum=0.9, seed=0)
    for step in range(STEPS):
        parts = [step_data(step, r) for r in range(2)]
        features, prob, weak = (torch.cat(x) for x in zip(*parts))
        bank.update(features, select_key_segments(prob, weak, CFG))
        assert torch.allclose(bank.prototypes, two_rank_history[0][step], atol=1e-6), f"step {step}"
    assert bank.initialized.any()


def test_sinkhorn_bank_with_three_slots_is_bitwise_identical_on_both_ranks(two_rank_sinkhorn):
    (rank0, rank1), _ = two_rank_sinkhorn
    for step in range(STEPS):
        assert torch.equal(rank0[step], rank1[step]), f"ranks differ after step {step}"


def test_sinkhorn_bank_equals_single_process_balancing_the_union(two_rank_sinkhorn):
    """The column sums are all-reduced, so each rank balances its segments against the union's: one process
    on the union assigns every segment to the same slot (equal counts) and gets the same bank."""
    (history, _), (counts, _) = two_rank_sinkhorn
    bank = PrototypeBank(C, D, momentum=0.9, seed=0, **SINKHORN)
    for step in range(STEPS):
        parts = [step_data(step, r) for r in range(2)]
        features, prob, weak = (torch.cat(x) for x in zip(*parts))
        step_counts = bank.update(features, select_key_segments(prob, weak, CFG))
        assert torch.equal(step_counts, counts[step]), f"step {step}: a segment went to another slot"
        assert torch.allclose(bank.prototypes, history[step], atol=1e-6), f"step {step}"
    used = bank.initialized[:, :C].sum(dim=-1)                          # (M, C) slots in use per class
    assert (used[bank.initialized[:, :C].any(dim=-1)] >= 2).all()      # K > 1 is used, not collapsed onto one
