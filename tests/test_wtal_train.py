"""W-TAL end to end on tiny synthetic THUMOS14-layout data: `train --config thumos14` in process and on 2 Ray
Train workers (DeepSpeed, MLflow sqlite), results.json's labelled rows, `evaluate` on the saved proposals and
on the checkpoint, `predict` with timelines, and the bad inputs of the W-TAL path."""
import json

import numpy as np
import pytest

from distributed.cli import main as cli
from distributed.common.config import load_config
from distributed.common.errors import UserError
from distributed.train import train

DIM = 16
TINY = [f"model.rgb_dim={DIM}", f"model.flow_dim={DIM}", "model.model_dim=32", "model.han_ffn_dim=32",
        "data.batch_size=4", "data.eval_batch_size=1", "data.train_snippets=48", "optim.epochs=2",
        "optim.lr=1e-3", "ppl.warmup_epochs=1", "ppl.key_min_prob=0.0", "ppl.ema_decay=0.9"]


@pytest.fixture(scope="module")
def tiny_wtal(tmp_path_factory):
    from distributed.data.wtal_synth import generate

    out = tmp_path_factory.mktemp("tiny_wtal") / "data"
    generate(out, n_train=16, n_test=8, seed=0, dim=DIM, signal=5.0)
    return out


def wtal_config(data, out, *extra):
    return load_config("thumos14", [f"data.annotations={data / 'annotations'}", f"data.features={data / 'features'}",
                                    f"output_dir={out}", *TINY, *extra])


@pytest.fixture(scope="module")
def in_process(tiny_wtal, tmp_path_factory):
    out = tmp_path_factory.mktemp("wtal_run") / "ppl"
    cfg = wtal_config(tiny_wtal, out, "distributed.num_workers=0", "distributed.engine=torch")
    return out, train(cfg, mlflow=False)


def test_results_hold_the_last_and_the_best_on_test_rows_labelled(in_process):
    out, results = in_process
    assert results["task"] == "wtal" and results["protocol"] == "A"
    last, best = results["rows"]
    assert last["selection"] == "last" and last["label"] == "last epoch (2)" and last["epoch"] == 2
    assert best["selection"] == "best_on_test" and best["label"].startswith("best on test (epoch ")
    keys = [f"map_0.{i}" for i in range(1, 8)] + ["map_avg_0.1_0.5", "map_avg_0.3_0.7", "map_avg_0.1_0.7"]
    for row in results["rows"]:
        assert list(row["test"]) == keys
        assert all(0.0 <= v <= 100.0 for v in row["test"].values())
        maps = [row["test"][k] for k in keys[:7]]
        assert row["test"]["map_avg_0.1_0.7"] == pytest.approx(np.mean(maps), abs=1e-9)   # computed, not copied
        assert row["test"]["map_avg_0.1_0.5"] == pytest.approx(np.mean(maps[:5]), abs=1e-9)
    # the best-on-test row is the best epoch of the in-loop history, and last = the last epoch's
    history = {h["epoch"]: h for h in results["history"]}
    assert best["test"]["map_avg_0.1_0.7"] == max(h["test_map_avg_0.1_0.7"] for h in history.values())
    assert last["test"]["map_avg_0.1_0.7"] == history[2]["test_map_avg_0.1_0.7"]
    assert history[1]["loss_pseudo_label"] == 0.0 < history[2]["loss_pseudo_label"]
    assert json.loads((out / "results.json").read_text()) == results


def test_evaluate_scores_the_saved_proposals_and_the_checkpoint_to_the_same_numbers(in_process, tiny_wtal, tmp_path):
    out, results = in_process
    ann = str(tiny_wtal / "annotations")
    files = ("test_proposals_last.json", "test_proposals_best.json")
    for name, row in zip(files, results["rows"]):
        assert cli(["evaluate", "--proposals", str(out / name), "--annotations", ann,
                    "--json", str(tmp_path / f"{name}.scores")]) == 0
        assert json.loads((tmp_path / f"{name}.scores").read_text()) == row["test"]
    assert cli(["evaluate", "--checkpoint", str(out / "best_model.pt"), "--features", str(tiny_wtal / "features"),
                "--annotations", ann, "--json", str(tmp_path / "ckpt.json")]) == 0
    assert json.loads((tmp_path / "ckpt.json").read_text()) == results["rows"][1]["test"]


def test_predict_writes_proposals_and_a_timeline_per_video(in_process, tiny_wtal, tmp_path):
    out, _ = in_process
    assert cli(["predict", "--checkpoint", str(out / "best_model.pt"), "--features", str(tiny_wtal / "features"),
                "--annotations", str(tiny_wtal / "annotations"), "--out", str(tmp_path / "pred"),
                "--pictures", "3"]) == 0
    proposals = json.loads((tmp_path / "pred" / "proposals.json").read_text())
    assert proposals["units"] == "snippets" and len(proposals["results"]) == 8
    pictures = sorted((tmp_path / "pred" / "timelines").glob("*.png"))
    assert len(pictures) == 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)


