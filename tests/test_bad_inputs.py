"""A hostile user's matrix: bad configs, output paths, features, annotations, shards, predictions, reruns
into an existing run, sweeps and killed processes. Each case checks the exit code, that the one line on
stderr names the culprit, that nothing half-written is left (or later accepted), and that no planted
pickle runs. Commands run in-process (``distributed.cli.main``); one case kills a real subprocess."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from distributed.cli import main as cli
from distributed.common.config import load_config
from distributed.common.fsutil import HOST_TAG
from distributed.data.llp import load_split
from hostile import RunsCode, linked_copy, llp_data, npy_bytes, one_line_error, replace_file, run_overrides

REPO = Path(__file__).resolve().parents[1]


def train(capsys, *args) -> tuple[int, str]:
    code = cli(["train", "--no-mlflow", *map(str, args)])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# configs: refused before anything is written
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, culprit", [
    ("ppl.tau=.inf", "ppl.tau: must be a finite number"),
    ("optim.lr=.inf", "optim.lr: must be a finite number"),
    ("ppl.pl_weight=.inf", "ppl.pl_weight: must be a finite number"),
    ("ppl.tau=.nan", "ppl.tau: must be a finite number"),
    ("optim.lr=1e999", "optim.lr: must be a finite number"),
    ("optim.weight_decay=-1", "optim.weight_decay: must be >= 0"),
    ("optim.lr=abc", "optim.lr: expected float, got 'abc'"),
    ("ppl.tua=0.1", "unknown config key 'ppl.tua' (did you mean 'ppl.tau'?)"),
    ("data.batch_size=0", "data.batch_size: must be >= 1"),
    ("seed=-1", "seed: must be an integer in [0, 2**63)"),
    ("model.dropout=1.5", "model.dropout: must be in [0, 1)"),
    ("optim.grad_clip=-1", "optim.grad_clip: must be >= 0"),
    ("ppl.tau=1e-30", "ppl.tau: must be >= 1e-6"),
    ("distributed.deepspeed_config=missing.json", "distributed.deepspeed_config: missing.json not found"),
    ("model.num_classes=10", "model.num_classes: 10, but the LLP annotations"),
])
def test_bad_config_value(tiny_llp, tmp_path, capsys, override, culprit):
    out = tmp_path / "run"
    code, err = train(capsys, *run_overrides(out, llp_data(tiny_llp), "distributed.engine=deepspeed"), override)
    one_line_error(code, err, culprit)
    assert not out.exists(), "something was written before the config and data were checked"


@pytest.mark.parametrize("text, culprit", [
    ("optim: [unclosed", "not valid YAML"),
    ("- a list\n- at the top\n", "expected a mapping at the top level"),
    (None, "config file not found"),
])
def test_bad_config_file(tiny_llp, tmp_path, capsys, text, culprit):
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    code, err = train(capsys, "--config", path, *run_overrides(tmp_path / "run", llp_data(tiny_llp)))
    one_line_error(code, err, path, culprit)
    assert not (tmp_path / "run").exists()


def test_unknown_flag_and_overrides_after_flags(tiny_llp, tmp_path, capsys):
    one_line_error(*train(capsys, "--bogus"), "unrecognized arguments: --bogus")
    # an override after a flag is parsed as an override (argparse alone rejects it as unrecognized)
    code = cli(["train", *run_overrides(tmp_path / "r", llp_data(tiny_llp)), "--no-mlflow", "optim.epochs=abc"])
    one_line_error(code, capsys.readouterr().err, "optim.epochs: expected int, got 'abc'")


def test_float_written_without_a_dot_is_accepted(tmp_path):
    (tmp_path / "run.yaml").write_text("data: {shards: s}\noptim:\n  lr: 1e-3\n  weight_decay: 5E-5\n")
    cfg = load_config(tmp_path / "run.yaml", ["ppl.tau=5e-2", "optim.lr_gamma=1e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.ppl.tau, cfg.optim.lr_gamma) == (1e-3, 5e-5, 5e-2, 1e-1)
    assert load_config("ppl", ["data.shards=s", "optim.lr=3e-4"]).optim.lr == 3e-4


# ---------------------------------------------------------------------------------------------
# output paths
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictions(tiny_llp, tmp_path_factory) -> Path:
    """Valid predictions for the tiny test split."""
    split = load_split(tiny_llp / "annotations", "test")
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("preds") / "preds.npz"
    np.savez(path, video_ids=np.asarray(split.filenames), global_prob=rng.uniform(size=(len(split), 25)),
             frame_prob=rng.uniform(size=(len(split), 10, 2, 25)))
    return path


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("keep me\n")
    return tmp_path / "a_file"


@pytest.mark.parametrize("where", ["is_file", "under_file"])
def test_train_output_dir_that_is_or_sits_under_a_file(tiny_llp, tmp_path, capsys, where):
    blocker = _a_file(tmp_path)
    out = blocker if where == "is_file" else blocker / "run"
    code, err = train(capsys, *run_overrides(out, llp_data(tiny_llp)))
    one_line_error(code, err, "output_dir", out, "is not a directory" if where == "is_file" else "is a file")
    assert blocker.read_text() == "keep me\n"


@pytest.mark.parametrize("command, where", [("evaluate", "is_dir"), ("evaluate", "under_file"),
                                            ("predict", "is_file"), ("predict", "under_file")])
def test_evaluate_and_predict_output_paths(tiny_llp, predictions, tmp_path, capsys, command, where):
    blocker = _a_file(tmp_path)
    target = {"is_dir": tmp_path, "is_file": blocker, "under_file": blocker / "x"}[where]
    data = llp_data(tiny_llp)
    if command == "evaluate":
        args = ["--predictions", predictions, "--annotations", data["annotations"], "--json", target]
    else:
        args = ["--checkpoint", tmp_path / "never_read.pt", "--features", data["features"], "--out", target]
    code = cli([command, *map(str, args)])
    one_line_error(code, capsys.readouterr().err, target)
    assert blocker.read_text() == "keep me\n"


# ---------------------------------------------------------------------------------------------
# features and annotations (copies of the tiny dataset)
# ---------------------------------------------------------------------------------------------

def _object_array_with_code(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("row, make, culprit", [
    (0, lambda m: _object_array_with_code(m), "unreadable .npy file"),       # found by the pre-launch check
    (3, lambda m: _object_array_with_code(m), "unreadable .npy file"),       # found by the worker loop
    (0, lambda m: _npy(np.full((10, 128), 1e300)), "non-finite"),            # float64 -> inf after the cast
    (3, lambda m: _npy(np.full((10, 128), np.nan, dtype=np.float32)), "non-finite"),
    (0, lambda m: _npy(np.zeros((9, 128), dtype=np.float32)), "shape"),
    (0, lambda m: npy_bytes("<f4", (10**12,), b"\0" * 64), "shape"),           # a header that claims 4 TB
    (3, lambda m: b"\x93NUMPY\x01\x00\x01\x00{", "unreadable .npy file"),        # a header numpy cannot parse
    (3, lambda m: b"\x93NUMPY garbage", "unreadable .npy file"),
    (0, lambda m: None, "not found"),
])
def test_bad_feature_file(tiny_llp, tmp_path, capsys, row, make, culprit):
    data = {"annotations": tiny_llp / "annotations", "features": linked_copy(tiny_llp / "features", tmp_path / "f")}
    victim = data["features"] / "vggish" / f"{load_split(data['annotations'], 'val').video_ids[row]}.npy"
    marker, content = tmp_path / "pwned", make(tmp_path / "pwned")
    if content is None:
        victim.unlink()
    else:
        replace_file(victim, content)
    out = tmp_path / "run"
    one_line_error(*train(capsys, *run_overrides(out, data)), victim, culprit)
    assert not marker.exists(), "a pickled feature file ran code"
    assert not out.exists() if row == 0 else not (out / "results.json").exists()


@pytest.mark.parametrize("file, edit, culprit", [
    ("AVVP_train.csv", None, "file not found"),
    ("AVVP_train.csv", lambda t: t.replace("Speech", "Speeech", 1) if "Speech" in t else t + "x_1\tNoSuchClass\n",
     "unknown class"),
    ("AVVP_val_pd.csv", lambda t: "name\tevent_labels\n" + t.split("\n", 1)[1], "header lacks column"),
    ("AVVP_test_pd.csv", lambda t: t + t.splitlines()[1] + "\n", "repeats line"),
    ("AVVP_eval_audio.csv", lambda t: t + f"{t.splitlines()[1].split(chr(9))[0]}\tx\t3\tDog\n",
     "is not a whole number"),
])
def test_bad_annotation_file(tiny_llp, tmp_path, capsys, file, edit, culprit):
    annotations = Path(shutil.copytree(tiny_llp / "annotations", tmp_path / "ann"))
    path = annotations / file
    if edit is None:
        path.unlink()
    else:
        path.write_text(edit(path.read_text()))
    out = tmp_path / "run"
    data = {"annotations": annotations, "features": tiny_llp / "features"}
    one_line_error(*train(capsys, *run_overrides(out, data)), path, culprit)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# shards (hard-linked copies of the tiny shard sets)
# ---------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rename_first_sample(split_dir: Path) -> Path:
    """Rewrite the first shard with its first sample under another key; the manifest's sha256 is updated
    to match, so only the keys.json check can notice."""
    manifest = json.loads((split_dir / "manifest.json").read_text())
    entry = manifest["shards"][0]
    path = split_dir / entry["name"]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    first = members[0][0].name.split(".", 1)[0]
    path.unlink()
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            key, rest = member.name.split(".", 1)
            member.name = f"ZZZZZZZZZZZ.{rest}" if key == first else member.name
            tar.addfile(member, io.BytesIO(data))
    entry["sha256"] = _sha256(path)
    replace_file(split_dir / "manifest.json", json.dumps(manifest).encode())
    return path


def _corrupt_first_shard(split_dir: Path) -> Path:
    path = sorted(split_dir.glob("*.tar"))[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    replace_file(path, bytes(data))
    return path


@pytest.mark.parametrize("damage, culprit, before_launch", [
    (lambda d: (d / "val" / "manifest.json").unlink() or d / "val", "no manifest.json", True),
    (lambda d: replace_file(d / "train" / "manifest.json", b"{oops") or d / "train" / "manifest.json",
     "unreadable manifest", True),
    (lambda d: d / "train" / "manifest.json", "audio.npy has shape", True),          # with model.audio_dim=64
    (lambda d: _corrupt_first_shard(d / "train"), "", False),
    (lambda d: _rename_first_sample(d / "train"), "", False),
])
def test_bad_shards(tiny_shards, tmp_path, capsys, damage, culprit, before_launch):
    shards = linked_copy(tiny_shards, tmp_path / "shards")
    named = damage(shards)
    extra = ["model.audio_dim=64"] if culprit == "audio.npy has shape" else []
    out = tmp_path / "run"
    one_line_error(*train(capsys, *run_overrides(out, shards, *extra)), named, culprit)
    assert not out.exists() if before_launch else not (out / "results.json").exists()


def test_shard_verify_names_a_corrupt_shard(tiny_shards, tmp_path, capsys):
    shards = linked_copy(tiny_shards, tmp_path / "shards")
    bad = _corrupt_first_shard(shards / "train")
    assert cli(["shard", "verify", str(shards / "train")]) != 0
    assert bad.name in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# predictions (evaluate --predictions)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, culprit", [
    (lambda f, m: f.update(video_ids=np.array([RunsCode(m)] * len(f["video_ids"]), dtype=object)), "video_ids"),
    (lambda f, m: f.pop("global_prob"), "missing field 'global_prob'"),
    (lambda f, m: f.update(frame_prob=f["frame_prob"] + 1.0), "probabilities must lie in [0, 1]"),
    (lambda f, m: f["global_prob"].__setitem__((0, 0), np.nan), "global_prob: contains NaN"),
    (lambda f, m: f.update(global_prob=f["global_prob"][:, :24]), "global_prob: expected shape"),
    (lambda f, m: f.update(video_ids=f["video_ids"][:-1], global_prob=f["global_prob"][:-1],
                           frame_prob=f["frame_prob"][:-1]), "missing"),
])
def test_bad_predictions(tiny_llp, predictions, tmp_path, capsys, change, culprit):
    with np.load(predictions) as npz:
        fields = {k: npz[k].copy() for k in npz.files}
    marker, path = tmp_path / "pwned", tmp_path / "bad.npz"
    change(fields, marker)
    np.savez(path, **fields)
    code = cli(["evaluate", "--predictions", str(path), "--annotations", str(tiny_llp / "annotations"),
                "--json", str(tmp_path / "scores.json")])
    one_line_error(code, capsys.readouterr().err, path, culprit)
    assert not marker.exists() and not (tmp_path / "scores.json").exists()


def test_predictions_file_that_is_not_an_npz(tiny_llp, tmp_path, capsys):
    path = tmp_path / "bad.npz"
    path.write_bytes(os.urandom(256))
    code = cli(["evaluate", "--predictions", str(path), "--annotations", str(tiny_llp / "annotations")])
    one_line_error(code, capsys.readouterr().err, path)


# ---------------------------------------------------------------------------------------------
# reruns into an existing run: --resume, and only the same run
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tiny_llp, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli(["train", "--no-mlflow", *run_overrides(out, llp_data(tiny_llp))]) == 0
    return out


def _snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("config.yaml", "results.json", "best_model.pt")}


@pytest.mark.parametrize("flags, extra, culprit", [
    ([], [], "holds a run already"),
    ([], ["ppl.tau=0.2", "seed=3"], "pass --resume to continue it, or choose another output_dir"),
    (["--resume"], ["ppl.tau=0.2"], "checkpoint of a different run (ppl.tau 0.1 -> 0.2)"),
    (["--resume"], ["optim.lr=1e-3", "seed=3"], "optim.lr 0.0003 -> 0.001, seed 0 -> 3"),
    (["--resume"], ["ppl.labeler=none"], 'ppl.labeler "ppl_soft" -> "none"'),
    (["--resume"], ["distributed.engine=deepspeed"], 'distributed.engine "torch" -> "deepspeed"'),
])
def test_rerun_into_a_finished_run(tiny_llp, finished, tmp_path, capsys, flags, extra, culprit):
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    before = _snapshot(out)
    code, err = train(capsys, *flags, *run_overrides(out, llp_data(tiny_llp), *extra))
    one_line_error(code, err, out, culprit)
    assert _snapshot(out) == before, "a refused rerun changed the finished run"


def test_ray_checkpoint_of_another_run_is_refused(tiny_llp, finished, tmp_path, capsys):
    """Ray Train restores ray/<name>/checkpoint_* when a run of that name starts again: checked the same way."""
    out = tmp_path / "run"
    ray_checkpoint = out / "ray" / "ppl" / "checkpoint_2026-01-01_00-00-00.000000"
    shutil.copytree(sorted((finished / "checkpoints").glob("step-*"))[-1], ray_checkpoint)
    run_file = ray_checkpoint / "run.json"
    saved = json.loads(run_file.read_text())
    saved["fingerprint"]["ppl.tau"] = 0.3
    run_file.write_text(json.dumps(saved))
    one_line_error(*train(capsys, *run_overrides(out, llp_data(tiny_llp))), "pass --resume")
    code, err = train(capsys, "--resume", *run_overrides(out, llp_data(tiny_llp)))
    one_line_error(code, err, ray_checkpoint, "ppl.tau 0.3 -> 0.1")
    assert not (out / "config.yaml").exists()


# ---------------------------------------------------------------------------------------------
# killed processes
# ---------------------------------------------------------------------------------------------

def test_kill_9_mid_run_then_resume_cleans_up_and_continues(tiny_llp, tmp_path, capsys):
    out = tmp_path / "run"
    args = run_overrides(out, llp_data(tiny_llp), "data.limit_train=0", "optim.epochs=50",
                         "distributed.checkpoint_every_steps=1")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "distributed.cli", "train", "--no-mlflow", *args],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("step-*/run.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    root = out / "checkpoints"
    dead = root / f".step.tmp-{proc.pid}-{HOST_TAG}-deadbeef"          # what a kill during a save leaves
    legacy, live = root / ".tmp-abcd1234", root / f".step.tmp-{os.getpid()}-{HOST_TAG}-cafecafe"
    for folder in (dead, legacy, live):
        folder.mkdir(exist_ok=True)
        (folder / "engine.pt").write_bytes(b"half")
    one_line_error(*train(capsys, *run_overrides(out, llp_data(tiny_llp), "optim.epochs=2")), "pass --resume")
    assert dead.exists(), "a refused rerun must not touch the run"
    code, err = train(capsys, "--resume", *run_overrides(out, llp_data(tiny_llp), "data.limit_train=0",
                                                        "optim.epochs=2", "distributed.checkpoint_every_steps=1"))
    assert code == 0, err[-3000:]
    assert not dead.exists() and not legacy.exists(), "a dead writer's temporary checkpoint folder was kept"
    assert live.exists(), "a live writer's temporary folder was removed"
    assert len(json.loads((out / "results.json").read_text())["history"]) <= 2
    shutil.rmtree(live)


def test_failed_and_orphaned_mlflow_runs_are_marked_failed(tiny_llp, tmp_path, capsys):
    from mlflow import MlflowClient

    from distributed.train import DRIVER_TAG, OUTPUT_DIR_TAG

    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "run"
    client = MlflowClient(uri)
    experiment = client.create_experiment("bad-inputs", artifact_location=(tmp_path / "artifacts").as_uri())
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = client.create_run(experiment, tags={DRIVER_TAG: f"{HOST_TAG}:{gone.pid}",
                                                 OUTPUT_DIR_TAG: str(out.resolve())}).info.run_id
    data = {"annotations": tiny_llp / "annotations", "features": linked_copy(tiny_llp / "features", tmp_path / "f")}
    victim = data["features"] / "vggish" / f"{load_split(data['annotations'], 'test').video_ids[5]}.npy"
    replace_file(victim, b"not an npy")                           # found by the worker loop, after the run started
    capsys.readouterr()                                          # MLflow's own notes on creating the store
    code = cli(["train", *run_overrides(out, data, "tracking.mlflow=true", f"tracking.tracking_uri={uri}",
                                        "tracking.experiment=bad-inputs")])
    one_line_error(code, capsys.readouterr().err, victim)
    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    assert runs[orphan].info.status == "FAILED"
    failed = [r for rid, r in runs.items() if rid != orphan]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "DataError" in failed[0].data.tags["ppl_avvp.failure"]


@pytest.mark.ray
def test_bad_data_found_on_a_ray_train_worker_is_one_line(ray_local, tiny_llp, tmp_path, capsys):
    data = {"annotations": tiny_llp / "annotations", "features": linked_copy(tiny_llp / "features", tmp_path / "f")}
    victim = data["features"] / "res152" / f"{load_split(data['annotations'], 'val').video_ids[4]}.npy"
    replace_file(victim, _npy(np.zeros((3, 3), dtype=np.float32)))
    out = tmp_path / "run"
    code, err = train(capsys, *run_overrides(out, data, "distributed.num_workers=1"))
    one_line_error(code, err, victim, "shape (3, 3)")
    assert not (out / "results.json").exists()


# ---------------------------------------------------------------------------------------------
# sweeps, synth and shard
# ---------------------------------------------------------------------------------------------

def _sweep_file(tmp_path: Path, tiny_llp: Path, space: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: bad\nbase: ppl\nstorage: {tmp_path / 'sweeps'}\noverrides:\n"
                    f"  - data.annotations={tiny_llp / 'annotations'}\n  - data.features={tiny_llp / 'features'}\n"
                    f"space:\n  {space}\nseeds: 1\n")
    return path


@pytest.mark.parametrize("space, extra, culprit", [
    ("ppl.tau: {grid: [0.1, .inf]}", [], "ppl.tau: must be a finite number"),
    ("ppl.tau: {grid: [0.1, 0.2]}", ["optim.lr=abc"], "optim.lr: expected float"),   # override after a flag
    ("ppl.tua: {grid: [0.1]}", [], "ppl.tua"),
])
def test_bad_sweep(tiny_llp, tmp_path, capsys, space, extra, culprit):
    code = cli(["sweep", "--config", str(_sweep_file(tmp_path, tiny_llp, space)), "--dry-run", *extra])
    one_line_error(code, capsys.readouterr().err, culprit)
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("command", ["synth", "shard"])
@pytest.mark.parametrize("where", ["is_file", "under_file"])
def test_synth_and_shard_output_paths(tiny_llp, tmp_path, capsys, command, where):
    blocker = _a_file(tmp_path)
    out = blocker if where == "is_file" else blocker / "x"
    args = (["synth", "--out", out, "--train", 4, "--val", 2, "--test", 2] if command == "synth" else
            ["shard", "--features", tiny_llp / "features", "--annotations", tiny_llp / "annotations",
             "--split", "val", "--out", out])
    one_line_error(cli([*map(str, args)]), capsys.readouterr().err, out)
    assert blocker.read_text() == "keep me\n"


def test_shard_removes_a_dead_writers_temporary_folder(tiny_llp, tmp_path, capsys):
    out = tmp_path / "val"
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f".val.tmp-{gone.pid}-{HOST_TAG}-deadbeef"
    stale.mkdir()
    (stale / "val-000000.tar").write_bytes(b"half a shard")
    assert cli(["shard", "--features", str(tiny_llp / "features"), "--annotations", str(tiny_llp / "annotations"),
                "--split", "val", "--out", str(out)]) == 0, capsys.readouterr().err
    assert not stale.exists() and (out / "manifest.json").is_file()


def test_pooled_synth_output_is_read_by_shard_and_train(tmp_path, capsys):
    data = tmp_path / "pooled"
    assert cli(["synth", "--out", str(data), "--train", "16", "--val", "8", "--test", "8", "--pool"]) == 0
    for split in ("train", "val", "test"):
        assert cli(["shard", "--features", str(data / "features"), "--annotations", str(data / "annotations"),
                    "--split", split, "--out", str(tmp_path / "shards" / split), "--shard-size", "8"]) == 0, \
            capsys.readouterr().err
    code, err = train(capsys, *run_overrides(tmp_path / "run", llp_data(data), "data.limit_train=0"))
    assert code == 0, err[-3000:]
    code, err = train(capsys, *run_overrides(tmp_path / "run_shards", tmp_path / "shards"))
    assert code == 0, err[-3000:]
