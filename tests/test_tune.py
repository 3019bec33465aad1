"""Sweeps (tune.sweep), comparisons (tune.compare) and the MLflow store they share with training.

Validation, expansion (Tune's search-space objects and variant generator, offline), reporting and
table tests need no Ray. The `ray`-marked tests run ONE tiny sweep (4 in-process trials, 1 epoch,
small model, synthetic data) on one local Ray instance and check MLflow, the trials Tune ran, the
comparison files and --resume.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from distributed import cli
from model.metrics import SCORE_KEYS
from tune.compare import RunRecord, best_rows, format_comparison, group_records, write_csv
from tune.spaces import load_sweep, trial_tree
from tune.sweep import EpochReporter, describe

SMALL = ["distributed.engine=torch", "optim.epochs=1", "data.batch_size=16", "data.eval_batch_size=32",
         "model.model_dim=64", "model.visual_hidden=64", "model.audio_hidden=32"]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from distributed.data.synth import generate

    out = tmp_path_factory.mktemp("tune-data") / "llp"
    generate(out, n_train=120, n_val=30, n_test=30, seed=0)
    return out


def write_sweep(path, data, space, **extra):
    doc = {"base": "ppl", "overrides": [f"data.annotations={data}/annotations", f"data.features={data}/features",
                                        *SMALL],
           "space": space, "seeds": 1, "resources_per_trial": {"workers": 0, "cpus_per_worker": 1}, **extra}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_cli(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------------------------
# sweep files: validation before anything starts (no Ray)
# ---------------------------------------------------------------------------------------------

BAD_SPACES = [
    ({"ppl.taux": {"grid": [0.1]}}, {}, "space.ppl.taux = 0.1: unknown config key 'ppl.taux' (did you mean 'ppl.tau'?)"),
    ({}, {}, "space: empty"),
    ({"ppl.tau": {"grid": [0.1, 0]}}, {}, "space.ppl.tau = 0: ppl.tau: must be > 0, got 0.0"),
    ({"ppl.tau": {"grid": [0.1, -0.2]}}, {}, "ppl.tau: must be > 0, got -0.2"),
    ({"ppl.tau": {"grid": []}}, {}, "space.ppl.tau: grid is empty"),
    ({"ppl.tau": {"uniform": [0.3, 0.1]}}, {"search": {"random": {"num_samples": 2}}}, "low must be < high"),
    ({"optim.lr": {"loguniform": [0.0, 0.1]}}, {"search": {"random": {"num_samples": 2}}}, "bounds must be > 0"),
    ({"ppl.tau": {"uniform": [0.05, 0.3]}}, {}, "uniform needs search: {random: {num_samples: N}}"),
    ({"optim.epochs": {"uniform": [1, 4]}}, {"search": {"random": {"num_samples": 2}}},
     "optim.epochs: expected int"),
    ({"seed": {"grid": [0, 1]}}, {}, "space.seed: cannot be swept"),
    ({"ppl.ema_decay": {"grid": [0.999, 1.5]}}, {}, "ppl.ema_decay: must be in [0, 1) or none"),
    ({"ppl.tau": {"grid": [0.1]}}, {"metric": "accuracy"}, "metric: expected a per-epoch metric"),
    ({"ppl.tau": {"grid": [0.1]}}, {"scheduler": {"asha": {"max_t": 2, "grace_period": 3}}},
     "grace_period: must be <= max_t"),
    ({"ppl.tau": {"grid": [0.1]}}, {"sedes": 2}, "unknown key 'sedes' (did you mean 'seeds'?)"),
]


@pytest.mark.parametrize("space, extra, message", BAD_SPACES,
                         ids=["unknown-key", "empty-space", "tau-zero", "tau-negative", "empty-grid", "uniform-bounds",
                              "loguniform-zero", "uniform-no-search", "int-uniform", "seed-swept", "ema-range",
                              "metric", "asha-grace", "top-level-typo"])
def test_bad_sweep_file_exits_2_before_anything_starts(tmp_path, capsys, monkeypatch, synth_data,
                                                       space, extra, message):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start for an invalid sweep file")

    monkeypatch.setattr(ray, "init", no_ray)
    path = write_sweep(tmp_path / "bad.yaml", synth_data, space, **extra)
    storage = tmp_path / "sweeps"
    rc, out, err = run_cli(["sweep", "--config", str(path), "--storage", str(storage)], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppl-avvp sweep: error: "), err
    assert message in lines[0]
    assert not storage.exists()                      # no state, no MLflow store, no trial folder


def test_missing_data_folder_and_bad_override(tmp_path, capsys, synth_data):
    path = write_sweep(tmp_path / "s.yaml", tmp_path / "nowhere", {"ppl.tau": {"grid": [0.1]}})
    rc, _, err = run_cli(["sweep", "--config", str(path), "--dry-run"], capsys)
    assert rc == 2 and "data.annotations: folder not found" in err
    path = write_sweep(tmp_path / "s.yaml", synth_data, {"ppl.tau": {"grid": [0.1]}})
    rc, _, err = run_cli(["sweep", "--config", str(path), "--dry-run", "optim.epohcs=3"], capsys)
    assert rc == 2 and "unknown config key 'optim.epohcs'" in err
    rc, _, err = run_cli(["sweep", "--config", str(path), "--dry-run", "ppl.tau=0.3"], capsys)
    assert rc == 2 and "ppl.tau is swept" in err


def test_expansion_grid_choice_random(tmp_path, synth_data):
    path = write_sweep(tmp_path / "g.yaml", synth_data,
                       {"ppl.tau": {"grid": [0.05, 0.1]}, "ppl.ema_decay": {"grid": [0.999, "none"]},
                        "model.dropout": {"choice": [0.0, 0.1]}}, seeds=[3, 7])
    spec = load_sweep(path)
    assert len(spec.points) == 8 and spec.num_trials == 16 and spec.seeds == [3, 7]
    assert spec.points[0] == {"ppl.tau": 0.05, "ppl.ema_decay": 0.999, "model.dropout": 0.0}
    assert spec.swept_keys == ["ppl.tau", "ppl.ema_decay", "model.dropout"]

    path = write_sweep(tmp_path / "r.yaml", synth_data,
                       {"ppl.ema_decay": {"grid": [0.999, "none"]}, "optim.lr": {"loguniform": [1e-4, 1e-3]},
                        "model.dropout": {"choice": [0.0, 0.1, 0.2]}},
                       search={"random": {"num_samples": 3, "seed": 5}}, seeds=2)
    spec = load_sweep(path)
    assert len(spec.points) == 6 and spec.seeds == [0, 1]
    assert all(1e-4 <= p["optim.lr"] <= 1e-3 and p["model.dropout"] in (0.0, 0.1, 0.2) for p in spec.points)
    # a sample's draw is shared by its grid combinations (paired comparison)
    assert spec.points[0]["optim.lr"] == spec.points[1]["optim.lr"]
    assert [p["optim.lr"] for p in load_sweep(path).points] == [p["optim.lr"] for p in spec.points]


RANDOM_SPACE = {"ppl.ema_decay": {"grid": [0.999, "none"]}, "optim.lr": {"loguniform": [1e-4, 1e-3]},
                "ppl.tau": {"uniform": [0.05, 0.3]}, "model.dropout": {"choice": [0.0, 0.1, 0.2]}}


def test_param_space_is_made_of_tune_search_space_objects(tmp_path, synth_data):
    from ray import tune
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.sample import Categorical, Float, LogUniform, Uniform

    path = write_sweep(tmp_path / "r.yaml", synth_data, RANDOM_SPACE, seeds=[3, 7],
                       search={"random": {"num_samples": 2, "seed": 11}})
    space = load_sweep(path).param_space()
    assert list(space) == ["ppl.ema_decay", "optim.lr", "ppl.tau", "model.dropout", "seed"]
    assert space["ppl.ema_decay"] == tune.grid_search([0.999, "none"]) == {"grid_search": [0.999, "none"]}
    assert space["seed"] == {"grid_search": [3, 7]}
    lr, tau, dropout = space["optim.lr"], space["ppl.tau"], space["model.dropout"]
    assert type(lr) is Float and isinstance(lr.get_sampler(), LogUniform)
    assert (lr.lower, lr.upper) == (1e-4, 1e-3)
    assert type(tau) is Float and isinstance(tau.get_sampler(), Uniform)
    assert (tau.lower, tau.upper) == (0.05, 0.3)
    assert type(dropout) is Categorical and dropout.categories == [0.0, 0.1, 0.2]
    algorithm = load_sweep(path).search_algorithm(max_concurrent=2)
    assert type(algorithm) is BasicVariantGenerator and algorithm.max_concurrent == 2

    # without random search a choice expands like a grid
    grid = write_sweep(tmp_path / "g.yaml", synth_data, {"model.dropout": {"choice": [0.0, 0.1]}})
    assert load_sweep(grid).param_space()["model.dropout"] == {"grid_search": [0.0, 0.1]}


def test_random_search_is_reproducible_by_seed_and_is_what_tune_generates(tmp_path, synth_data):
    def trials_of(seed):
        path = write_sweep(tmp_path / f"r{seed}.yaml", synth_data, RANDOM_SPACE, seeds=2,
                           search={"random": {"num_samples": 3, "seed": seed}})
        return load_sweep(path)

    spec = trials_of(5)
    assert spec.num_trials == 3 * 2 * 2 and len(spec.points) == 6
    assert spec.trials == trials_of(5).trials                        # same seed, same trials
    assert [p["optim.lr"] for p in trials_of(6).points] != [p["optim.lr"] for p in spec.points]
    assert all(0.05 <= p["ppl.tau"] <= 0.3 and 1e-4 <= p["optim.lr"] <= 1e-3 for p in spec.points)

    # the same trials come out of the search algorithm the Tuner is given (Tune's BasicVariantGenerator)
    def trainable(config):
        pass

    algorithm = spec.search_algorithm()
    algorithm.add_configurations({"probe": {"run": trainable, "config": spec.param_space(),
                                            "num_samples": spec.num_samples, "storage_path": str(tmp_path / "ray")}})
    generated = []
    while (trial := algorithm.next_trial()) is not None:
        generated.append(({k: trial.config[k] for k in spec.swept_keys}, trial.config["seed"]))
    assert generated == spec.trials
    # a sample's draws are shared by its grid combinations and seeds (paired comparisons)
    first_sample = spec.trials[:4]
    assert len({(p["optim.lr"], p["ppl.tau"], p["model.dropout"]) for p, _ in first_sample}) == 1
    assert {(p["ppl.ema_decay"], s) for p, s in first_sample} == {(0.999, 0), ("none", 0), (0.999, 1), ("none", 1)}
    text = describe(spec)
    assert "6 point(s) x 2 seed(s) = 12 trial(s)" in text and "3 sample(s) x 2 grid combination(s)" in text
    assert "optim.lr: loguniform [0.0001, 0.001] (tune.loguniform)" in text


def test_train_sweep_and_compare_share_one_default_store(tmp_path, tmp_path_factory, monkeypatch, capsys,
                                                         synth_data):
    """`ppl-avvp train` with defaults logs where `ppl-avvp compare --experiment ppl-avvp` and sweeps look,
    even when output_dir lies outside the current folder."""
    from distributed.runtime.tracking import default_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = f"sqlite:///{Path.cwd() / 'runs' / 'mlflow.db'}"
    outside = tmp_path_factory.mktemp("elsewhere") / "run"
    rc, out, _ = run_cli(["train", "--config", "ppl", f"data.annotations={synth_data}/annotations",
                          f"data.features={synth_data}/features", "distributed.num_workers=0", *SMALL,
                          f"output_dir={outside}"], capsys)
    assert rc == 0 and f"at {store}" in out
    assert (tmp_path / "runs" / "mlflow.db").is_file() and not (outside.parent / "mlflow.db").exists()
    results = json.loads((outside / "results.json").read_text())

    rc, out, _ = run_cli(["compare", "--experiment", "ppl-avvp", "--no-plots"], capsys)
    assert rc == 0 and "experiment ppl-avvp" in out
    rows = list(csv.DictReader(open(tmp_path / "runs" / "compare" / "ppl-avvp" / "comparison.csv")))
    assert len(rows) == 1 and float(rows[0]["seg_a_mean"]) == results["test"]["seg_a"]

    sweep_file = write_sweep(tmp_path / "s.yaml", synth_data, {"ppl.tau": {"grid": [0.1]}})
    assert load_sweep(sweep_file).tracking_uri == store == default_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert load_sweep(sweep_file).tracking_uri == "http://127.0.0.1:5000" == default_tracking_uri()


def test_trial_config_carries_point_seed_and_tracking(tmp_path, synth_data):
    from distributed.common.config import config_from_dict

    path = write_sweep(tmp_path / "s.yaml", synth_data, {"ppl.ema_decay": {"grid": [0.999, "none"]}},
                       experiment="exp-x", tracking_uri=f"sqlite:///{tmp_path}/m.db")
    spec = load_sweep(path)
    cfg = config_from_dict(trial_tree(spec.payload("parent123"), spec.points[1], 4, tmp_path / "t" / "train", "rn"))
    assert cfg.ppl.ema_decay is None and cfg.seed == 4 and cfg.optim.epochs == 1
    assert cfg.tracking.parent_run_id == "parent123" and cfg.tracking.experiment == "exp-x"
    assert cfg.tracking.tracking_uri == f"sqlite:///{tmp_path}/m.db" and cfg.tracking.run_name == "rn"
    assert cfg.output_dir == str(tmp_path / "t" / "train") and cfg.distributed.num_workers == 0


def test_epoch_reporter_sends_each_epoch_once_in_order():
    sent = []
    reporter = EpochReporter(sent.append, epochs=3)
    reporter.epoch({"epoch": 1, "val_seg_type": 10.0, "note": "x"})          # live hook
    results = {"history": [{"epoch": e, "val_seg_type": 10.0 * e} for e in (1, 2, 3)],
               "test": {k: 1.0 for k in SCORE_KEYS}, "val": {k: 2.0 for k in SCORE_KEYS}, "best_epoch": 3}
    final = reporter.finish(results)
    assert [m["epoch"] for m in sent] == [1, 2, 3]
    assert "note" not in sent[0]
    assert final["val_seg_type"] == 30.0 and final["test_evt_event"] == 1.0 and final["best_epoch"] == 3


def test_group_mean_std_best_and_csv(tmp_path):
    def record(run_id, tau, seed, base):
        return RunRecord(run_id, run_id, {"ppl.tau": tau, "seed": seed},
                         {k: base + i + seed for i, k in enumerate(SCORE_KEYS)})

    records = [record("a", "0.1", 0, 50.0), record("b", "0.1", 2, 50.0), record("c", "0.05", 0, 40.0)]
    rows = group_records(records, ["ppl.tau"])
    assert [r.setting["ppl.tau"] for r in rows] == ["0.05", "0.1"]
    assert rows[1].n == 2 and rows[1].mean["seg_a"] == 51.0 and math.isclose(rows[1].std["seg_a"], math.sqrt(2))
    assert rows[0].std["seg_a"] is None
    best = best_rows(rows)
    assert all(best[k] == {1} for k in SCORE_KEYS)
    table = format_comparison(rows, best, "t")
    assert "51.0 ± 1.4*" in table and "tau=0.05" in table and "Segment-level" in table
    write_csv(rows, ["ppl.tau"], "test", tmp_path / "c.csv")
    parsed = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert float(parsed[1]["seg_a_mean"]) == 51.0 and parsed[0]["seg_a_std"] == ""


# ---------------------------------------------------------------------------------------------
# one real sweep on a local Ray instance
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, synth_data, ray_local):
    root = tmp_path_factory.mktemp("tune-sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    path = write_sweep(root / "tiny.yaml", synth_data,
                       {"ppl.tau": {"grid": [0.05, 0.1]}, "ppl.ema_decay": {"grid": [0.999, "none"]}},
                       name="tiny", storage=str(root / "sweeps"), tracking_uri=uri, experiment="tune-test",
                       max_concurrent_trials=2, scheduler={"asha": {"grace_period": 1}})
    rc = cli.main(["sweep", "--config", str(path)])
    assert rc == 0
    exp_dir = root / "sweeps" / "tiny"
    state = json.loads((exp_dir / "sweep_state.json").read_text())
    return {"root": root, "path": path, "uri": uri, "dir": exp_dir, "state": state}


def child_runs(sweep):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sweep["uri"])
    parent = client.get_run(sweep["state"]["parent_run_id"])
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return client, parent, runs


@pytest.mark.ray
def test_sweep_logs_parent_and_child_runs(sweep):
    client, parent, runs = child_runs(sweep)
    assert parent.data.tags["ppl_avvp.sweep"] == "tiny" and parent.info.status == "FINISHED"
    assert parent.data.params["sweep.space.ppl.tau"] == '{"grid": [0.05, 0.1]}'
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    points = {(r.data.params["ppl.tau"], r.data.params["ppl.ema_decay"]) for r in runs}
    assert points == {("0.05", "0.999"), ("0.05", "none"), ("0.1", "0.999"), ("0.1", "none")}
    for run in runs:
        assert run.data.params["seed"] == "0" and run.data.params["tracking.parent_run_id"] == parent.info.run_id
        assert run.data.params["output_dir"].startswith(str(sweep["dir"]))
        assert all(f"test_{k}" in run.data.metrics and f"val_{k}" in run.data.metrics for k in SCORE_KEYS)
        assert run.data.tags["ppl_avvp.sweep"] == "tiny"
    assert len([d for d in sweep["dir"].iterdir() if (d / "train" / "results.json").is_file()]) == 4


@pytest.mark.ray
def test_tune_ran_the_trials_of_the_param_space(sweep):
    from ray.tune import ExperimentAnalysis

    spec = load_sweep(sweep["path"])
    configs = [trial.config for trial in ExperimentAnalysis(str(sweep["dir"])).trials]
    assert all(set(config) == {"ppl.tau", "ppl.ema_decay", "seed"} for config in configs)
    ran = sorted(json.dumps(c, sort_keys=True) for c in configs)
    assert ran == sorted(json.dumps({**p, "seed": s}, sort_keys=True) for p, s in spec.trials) and len(ran) == 4


@pytest.mark.ray
def test_comparison_numbers_are_the_logged_metrics(sweep):
    client, parent, runs = child_runs(sweep)
    by_id = {r.info.run_id: r for r in runs}
    compare_dir = sweep["dir"] / "compare"
    rows = list(csv.DictReader(open(compare_dir / "comparison.csv")))
    assert len(rows) == 4 and {r["n"] for r in rows} == {"1"}
    for row in rows:
        run = by_id[row["run_ids"]]
        assert (row["ppl.tau"], row["ppl.ema_decay"]) == (run.data.params["ppl.tau"], run.data.params["ppl.ema_decay"])
        for key in SCORE_KEYS:
            assert float(row[f"{key}_mean"]) == run.data.metrics[f"test_{key}"]
            assert row[f"{key}_std"] == ""
    table = (compare_dir / "comparison.txt").read_text()
    assert "tau=0.05 ema_decay=none" in table and "Event-level" in table
    for name in ("tau.png", "ema.png", "curves.png"):
        assert (compare_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "compare")} >= {
        "compare/comparison.csv", "compare/comparison.md", "compare/tau.png", "compare/ema.png", "compare/curves.png"}


@pytest.mark.ray
def test_compare_cli_val_split_and_experiment(sweep, capsys, tmp_path):
    client, parent, runs = child_runs(sweep)
    rc, out, _ = run_cli(["compare", "--sweep", "tiny", "--storage", str(sweep["root"] / "sweeps"),
                          "--split", "val", "--out", str(tmp_path / "val"), "--no-plots"], capsys)
    assert rc == 0 and "val F1" in out
    by_id = {r.info.run_id: r for r in runs}
    for row in csv.DictReader(open(tmp_path / "val" / "comparison.csv")):
        for key in SCORE_KEYS:         # 1 epoch: the best epoch's val metric is the only one
            assert float(row[f"{key}_mean"]) == by_id[row["run_ids"]].data.metrics[f"val_{key}"]
    rc, out, _ = run_cli(["compare", "--experiment", "tune-test", "--tracking-uri", sweep["uri"],
                          "--group-by", "ppl.ema_decay", "--out", str(tmp_path / "exp")], capsys)
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "exp" / "comparison.csv")))
    assert [(r["ppl.ema_decay"], r["n"]) for r in rows] == [("none", "2"), ("0.999", "2")]
    assert all(r["seg_a_std"] != "" for r in rows)
    rc, _, err = run_cli(["compare", "--experiment", "tune-test", "--tracking-uri", sweep["uri"],
                          "--group-by", "ppl.tua"], capsys)
    assert rc == 2 and "did you mean 'ppl.tau'" in err


@pytest.mark.ray
def test_resume_does_not_rerun_finished_trials(sweep, capsys):
    _, _, before = child_runs(sweep)
    results = sorted(sweep["dir"].glob("*/train/results.json"))
    mtimes = [p.stat().st_mtime_ns for p in results]
    rc, out, _ = run_cli(["sweep", "--config", str(sweep["path"]), "--resume"], capsys)
    assert rc == 0 and "trials finished: 4/4" in out and "wall time:" in out
    _, parent, after = child_runs(sweep)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)
    assert [p.stat().st_mtime_ns for p in sorted(sweep["dir"].glob("*/train/results.json"))] == mtimes
    assert parent.info.run_id == sweep["state"]["parent_run_id"]
    # without --resume an existing sweep is refused; a changed space is refused on --resume
    rc, _, err = run_cli(["sweep", "--config", str(sweep["path"])], capsys)
    assert rc == 2 and "already exists" in err
    doc = yaml.safe_load(sweep["path"].read_text())
    doc["space"]["ppl.tau"]["grid"] = [0.05, 0.2]
    changed = sweep["root"] / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc))
    rc, _, err = run_cli(["sweep", "--config", str(changed), "--resume"], capsys)
    assert rc == 2 and "the trials differ" in err


# ---------------------------------------------------------------------------------------------
# named settings (variants:) and paper tables (tables:), as tune/sweeps/seed_tables.yaml uses them
# ---------------------------------------------------------------------------------------------

def test_seed_tables_file_runs_each_setting_once_per_seed(monkeypatch, synth_data):
    monkeypatch.setenv("LLP_ANNOTATIONS", str(synth_data / "annotations"))
    monkeypatch.setenv("LLP_FEATURES", str(synth_data / "features"))
    spec = load_sweep(Path(__file__).parents[1] / "tune" / "sweeps" / "seed_tables.yaml")
    assert spec.swept_keys == ["variant"] and spec.seeds == [0, 1, 2]
    assert len(spec.trials) == 10 * 3 and len({json.dumps(t) for t in spec.trials}) == 30
    payload = spec.payload("p")
    flat = {p["variant"]: trial_tree(payload, p, 0, "/tmp/x", "r") for p in spec.points}
    assert flat["em_mil"]["ppl"]["labeler"] == "em_mil" and flat["em_mil"]["model"]["key_instance_head"] is True
    from distributed.common.config import config_from_dict

    assert config_from_dict(flat["no_ema"]).ppl.ema_decay is None and flat["tau_0.3"]["ppl"]["tau"] == 0.3
    assert flat["ppl"]["ppl"] == flat["tau_0.3"]["ppl"] | {"tau": flat["ppl"]["ppl"]["tau"]}
    assert [t.title.split(":")[0] for t in spec.tables] == ["Table 2", "Table 3", "Table 4"]
    assert [name for _, name in spec.tables[2].rows] == ["no_ema", "ppl"]


@pytest.mark.parametrize("extra, message", [
    ({"variants": {"a b": {}}}, "variants: name 'a b'"),
    ({"variants": {"x": {"seed": 3}}}, "variants.x: seed is set by the sweep"),
    ({"variants": {"x": {"ppl.taux": 0.1}}}, "unknown config key 'ppl.taux'"),
    ({"variants": {"x": {}}, "tables": [{"title": "T", "rows": {"row": "y"}}]}, "unknown variant 'y'"),
    ({"tables": [{"rows": {"row": "y"}}]}, "the file has no variants"),
    ({"variants": {"x": {}}, "space": {"variant": {"grid": [1]}}}, "space.variant: reserved"),
])
def test_bad_variants_and_tables(tmp_path, synth_data, extra, message):
    from distributed.common.errors import ConfigError

    doc = {"base": "ppl", "overrides": [f"data.annotations={synth_data}/annotations",
                                        f"data.features={synth_data}/features", *SMALL], **extra}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_sweep(path)


@pytest.mark.ray
def test_variant_sweep_prints_the_tables_from_the_logged_metrics(tmp_path, synth_data, ray_local, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    doc = {"name": "tables", "base": "ppl", "overrides": [f"data.annotations={synth_data}/annotations",
                                                          f"data.features={synth_data}/features", *SMALL],
           "variants": {"base": {"ppl.labeler": "none"}, "ppl": {}, "hot": {"ppl.tau": 0.3}},
           "tables": [{"title": "Table 3: tau", "rows": {"tau=0.3": "hot", "tau=0.1": "ppl"}},
                      {"title": "Table 2: labelers", "rows": {"Base": "base", "Base+PPL": "ppl"}}],
           "seeds": 1, "resources_per_trial": {"workers": 0, "cpus_per_worker": 1},
           "storage": str(tmp_path / "sweeps"), "tracking_uri": uri, "experiment": "tables-test"}
    path = tmp_path / "tables.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cli.main(["sweep", "--config", str(path)]) == 0
    capsys.readouterr()
    assert cli.main(["compare", "--sweep", "tables", "--storage", str(tmp_path / "sweeps"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri)
    runs = {json.loads(r.data.tags["ppl_avvp.point"])["variant"]: r
            for r in client.search_runs([client.get_experiment_by_name("tables-test").experiment_id],
                                        filter_string="tags.ppl_avvp.role = 'trial'")}
    assert set(runs) == {"base", "ppl", "hot"}
    assert runs["base"].data.params["ppl.labeler"] == "none" and runs["hot"].data.params["ppl.tau"] == "0.3"
    t3 = out[out.index("Table 3: tau (test"):out.index("Table 2: labelers")].splitlines()
    t2 = out[out.index("Table 2: labelers (test"):].splitlines()
    assert [line.split()[0] for line in t3[3:5]] == ["tau=0.3", "tau=0.1"]
    assert [line.split()[0] for line in t2[3:5]] == ["Base", "Base+PPL"]
    for line, variant in ((t3[3], "hot"), (t3[4], "ppl"), (t2[3], "base"), (t2[4], "ppl")):
        seg_a = float(line.split()[2].rstrip("*"))       # label, n, then Segment A
        assert seg_a == pytest.approx(runs[variant].data.metrics["test_seg_a"], abs=0.05)


@pytest.mark.ray
def test_a_trial_bigger_than_the_local_machine_is_refused(tmp_path, synth_data, capsys):
    """Tune would queue it forever; the sweep says so in one line and exits 2."""
    import ray

    path = write_sweep(tmp_path / "big.yaml", synth_data, {"ppl.tau": {"grid": [0.1]}}, name="big",
                       storage=str(tmp_path / "sweeps"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                       resources_per_trial={"workers": 0, "cpus_per_worker": 512})
    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()          # the sweep must start (and size) its own local instance
    rc, _, err = run_cli(["sweep", "--config", str(path)], capsys)
    last = err.strip().splitlines()[-1]      # (Ray's own start-up warnings come before it)
    assert rc == 2 and "resources_per_trial: one trial needs 512 CPU" in last and "the Ray cluster has" in last
    assert not ray.is_initialized() and not (tmp_path / "sweeps").exists() and not (tmp_path / "m.db").exists()