@pytest.mark.ray
def test_two_ray_workers_train_wtal_with_deepspeed_and_log_map_to_mlflow(ray_local, tiny_wtal, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = wtal_config(tiny_wtal, tmp_path / "run", "distributed.num_workers=2", "distributed.engine=deepspeed",
                      "distributed.check_bank_sync=true", "data.batch_size=2", "name=wtal-ray",
                      f"tracking.tracking_uri={uri}", "tracking.experiment=test-wtal")
    results = train(cfg)
    assert [r["selection"] for r in results["rows"]] == ["last", "best_on_test"]
    assert results["history"][-1]["bank_key_segments_per_step"] > 0       # the bank all-reduce ran, in sync
    # gathered from both ranks in the split's order: the saved proposals score to the reported numbers
    assert cli(["evaluate", "--proposals", str(tmp_path / "run" / "test_proposals_last.json"),
                "--annotations", str(tiny_wtal / "annotations"), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == results["rows"][0]["test"]
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("test-wtal").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["model.streams"] == "rgb_flow"
    history = client.get_metric_history(run.info.run_id, "test_map_avg_0.1_0.7")
    assert [m.value for m in history] == [h["test_map_avg_0.1_0.7"] for h in results["history"]]
    assert run.data.metrics["test_best_on_test_map_avg_0.1_0.7"] == results["rows"][1]["test"]["map_avg_0.1_0.7"]


@pytest.mark.parametrize("extra, message", [
    (["data.shards=/nowhere", "data.limit_train=4"], "data.limit_train: W-TAL shards"),
    (["ppl.labeler=poibin"], "ppl.labeler: poibin is not built for variable-length"),
    (["data.protocol=C"], "data.protocol: must be A or B"),
    (["data.train_snippets=-1"], "data.train_snippets: must be an integer >= 0"),
])
def test_bad_wtal_configs_are_one_line_errors(tiny_wtal, tmp_path, extra, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        wtal_config(tiny_wtal, tmp_path / "x", *extra)


def test_bad_wtal_data_is_refused_before_anything_is_written(tiny_wtal, tmp_path):
    out = tmp_path / "refused"
    cfg = wtal_config(tiny_wtal, out, "model.num_classes=19", "distributed.num_workers=0", "distributed.engine=torch")
    with pytest.raises(UserError, match="model.num_classes: 19, but the THUMOS14 annotations"):
        train(cfg, mlflow=False)
    cfg = wtal_config(tiny_wtal, out, "model.rgb_dim=32", "model.flow_dim=32", "distributed.num_workers=0")
    with pytest.raises(UserError, match="features"):
        train(cfg, mlflow=False)
    assert not out.exists()


def test_evaluate_refuses_proposals_in_the_wrong_units_in_one_line(in_process, tiny_wtal, tmp_path, capsys):
    out, _ = in_process
    data = json.loads((out / "test_proposals_last.json").read_text())
    data["units"] = "seconds"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    code = cli(["evaluate", "--proposals", str(bad), "--annotations", str(tiny_wtal / "annotations")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bad.json" in err and "units" in err


def test_padded_evaluation_batches_give_the_scores_of_one_video_at_a_time(tiny_wtal, tmp_path):
    """The in-loop evaluator pads each batch to its longest video: the proposals and mAP must not see it."""
    import torch

    from distributed.data.wtal_arrays import WTALData
    from distributed.runtime.collectives import Collectives
    from distributed.runtime.wtal_eval import evaluate_wtal
    from model.network import AudioVisualParser

    torch.manual_seed(0)
    results = []
    for batch in (1, 5):
        cfg = wtal_config(tiny_wtal, tmp_path / "x", f"data.eval_batch_size={batch}", "distributed.num_workers=0")
        data = WTALData(cfg, 0, 1)
        if not results:
            network = AudioVisualParser(cfg.model)
        lengths = [len(b["video_id"]) for b in data.eval("test")]
        assert max(lengths) == batch
        results.append(evaluate_wtal(network, data, torch.device("cpu"), Collectives(1, "cpu")))
    (alone, alone_props), (padded, padded_props) = results
    for column in ("video", "label", "start", "end"):
        assert np.array_equal(getattr(alone_props, column), getattr(padded_props, column))
    np.testing.assert_allclose(padded_props.score, alone_props.score, rtol=1e-5, atol=1e-6)
    assert padded == pytest.approx(alone, abs=1e-6)


def test_a_resumed_wtal_run_continues_and_keeps_its_best_on_test_epoch(in_process, tiny_wtal, tmp_path):
    import shutil

    out, first = in_process
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    cfg = wtal_config(tiny_wtal, copy, "distributed.num_workers=0", "distributed.engine=torch", "optim.epochs=3")
    results = train(cfg, mlflow=False, resume=True)
    assert [h["epoch"] for h in results["history"]] == [1, 2, 3]
    assert results["history"][:2] == first["history"]            # epochs 1-2 come from the checkpoint
    assert results["rows"][0]["label"] == "last epoch (3)"
    best = max(results["history"], key=lambda h: h["test_map_avg_0.1_0.7"])
    assert results["rows"][1]["test"]["map_avg_0.1_0.7"] == best["test_map_avg_0.1_0.7"]
