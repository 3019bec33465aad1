"""Ray Train + DeepSpeed on a local 127.0.0.1 instance: 2 workers, per-step bank all-reduce checked
on every step, MLflow run contents, and resume after a worker is killed mid-epoch."""
import json

import pytest
import torch

from conftest import TINY_MODEL
from distributed.common.config import load_config
from distributed.runtime.launch import fit_with_ray
from distributed.train import train

pytestmark = pytest.mark.ray


def two_worker_config(shards, out, tracking_uri, *extra):
    return load_config("ppl", [
        f"data.shards={shards}", f"output_dir={out}", "distributed.num_workers=2", "distributed.engine=deepspeed",
        "distributed.zero_stage=1", "distributed.check_bank_sync=true", "distributed.checkpoint_every_steps=2",
        "deterministic=true", "optim.epochs=2", "data.batch_size=8", "ppl.warmup_epochs=0", "ppl.key_min_prob=0.0",
        f"tracking.tracking_uri={tracking_uri}", "tracking.experiment=test-ray", *TINY_MODEL, *extra])


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tiny_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_runs")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = two_worker_config(tiny_shards, root / "a", uri, "name=uninterrupted")
    return cfg, train(cfg), uri, root


def test_two_worker_deepspeed_run_keeps_bank_identical_and_scores_test(uninterrupted):
    cfg, results, _, _ = uninterrupted
    # check_bank_sync all-gathers the bank after every step and fails the run on any difference
    assert len(results["history"]) == 2 and len(results["test"]) == 10
    assert results["history"][-1]["bank_key_segments_per_step"] > 0


def test_mlflow_run_has_full_config_epoch_metrics_and_artifacts(uninterrupted):
    import mlflow

    cfg, results, uri, _ = uninterrupted
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("test-ray")
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'uninterrupted'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["ppl.tau"] == "0.1" and run.data.params["distributed.num_workers"] == "2"
    assert set(cfg.flatten()) <= set(run.data.params)
    history = client.get_metric_history(run.info.run_id, "val_seg_type")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == [h["val_seg_type"] for h in results["history"]]
    assert run.data.metrics["test_seg_type"] == results["test"]["seg_type"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "config.yaml"} <= artifacts


def test_killed_worker_resumes_to_the_same_weights_and_bank(uninterrupted, tiny_shards):
    cfg_a, _, uri, root = uninterrupted
    marker = root / "killed.txt"
    cfg_b = two_worker_config(tiny_shards, root / "b", uri, "name=resumed", "distributed.max_failures=1")
    from distributed.runtime.tracking import create_run
    run_id = create_run(cfg_b)
    # rank 1 exits at global step 5 (mid-epoch 1; the last checkpoint is at step 4)
    fit_with_ray(cfg_b, {"config": cfg_b.to_dict(), "mlflow_run_id": run_id,
                         "fail_once": {"rank": 1, "step": 5, "marker": str(marker)}})
    assert marker.exists(), "the failure was not injected"
    a = torch.load(root / "a" / "final_model.pt", weights_only=True)
    b = torch.load(root / "b" / "final_model.pt", weights_only=True)
    for part in ("network", "momentum", "bank"):
        for key in a[part]:
            x, y = a[part][key], b[part][key]   # tensors, and the EMA's _extra_state (its update count)
            assert (torch.equal(x, y) if torch.is_tensor(x) else x == y), f"{part}.{key} differs after resume"
    resumed = json.loads((root / "b" / "results.json").read_text())
    assert resumed["test"] == json.loads((root / "a" / "results.json").read_text())["test"]
