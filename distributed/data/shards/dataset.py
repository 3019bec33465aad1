"""The worker loop's view of WebDataset shards (``data.shards`` with train/ val/ test/ shard sets).

Thin glue over the reader: equal train batches on every rank, eval sets read exactly once across
ranks, bad samples either an error or (``data.skip_bad_samples``) skipped and counted.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from distributed.common.errors import DataError
from distributed.data.shards.manifest import MANIFEST_NAME, check_task, load_manifest
from distributed.data.shards.plan import train_batches_per_epoch
from distributed.data.shards.reader import make_eval_loader, make_train_loader


def check_manifest_matches_model(manifest: dict, model_cfg, where: Path) -> None:
    """Fail before training when the shards' shapes disagree with model.* dimensions."""
    fields = manifest.get("fields", {})
    T = model_cfg.num_segments
    expected = {"audio.npy": (T, model_cfg.audio_dim), "visual_3d.npy": (T, model_cfg.visual_3d_dim),
                "labels.npy": (model_cfg.num_classes,)}
    for key, shape in expected.items():
        got = tuple(fields.get(key, {}).get("shape", ()))
        if got != shape:
            raise DataError(f"{where}/{MANIFEST_NAME}: {key} has shape {got}, the model config expects {shape} "
                            f"(model.num_segments / model.*_dim / model.num_classes)")
    v2d = tuple(fields.get("visual_2d.npy", {}).get("shape", ()))
    if len(v2d) != 2 or v2d[1] != model_cfg.visual_2d_dim or v2d[0] % T:
        raise DataError(f"{where}/{MANIFEST_NAME}: visual_2d.npy has shape {v2d}, the model config expects "
                        f"(k*{T}, {model_cfg.visual_2d_dim})")


class ShardData:
    """Train/val/test shard sets under ``data.shards``, checked against the model's dimensions up front."""

    def __init__(self, cfg, rank: int, world_size: int):
        self.root = Path(cfg.data.shards)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        for split in ("train", "val", "test"):
            if not (self.root / split / MANIFEST_NAME).is_file():
                raise DataError(f"{self.root / split}: no {MANIFEST_NAME} (write shards with `ppl-avvp shard "
                                f"--split {split} --out {self.root / split}`)")
        for split in ("train", "val", "test"):
            manifest = load_manifest(self.root / split)
            check_task(manifest, self.root / split, "llp")
            check_manifest_matches_model(manifest, cfg.model, self.root / split)
        manifest = load_manifest(self.root / "train")
        self.samples_per_epoch = int(manifest["num_samples"]) if cfg.data.resample else None
        self.num_train_batches = train_batches_per_epoch(self.root / "train", cfg.data.batch_size, world_size,
                                                         self.samples_per_epoch, cfg.data.resample)
        self.skipped = 0

    def train(self, epoch: int, skip_batches: int = 0) -> Iterator[dict]:
        d = self.cfg.data
        loader = make_train_loader(self.root / "train", d.batch_size, self.rank, self.world_size,
                                   num_workers=d.loader_workers, epoch=epoch, seed=self.cfg.seed,
                                   samples_per_epoch=self.samples_per_epoch, resample=d.resample,
                                   skip_bad_samples=d.skip_bad_samples, skip_batches=skip_batches,
                                   verify=d.verify_shards)
        yield from loader
        self.skipped += int(loader.stats.get("skipped", 0))

    def eval(self, split: str) -> Iterator[dict]:
        d = self.cfg.data
        loader = make_eval_loader(self.root / split, d.eval_batch_size, self.rank, self.world_size,
                                  num_workers=0, skip_bad_samples=d.skip_bad_samples, verify=d.verify_shards)
        yield from loader
        self.skipped += int(loader.stats.get("skipped", 0))
