"""The LLP feature reader: shapes, pooling, stacking, and one-line DataErrors naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distributed.common.errors import ConfigError, DataError
from distributed.data.features import FEATURE_KEYS, FeatureSpec, feature_path, load_features, read_video_features
from distributed.data.llp import FEATURE_DIRS

SPEC = FeatureSpec()
IDS = ["-abcDEF_123", "BjCEufrlXm4", "x_y-z012345"]


def _write_video(root: Path, vid: str, spec: FeatureSpec = SPEC, seed: int = 0, dtype=np.float32) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {key: rng.standard_normal(shape).astype(dtype) for key, shape in spec.file_shapes().items()}
    for key, arr in arrays.items():
        path = feature_path(root, vid, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr)
    return arrays


@pytest.fixture()
def feature_dir(tmp_path: Path) -> tuple[Path, dict]:
    arrays = {vid: _write_video(tmp_path, vid, seed=i) for i, vid in enumerate(IDS)}
    return tmp_path, arrays


def test_spec_defaults_are_llp():
    assert SPEC.file_shapes() == {"audio": (10, 128), "visual_2d": (80, 2048), "visual_3d": (10, 512)}
    assert SPEC.output_shapes(pool_frames=True)["visual_2d"] == (10, 2048)
    assert FeatureSpec.from_dict(SPEC.to_dict()) == SPEC
    assert set(FEATURE_KEYS) == set(FEATURE_DIRS)


@pytest.mark.parametrize("field,value", [("num_segments", 0), ("audio_dim", -3), ("frames_per_segment", True),
                                         ("visual_2d_dim", 2.5)])
def test_spec_validate_rejects(field, value):
    with pytest.raises(ConfigError, match=field):
        FeatureSpec(**{field: value}).validate()


def test_spec_from_dict_rejects_unknown_field():
    with pytest.raises(ConfigError, match="bogus"):
        FeatureSpec.from_dict({"bogus": 1})


def test_read_pooled_and_frames(feature_dir):
    root, arrays = feature_dir
    vid = IDS[0]
    pooled = read_video_features(root, vid)
    assert {k: v.shape for k, v in pooled.items()} == {"audio": (10, 128), "visual_2d": (10, 2048),
                                                       "visual_3d": (10, 512)}
    assert all(v.dtype == np.float32 for v in pooled.values())
    np.testing.assert_array_equal(pooled["audio"], arrays[vid]["audio"])
    np.testing.assert_array_equal(pooled["visual_3d"], arrays[vid]["visual_3d"])
    expected = arrays[vid]["visual_2d"].reshape(10, 8, 2048).mean(axis=1)
    np.testing.assert_allclose(pooled["visual_2d"], expected, rtol=1e-6, atol=1e-6)
    frames = read_video_features(root, vid, pool_frames=False)
    assert frames["visual_2d"].shape == (80, 2048)
    np.testing.assert_array_equal(frames["visual_2d"], arrays[vid]["visual_2d"])


def test_pooling_is_exact_for_a_linear_map(feature_dir):
    root, _ = feature_dir
    w = np.random.default_rng(1).standard_normal((2048, 16)).astype(np.float64)
    frames = read_video_features(root, IDS[1], pool_frames=False)["visual_2d"].astype(np.float64)
    pooled = read_video_features(root, IDS[1])["visual_2d"].astype(np.float64)
    np.testing.assert_allclose(pooled @ w, (frames @ w).reshape(10, 8, 16).mean(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 3, None])
def test_load_features_stacks_in_order(feature_dir, threads):
    root, arrays = feature_dir
    order = [IDS[2], IDS[0], IDS[1]]
    out = load_features(root, order, num_threads=threads)
    assert out["audio"].shape == (3, 10, 128) and out["visual_2d"].shape == (3, 10, 2048)
    assert out["visual_3d"].shape == (3, 10, 512)
    for i, vid in enumerate(order):
        single = read_video_features(root, vid)
        for key in FEATURE_KEYS:
            np.testing.assert_array_equal(out[key][i], single[key])
    frames = load_features(root, order, pool_frames=False, num_threads=threads)
    assert frames["visual_2d"].shape == (3, 80, 2048)
    np.testing.assert_array_equal(frames["visual_2d"][1], arrays[IDS[0]]["visual_2d"])


def test_load_features_empty_list(feature_dir):
    root, _ = feature_dir
    out = load_features(root, [])
    assert out["audio"].shape == (0, 10, 128)


def test_other_float_dtypes_are_cast(tmp_path):
    arrays = _write_video(tmp_path, "abcdefghijk", dtype=np.float64)
    out = read_video_features(tmp_path, "abcdefghijk")
    assert out["audio"].dtype == np.float32
    np.testing.assert_allclose(out["audio"], arrays["audio"], rtol=1e-6)


def test_frames_per_segment_one_reads_pooled_files(tmp_path):
    spec = FeatureSpec(frames_per_segment=1)
    arrays = _write_video(tmp_path, "abcdefghijk", spec=spec)
    out = read_video_features(tmp_path, "abcdefghijk", spec)
    np.testing.assert_array_equal(out["visual_2d"], arrays["visual_2d"])


def _one_line_error(excinfo, path: Path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_missing_file(feature_dir):
    root, _ = feature_dir
    path = feature_path(root, IDS[1], "visual_3d")
    path.unlink()
    with pytest.raises(DataError) as exc:
        read_video_features(root, IDS[1])
    assert "not found" in _one_line_error(exc, path)
    with pytest.raises(DataError) as exc:
        load_features(root, IDS, num_threads=2)
    _one_line_error(exc, path)


def test_wrong_shape(feature_dir):
    root, _ = feature_dir
    path = feature_path(root, IDS[0], "audio")
    np.save(path, np.zeros((9, 128), np.float32))
    with pytest.raises(DataError) as exc:
        read_video_features(root, IDS[0])
    assert _one_line_error(exc, path) == f"{path}: shape (9, 128), expected (10, 128)"


def test_wrong_frame_count(feature_dir):
    root, _ = feature_dir
    path = feature_path(root, IDS[0], "visual_2d")
    np.save(path, np.zeros((10, 2048), np.float32))       # pooled file, spec expects 8 frames
    with pytest.raises(DataError) as exc:
        load_features(root, IDS)
    assert "expected (80, 2048)" in _one_line_error(exc, path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(feature_dir, bad):
    root, arrays = feature_dir
    path = feature_path(root, IDS[2], "visual_2d")
    arr = arrays[IDS[2]]["visual_2d"].copy()
    arr[5, 7] = bad
    np.save(path, arr)
    with pytest.raises(DataError) as exc:
        read_video_features(root, IDS[2])
    assert "NaN or inf" in _one_line_error(exc, path)


def test_float64_values_beyond_float32_are_refused_after_the_cast(feature_dir):
    root, arrays = feature_dir
    path = feature_path(root, IDS[0], "visual_3d")
    arr = arrays[IDS[0]]["visual_3d"].astype(np.float64)
    arr[3, 2] = 1e300                                      # finite in float64, inf in float32
    np.save(path, arr)
    for read in (lambda: read_video_features(root, IDS[0]), lambda: load_features(root, IDS, num_threads=2)):
        with pytest.raises(DataError) as exc:
            read()
        msg = _one_line_error(exc, path)
        assert "1 non-finite value(s)" in msg and "float32" in msg


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_, np.complex64])
def test_non_float_dtype(feature_dir, dtype):
    root, _ = feature_dir
    path = feature_path(root, IDS[1], "audio")
    np.save(path, np.zeros((10, 128), dtype))
    with pytest.raises(DataError) as exc:
        read_video_features(root, IDS[1])
    assert "expected a float array" in _one_line_error(exc, path)


def test_pickled_object_array_is_refused(feature_dir):
    root, _ = feature_dir
    path = feature_path(root, IDS[1], "audio")
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as exc:
        read_video_features(root, IDS[1])
    assert "unreadable" in _one_line_error(exc, path)


def test_garbage_file(feature_dir):
    root, _ = feature_dir
    path = feature_path(root, IDS[1], "visual_3d")
    path.write_bytes(b"not a numpy file\n")
    with pytest.raises(DataError) as exc:
        read_video_features(root, IDS[1])
    _one_line_error(exc, path)


def test_missing_folders(tmp_path):
    with pytest.raises(DataError) as exc:
        load_features(tmp_path / "nope", IDS)
    _one_line_error(exc, tmp_path / "nope")
    _write_video(tmp_path, IDS[0])
    (tmp_path / "res152" / f"{IDS[0]}.npy").unlink()
    (tmp_path / "res152").rmdir()
    with pytest.raises(DataError) as exc:
        load_features(tmp_path, IDS[:1])
    _one_line_error(exc, tmp_path / "res152")


def test_bad_thread_count(feature_dir):
    root, _ = feature_dir
    with pytest.raises(ConfigError):
        load_features(root, IDS, num_threads=0)
