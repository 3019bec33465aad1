"""Epoch counters: what one epoch's steps add up (losses, pseudo-label quality, bank members, time).

Counts accumulate on the engine's device (no per-step host sync) and are summed over ranks once, at
the end of the epoch, through ``Collectives``; ``state_dict`` goes into mid-epoch checkpoints so a
resumed epoch logs the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from distributed.runtime.collectives import Collectives
from model.pseudo_labels import MODALITY_NAMES, PL_COUNT_NAMES



def _f1(counts: dict[str, float], who: str, modality: str) -> float:
    tp, fp, fn = (counts[f"{who}_{x}_{modality}"] for x in ("tp", "fp", "fn"))
    return 100 * 2 * tp / max(2 * tp + fp + fn, 1)


class EpochCounters:
    def __init__(self, comm: Collectives):
        self.comm = comm
        self.steps = 0
        self.loss_sums: dict[str, float] = {}
        self.pl_counts = comm.zeros(len(PL_COUNT_NAMES))
        self.bank_counts: Tensor | None = None      # identical on every rank (reduced each step)
        self.seconds = 0.0                          # wall time of this epoch's steps, data loading included
        self.reduce_seconds = 0.0                   # of which the bank all-reduce
        self._last: float | None = None

    # -- per step -----------------------------------------------------------------------------
    def start_clock(self) -> None:
        """Time from here (the epoch's first batch is being fetched) to each ``add``."""
        self._last = time.perf_counter()

    def add(self, losses: dict[str, float], pl_counts: Tensor | None, bank_counts: Tensor | None) -> None:
        self.steps += 1
        for key, value in losses.items():
            self.loss_sums[key] = self.loss_sums.get(key, 0.0) + value
        if pl_counts is not None:
            self.pl_counts += pl_counts.to(self.pl_counts.dtype)
        if bank_counts is not None:
            counts = bank_counts.detach().double()
            self.bank_counts = counts if self.bank_counts is None else self.bank_counts + counts
        now = time.perf_counter()
        if self._last is not None:
            self.seconds += now - self._last
        self._last = now

    def timed_reducer(self):
        """The bank's reducer (one all-reduce SUM of the packed buffer per step), timed."""
        def reduce(buffer: Tensor) -> Tensor:
            started = time.perf_counter()
            out = self.comm.sum_(buffer)
            self.reduce_seconds += time.perf_counter() - started
            return out
        return reduce

    # -- end of epoch -------------------------------------------------------------------------
    def summary(self, videos_per_step: int) -> dict[str, float]:
        """Means over this rank's steps (losses are the same mean on every rank only in expectation;
        they are averaged over ranks here), pseudo-label F1 and shares from counts summed over ranks."""
        keys = sorted(self.loss_sums)
        steps = max(self.steps, 1)
        totals = self.comm.sum_floats(*(self.loss_sums[k] for k in keys), float(self.steps))
        ranks_steps = max(totals[-1], 1.0)
        out = {k: v / ranks_steps for k, v in zip(keys, totals[:-1])}
        counts = dict(zip(PL_COUNT_NAMES, self.comm.host(self.comm.sum_(self.pl_counts.clone())).tolist()))
        if counts["n_pairs"] > 0:
            out["pl_f1"] = 100 * 2 * counts["pl_tp"] / max(2 * counts["pl_tp"] + counts["pl_fp"] + counts["pl_fn"], 1)
            out["pl_model_f1"] = 100 * 2 * counts["model_tp"] / max(
                2 * counts["model_tp"] + counts["model_fp"] + counts["model_fn"], 1)
            out["pl_background_share"] = 100 * counts["n_background"] / counts["n_pairs"]
            for m in MODALITY_NAMES:       # per modality: where confirmation bias shows first
                out[f"pl_f1_{m}"] = _f1(counts, "pl", m)
                out[f"pl_model_f1_{m}"] = _f1(counts, "model", m)
                for source in ("pl", "model"):   # which side of F1 is short: too many positives or too few
                    tp = counts[f"{source}_tp_{m}"]
                    out[f"{source}_precision_{m}"] = 100 * tp / max(tp + counts[f"{source}_fp_{m}"], 1)
                    out[f"{source}_recall_{m}"] = 100 * tp / max(tp + counts[f"{source}_fn_{m}"], 1)
        if self.bank_counts is not None:
            bank = self.comm.host(self.bank_counts)
            out["bank_key_segments_per_step"] = float(bank[:, :-1].sum()) / steps
            out["bank_background_segments_per_step"] = float(bank[:, -1].sum()) / steps
        out["videos_per_s"] = self.steps * videos_per_step / max(self.seconds, 1e-9)
        out["step_ms"] = 1000 * self.seconds / steps
        out["bank_allreduce_share"] = 100 * self.reduce_seconds / max(self.seconds, 1e-9)
        return out

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "loss_sums": dict(self.loss_sums), "pl_counts": self.comm.host(self.pl_counts),
                "bank_counts": None if self.bank_counts is None else self.comm.host(self.bank_counts),
                "seconds": self.seconds, "reduce_seconds": self.reduce_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.loss_sums = {str(k): float(v) for k, v in state["loss_sums"].items()}
        self.pl_counts = state["pl_counts"].to(self.comm.device, torch.float64)
        bank = state.get("bank_counts")
        self.bank_counts = None if bank is None else bank.to(self.comm.device, torch.float64)
        self.seconds, self.reduce_seconds = float(state["seconds"]), float(state["reduce_seconds"])
