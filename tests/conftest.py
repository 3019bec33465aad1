"""Shared fixtures: tiny synthetic LLP-layout data, its shards, one local Ray instance per session."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Local Ray on loopback only: read by Ray at import time (see distributed/runtime/launch.py)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))

# Feature-extraction tests need torchvision, which needs torch 2.14.1: they run in their own venv
# (`make test-extract`, .venv-extract), which sets PPL_AVVP_EXTRACT_TESTS=1; the core venv skips collecting them.
EXTRACT_TEST_FILES = ["test_extract_backbones.py", "test_extract_pipeline.py"]
collect_ignore = [] if os.environ.get("PPL_AVVP_EXTRACT_TESTS") == "1" else EXTRACT_TEST_FILES

# Small model dims keep steps cheap; inputs keep the real LLP feature widths.
TINY_MODEL = ["model.model_dim=64", "model.audio_hidden=32", "model.visual_hidden=64"]


@pytest.fixture(scope="session")
def tiny_llp(tmp_path_factory) -> Path:
    """96 train / 24 val / 24 test synthetic videos in the LLP layout (annotations/ + features/)."""
    from distributed.data.synth import generate

    out = tmp_path_factory.mktemp("tiny_llp") / "data"
    generate(out, n_train=96, n_val=24, n_test=24, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_shards(tiny_llp, tmp_path_factory) -> Path:
    from distributed.data.shards import write_shards

    out = tmp_path_factory.mktemp("tiny_shards")
    for split in ("train", "val", "test"):
        write_shards(tiny_llp / "features", tiny_llp / "annotations", split, out / split, videos_per_shard=12)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance on loopback for the whole session (Ray start-ups are expensive)."""
    import ray

    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=4,
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def llp_dir() -> Path | None:
    value = os.environ.get("PPL_AVVP_LLP_DIR")
    return Path(value) if value else None
