"""`ppl-avvp evaluate`: JSON equals the oracle, rows match by filename or id in any order, bad files fail cleanly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distributed import cli
from distributed import evaluate as evaluate_mod
from distributed.data.llp import DENSE_AUDIO_FILE, DENSE_VISUAL_FILE, LLP_CLASSES, SPLIT_FILES, load_split
from model.metrics import SCORE_KEYS
from oracle_metrics import oracle_llp_scores

REPO = Path(__file__).resolve().parents[1]
ENV = "PPL_AVVP_LLP_DIR"
T, C = 10, len(LLP_CLASSES)
FILENAMES = ["-abc_def-gh_10_20", "AAAAAAAAAAA_0_10", "B-B_BBBBBBB_5_15", "CCCCCCCCCCC_30_40",
             "DDDDDDDDDDD_120_130", "_EEEEEEEEEE_1_11", "FFFFFFFFFFF_0_10", "GGGGGGGGGGG_70_80"]


def _runs(seq):
    edges = np.diff(np.concatenate([[0], seq, [0]]))
    return zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0])


def _write_dense(path: Path, filenames, truth, extra=()):
    lines = ["filename\tonset\toffset\tevent_labels"]
    for name, video in zip(filenames, truth):
        for c in range(video.shape[1]):
            lines += [f"{name}\t{s}\t{e}\t{LLP_CLASSES[c]}" for s, e in _runs(video[:, c])]
    path.write_text("\n".join(lines + list(extra)) + "\n")


def _truth(rng, n):
    classes = rng.uniform(size=(n, 1, C)) < 0.1
    classes[np.arange(n), 0, rng.integers(0, C, n)] = True                 # every video has a class
    truth_a = (classes & (rng.uniform(size=(n, T, C)) < 0.7)).astype(np.uint8)
    truth_v = (classes & (rng.uniform(size=(n, T, C)) < 0.6)).astype(np.uint8)
    truth_a[1] = 0                                                          # a video with no audio truth
    return truth_a, truth_v


def _predictions(rng, truth_a, truth_v):
    """Probabilities that agree with the truth most of the time, so every score is non-trivial."""
    truth = np.stack([truth_a, truth_v], axis=2).astype(np.float64)          # (N, T, 2, C)
    frame = np.clip(0.4 * truth + 0.6 * rng.uniform(size=truth.shape), 0.0, 1.0)
    glob = np.clip(0.5 * truth.max(axis=(1, 2)) + 0.55 * rng.uniform(size=truth_a.shape[::2]), 0.0, 1.0)
    return frame, glob


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An 8-video val split in LLP layout (plus quirk rows) and predictions for it."""
    folder = tmp_path_factory.mktemp("llp")
    rng = np.random.default_rng(3)
    truth_a, truth_v = _truth(rng, len(FILENAMES))
    labels = (truth_a | truth_v).any(axis=1)
    (folder / SPLIT_FILES["val"]).write_text("filename\tevent_labels\n" + "".join(
        f"{f}\t{','.join(LLP_CLASSES[c] for c in np.nonzero(l)[0])}\n" for f, l in zip(FILENAMES, labels)))
    (folder / SPLIT_FILES["test"]).write_text("filename\tevent_labels\nZZZZZZZZZZZ_0_10\tDog\n")
    _write_dense(folder / DENSE_AUDIO_FILE, FILENAMES, truth_a,
                 extra=["ZZZZZZZZZZZ_0_10\t0\t10\tDog", "AAAAAAAAAAA_0_100\t0\t10\tCar", f"{FILENAMES[0]}\t4\t4\tCat"])
    _write_dense(folder / DENSE_VISUAL_FILE, FILENAMES, truth_v)
    frame, glob = _predictions(rng, truth_a, truth_v)
    return {"dir": folder, "frame": frame, "glob": glob,
            "oracle": oracle_llp_scores(frame, glob, truth_a, truth_v)}


def _write_npz(path: Path, ids, frame, glob, split_modalities=False, **override) -> Path:
    fields = {"video_ids": np.asarray(ids), "global_prob": glob}
    if split_modalities:
        fields.update(frame_prob_a=frame[:, :, 0], frame_prob_v=frame[:, :, 1])
    else:
        fields["frame_prob"] = frame
    fields.update(override)
    np.savez(path, **{k: v for k, v in fields.items() if v is not None})
    return path


