"""The paths a `ray job submit` user takes, on this CPU machine with real Ray Train, DeepSpeed and gloo:
scores that do not depend on the world size, runs without dense validation truth, exact resume with
loader workers and dropout (han preset), and every Ray component on loopback."""
import json

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from distributed.cli import main as cli
from distributed.common.config import load_config
from distributed.runtime.launch import fit_with_ray
from distributed.runtime.tracking import create_run
from distributed.train import train

pytestmark = pytest.mark.ray

TIMING = {"videos_per_s", "step_ms", "bank_allreduce_share"}   # wall-clock numbers differ between any two runs


def han_two_workers(shards, out, uri, *extra):
    """han preset (dropout 0.1), PPL with the EMA teacher, 2 workers x 2 loader workers, checkpoints every 2 steps."""
    return load_config("han", [
        f"data.shards={shards}", f"output_dir={out}", "distributed.num_workers=2", "distributed.engine=deepspeed",
        "distributed.checkpoint_every_steps=2", "distributed.check_bank_sync=true", "deterministic=true",
        "optim.epochs=2", "data.batch_size=8", "data.loader_workers=2", "ppl.labeler=ppl_soft",
        "ppl.modality_losses=true", "ppl.warmup_epochs=0", "ppl.key_min_prob=0.0", "model.han_ffn_dim=64",
        f"tracking.tracking_uri={uri}", "tracking.experiment=test-platform", *TINY_MODEL, *extra])


@pytest.fixture(scope="module")
def han_runs(ray_local, tiny_shards, tmp_path_factory):
    """The same run twice: uninterrupted, and with rank 1 killed at global step 5 (last checkpoint: step 4)."""
    root = tmp_path_factory.mktemp("platform")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    full = han_two_workers(tiny_shards, root / "full", uri, "name=full")
    train(full)
    resumed = han_two_workers(tiny_shards, root / "resumed", uri, "name=resumed", "distributed.max_failures=1")
    marker = root / "killed.txt"
    fit_with_ray(resumed, {"config": resumed.to_dict(), "mlflow_run_id": create_run(resumed),
                           "fail_once": {"rank": 1, "step": 5, "marker": str(marker)}})
    assert marker.exists(), "the failure was not injected"
    return root, full, resumed


def test_resume_with_loader_workers_and_dropout_is_exact(han_runs):
    root, _, _ = han_runs
    a = torch.load(root / "full" / "final_model.pt", weights_only=True)
    b = torch.load(root / "resumed" / "final_model.pt", weights_only=True)
    for part in ("network", "momentum", "bank"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            same = torch.equal(a[part][key], b[part][key]) if torch.is_tensor(a[part][key]) else a[part][key] == b[part][key]
            assert same, f"{part}.{key} differs after resume"


def test_the_interrupted_epoch_logs_the_same_metrics(han_runs):
    root, _, _ = han_runs
    full = json.loads((root / "full" / "results.json").read_text())
    resumed = json.loads((root / "resumed" / "results.json").read_text())
    assert len(full["history"]) == len(resumed["history"]) == 2
    for a, b in zip(full["history"], resumed["history"]):
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert full["test"] == resumed["test"] and full["best_epoch"] == resumed["best_epoch"]


def test_two_worker_scores_equal_evaluate_on_the_same_predictions(han_runs, tiny_llp, tmp_path, capsys):
    root, _, _ = han_runs
    results = json.loads((root / "full" / "results.json").read_text())
    out = tmp_path / "scores.json"
    code = cli(["evaluate", "--predictions", str(root / "full" / "test_predictions.npz"),
                "--annotations", str(tiny_llp / "annotations"), "--split", "test", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads(out.read_text()) == results["test"]          # bitwise: floats round-trip through JSON


def test_two_worker_scores_equal_one_worker_scores_of_the_same_model(han_runs, tiny_shards):
    from distributed.data.shards import ShardData
    from distributed.runtime.checkpoint import load_model
    from distributed.runtime.collectives import Collectives
    from distributed.runtime.evaluation import evaluate_split
    from model.config import NetworkConfig
    from model.network import AudioVisualParser

    root, full, _ = han_runs
    best = load_model(root / "full" / "best_model.pt")
    network = AudioVisualParser(NetworkConfig(**best["config"]["model"]))
    network.load_state_dict(best["network"])
    scores, _, rows = evaluate_split(network, ShardData(full, rank=0, world_size=1).eval("test"), torch.device("cpu"),
                                     Collectives(1, "cpu"))
    results = json.loads((root / "full" / "results.json").read_text())
    assert scores == results["test"]
    saved = np.load(root / "full" / "test_predictions.npz", allow_pickle=False)
    assert list(saved["video_ids"]) == rows["video_id"]


def test_two_workers_without_dense_validation_truth_select_by_loss(ray_local, tiny_llp, tiny_shards, tmp_path):
    """AudioSet-style data: no dense truth in val; model selection falls back to the val weak-label loss,
    computed from the gathered rows, so both ranks pick the same epoch (the loop checks they agree)."""
    import shutil

    from distributed.data.features import FeatureSpec, load_features
    from distributed.data.llp import load_split
    from distributed.data.shards import write_shards_from_arrays

    shards = tmp_path / "shards"
    for split in ("train", "test"):
        shutil.copytree(tiny_shards / split, shards / split)
    val = load_split(tiny_llp / "annotations", "val")
    features = load_features(tiny_llp / "features", val.video_ids, FeatureSpec())
    write_shards_from_arrays(shards / "val", "val", val.video_ids, features, val.weak_labels, val.classes,
                             num_shards=4)
    cfg = load_config("ppl", [f"data.shards={shards}", f"output_dir={tmp_path / 'run'}", "distributed.num_workers=2",
                              "distributed.engine=torch", "optim.epochs=3", "data.batch_size=8", "ppl.warmup_epochs=1",
                              "tracking.mlflow=false", *TINY_MODEL])
    results = train(cfg, mlflow=False)
    losses = [h["val_weak_label_loss"] for h in results["history"]]
    assert all("val_seg_type" not in h for h in results["history"])
    assert results["best_epoch"] == 1 + int(np.argmin(losses))
    assert len(results["test"]) == 10


def test_every_ray_component_registers_on_loopback(ray_local):
    ray = ray_local
    nodes = ray.nodes()
    assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes if n["Alive"])
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")

    @ray.remote(num_cpus=0)
    def where():
        import ray.util

        return ray.util.get_node_ip_address()

    assert ray.get(where.remote()) == "127.0.0.1"
