"""WebDataset shards of an LLP-layout split: writer, manifest and integrity check, shard arithmetic, reader."""
from distributed.data.shards.manifest import (DEFAULT_VIDEOS_PER_SHARD, DTYPES, KEYS_NAME, MANIFEST_NAME, load_keys,
                                              load_manifest)
from distributed.data.shards.plan import EvalAssignment, Segment, eval_assignment, train_batches_per_epoch, train_plan
from distributed.data.shards.reader import DEFAULT_SHUFFLE_BUFFER, ShardLoader, make_eval_loader, make_train_loader
from distributed.data.shards.samples import checked_samples, verify_shards
from distributed.data.shards.writer import check_key, shard_sizes, write_shards, write_shards_from_arrays
from distributed.data.shards.dataset import ShardData, check_manifest_matches_model

__all__ = [
    "MANIFEST_NAME", "KEYS_NAME", "DTYPES", "DEFAULT_VIDEOS_PER_SHARD", "DEFAULT_SHUFFLE_BUFFER",
    "write_shards", "write_shards_from_arrays", "check_key", "shard_sizes",
    "load_manifest", "load_keys", "verify_shards", "checked_samples",
    "Segment", "train_batches_per_epoch", "train_plan", "EvalAssignment", "eval_assignment",
    "ShardLoader", "make_train_loader", "make_eval_loader", "ShardData", "check_manifest_matches_model",
]