def _evaluate(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(["evaluate", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _scores_json(path: Path) -> dict:
    scores = json.loads(path.read_text())
    assert list(scores) == list(SCORE_KEYS)
    return scores


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------

def test_cli_json_equals_oracle_and_prints_table(tiny, tmp_path, capsys):
    npz = _write_npz(tmp_path / "preds.npz", FILENAMES, tiny["frame"], tiny["glob"])
    rc, out, err = _evaluate(capsys, "--predictions", npz, "--annotations", tiny["dir"], "--split", "val",
                             "--json", tmp_path / "out" / "scores.json")
    assert rc == 0, err
    assert _scores_json(tmp_path / "out" / "scores.json") == tiny["oracle"]
    assert 0 < tiny["oracle"]["evt_av"] < 100                      # a non-trivial case
    assert "Segment" in out and "Event@AV" in out and f"{tiny['oracle']['seg_a']:.1f}" in out
    assert os.listdir(tmp_path / "out") == ["scores.json"]          # no temp file left behind


def test_shuffled_rows_ids_and_split_modalities_give_identical_numbers(tiny, tmp_path, capsys):
    order = np.random.default_rng(0).permutation(len(FILENAMES))
    ids = [FILENAMES[i][:11] for i in order]
    variants = {"shuffled": dict(ids=[FILENAMES[i] for i in order]),
                "ids": dict(ids=ids),
                "split_modalities": dict(ids=ids, split_modalities=True)}
    for name, kw in variants.items():
        npz = _write_npz(tmp_path / f"{name}.npz", kw["ids"], tiny["frame"][order], tiny["glob"][order],
                         kw.get("split_modalities", False))
        rc, _, err = _evaluate(capsys, "--predictions", npz, "--annotations", tiny["dir"], "--split", "val",
                               "--json", tmp_path / f"{name}.json")
        assert rc == 0, err
        assert _scores_json(tmp_path / f"{name}.json") == tiny["oracle"], name


def test_python_m_evaluate_runs_as_a_module(tiny, tmp_path):
    npz = _write_npz(tmp_path / "preds.npz", FILENAMES, tiny["frame"], tiny["glob"])
    proc = subprocess.run([sys.executable, "-m", "distributed.evaluate", "--predictions", str(npz),
                           "--annotations", str(tiny["dir"]), "--split", "val", "--json", str(tmp_path / "s.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _scores_json(tmp_path / "s.json") == tiny["oracle"]
    assert "Audio-Visual" in proc.stdout


def test_checkpoint_route_scores_what_predict_split_returns(tiny, tmp_path, capsys, monkeypatch):
    calls = []

    def fake_predict(args):
        calls.append((args.checkpoint, args.features, args.annotations, args.split))
        return [f[:11] for f in FILENAMES][::-1], tiny["frame"][::-1], tiny["glob"][::-1]

    monkeypatch.setattr(evaluate_mod, "_predict_from_checkpoint", fake_predict)
    rc, _, err = _evaluate(capsys, "--checkpoint", "ckpt", "--features", "feats", "--annotations", tiny["dir"],
                           "--split", "val", "--json", tmp_path / "s.json")
    assert rc == 0, err
    assert calls == [("ckpt", "feats", str(tiny["dir"]), "val")]
    assert _scores_json(tmp_path / "s.json") == tiny["oracle"]


def test_real_val_split_json_equals_oracle(tmp_path, capsys):
    if not os.environ.get(ENV):
        pytest.skip(f"{ENV} is not set: point it at the real LLP annotation folder to run this test")
    split = load_split(os.environ[ENV], "val")
    frame, glob = _predictions(np.random.default_rng(11), split.dense_audio, split.dense_visual)
    order = np.random.default_rng(12).permutation(len(split))
    npz = _write_npz(tmp_path / "val.npz", [split.filenames[i] for i in order], frame[order], glob[order])
    rc, out, err = _evaluate(capsys, "--predictions", npz, "--annotations", os.environ[ENV], "--split", "val",
                             "--json", tmp_path / "val.json")
    assert rc == 0, err
    assert _scores_json(tmp_path / "val.json") == oracle_llp_scores(frame, glob, split.dense_audio, split.dense_visual)
    assert "649 videos" in out


# ---------------------------------------------------------------------------------------------
# bad input: exit code 2, one stderr line naming the problem, no JSON
# ---------------------------------------------------------------------------------------------

def _bad_cases(frame, glob):
    n = len(FILENAMES)
    nan_frame = frame.copy()
    nan_frame[2, 3, 1, 4] = np.nan
    return {
        "missing_id": (dict(ids=FILENAMES[:-1], frame=frame[:-1], glob=glob[:-1]), ["video_ids", "missing", FILENAMES[-1]]),
        "unknown_id": (dict(ids=FILENAMES[:-1] + ["XXXXXXXXXXX_0_10"]), ["video_ids", "not in the val split", "XXXXXXXXXXX_0_10"]),
        "duplicate_id": (dict(ids=FILENAMES[:-1] + [FILENAMES[0][:11]]), ["video_ids", "appears 2 times"]),
        "wrong_shape": (dict(frame=frame[:, :9]), ["frame_prob", "expected shape (8, 10, 2, 25)"]),
        "wrong_global_shape": (dict(glob=glob[:, :24]), ["global_prob", "expected shape (8, 25)"]),
        "nan": (dict(frame=nan_frame), ["frame_prob", "NaN"]),
        "out_of_range": (dict(glob=glob * 2 - 0.5), ["global_prob", "[0, 1]"]),
        "no_global_prob": (dict(override=dict(global_prob=None)), ["global_prob", "missing"]),
        "object_ids": (dict(override=dict(video_ids=np.array(FILENAMES, dtype=object))), ["video_ids"]),
        "numeric_ids": (dict(override=dict(video_ids=np.arange(n))), ["video_ids", "strings"]),
    }


@pytest.mark.parametrize("case", ["missing_id", "unknown_id", "duplicate_id", "wrong_shape", "wrong_global_shape",
                                  "nan", "out_of_range", "no_global_prob", "object_ids", "numeric_ids"])
def test_bad_predictions_exit_2_with_one_line_naming_file_and_field(tiny, tmp_path, capsys, case):
    kw, expect = _bad_cases(tiny["frame"], tiny["glob"])[case]
    npz = _write_npz(tmp_path / f"{case}.npz", kw.get("ids", FILENAMES), kw.get("frame", tiny["frame"]),
                     kw.get("glob", tiny["glob"]), **kw.get("override", {}))
    rc, out, err = _evaluate(capsys, "--predictions", npz, "--annotations", tiny["dir"], "--split", "val",
                             "--json", tmp_path / "scores.json")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for part in [str(npz)] + expect:
        assert part in lines[0], (part, lines[0])
    assert not (tmp_path / "scores.json").exists()
    assert out == ""


def test_missing_predictions_file_and_bad_threshold_exit_2(tiny, tmp_path, capsys):
    rc, _, err = _evaluate(capsys, "--predictions", tmp_path / "nope.npz", "--annotations", tiny["dir"], "--split", "val")
    assert rc == 2 and "nope.npz" in err and len(err.strip().splitlines()) == 1
    npz = _write_npz(tmp_path / "p.npz", FILENAMES, tiny["frame"], tiny["glob"])
    rc, _, err = _evaluate(capsys, "--predictions", npz, "--annotations", tiny["dir"], "--split", "val",
                           "--threshold", "1.5")
    assert rc == 2 and "--threshold" in err
    rc, _, err = _evaluate(capsys, "--checkpoint", "ckpt", "--annotations", tiny["dir"], "--split", "val")
    assert rc == 2 and "--features" in err


def test_predictions_and_checkpoint_are_mutually_exclusive_and_one_is_required(tiny, capsys):
    for argv in (["--annotations", str(tiny["dir"])],
                 ["--predictions", "p.npz", "--checkpoint", "c", "--annotations", str(tiny["dir"])]):
        assert cli.main(["evaluate", *argv]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_format_table_rows_columns_and_one_decimal():
    scores = dict(zip(SCORE_KEYS, [60.06, 52.94, 48.9, 54.0, 55.4, 51.3, 48.9, 43.0, 47.7, 48.04]))
    lines = evaluate_mod.format_table(scores, title="LLP test").splitlines()
    assert lines[0] == "LLP test"
    assert lines[1].split() == ["Audio", "Visual", "Audio-Visual", "Type@AV", "Event@AV"]
    assert lines[2].split() == ["Segment", "60.1", "52.9", "48.9", "54.0", "55.4"]
    assert lines[3].split() == ["Event", "51.3", "48.9", "43.0", "47.7", "48.0"]
    assert len(evaluate_mod.format_table(scores).splitlines()) == 3
