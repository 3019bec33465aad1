"""Property tests (hypothesis) of the readers a hostile user feeds: the config loader (random YAML trees and
texts, random overrides) ends in a validated config or a ConfigError, never another exception; the .npy
feature reader and the shard tar reader end in an array or a DataError for any bytes. Bounded: a few
hundred examples, well under 30 s together."""
from __future__ import annotations

import dataclasses
import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from distributed.common.config import RunConfig, config_from_dict, load_config
from distributed.common.errors import ConfigError, DataError
from hostile import npy_bytes

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,   # reproducible, writes nothing
                suppress_health_check=[HealthCheck.too_slow])


def _section_fields() -> dict[str, list[str]]:
    """Config field names by section ("" = top level)."""
    out: dict[str, list[str]] = {"": []}
    for f in dataclasses.fields(RunConfig):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            out[f.name] = [g.name for g in dataclasses.fields(f.default_factory)]
        else:
            out[""].append(f.name)
    return out


SECTIONS = _section_fields()
DOTTED = [f"{s}.{k}" if s else k for s, keys in SECTIONS.items() for k in keys]
NAMES = sorted({k for keys in SECTIONS.values() for k in keys}) + ["tua", "", "1", "a.b", "data\n"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["3e-4", "1e-3", ".inf", "-.inf", ".nan", "none", "null", "2024-13-01",
                                           "deepspeed", "torch", "bf16", "ppl_soft", "1_000", "0x10", "1e999"]),
    st.dates(),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(NAMES), inner, max_size=3), max_leaves=8)


def _valid_base() -> dict:
    return RunConfig(data=dataclasses.replace(RunConfig().data, shards="shards")).to_dict()


def _set(tree: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _accepts_or_config_error(build):
    try:
        cfg = build()
    except ConfigError as err:
        assert "\n" not in str(err), f"error message spans lines: {err!r}"
        return None
    assert isinstance(cfg, RunConfig)
    for key, value in cfg.flatten().items():
        assert not (isinstance(value, float) and not math.isfinite(value)), f"{key} = {value} passed validation"
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()     # the resolved config reloads as itself
    return cfg


@FUZZ
@given(st.dictionaries(st.sampled_from(DOTTED), values, max_size=5))
def test_valid_config_with_random_values_is_accepted_or_one_config_error(changes):
    tree = _valid_base()
    for dotted, value in changes.items():
        _set(tree, dotted, value)
    _accepts_or_config_error(lambda: config_from_dict(tree))


@FUZZ
@given(st.dictionaries(st.sampled_from(NAMES), values, max_size=6))
def test_random_config_tree_is_accepted_or_one_config_error(tree):
    _accepts_or_config_error(lambda: config_from_dict(tree))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(DOTTED + ["ppl", "ppl.tua", "", "a..b"]),
                          st.one_of(st.text(max_size=16), st.sampled_from(["[1, [2", "{a: 1}", "!!python/name:os",
                                                                           "&a [*a]", "2024-13-01", "1e-3"]))),
                max_size=4))
def test_random_overrides_are_accepted_or_one_config_error(items):
    overrides = ["data.shards=shards", *(f"{k}={v}" for k, v in items)]
    _accepts_or_config_error(lambda: load_config("ppl", overrides))


yaml_texts = st.one_of(
    st.text(max_size=200),
    st.dictionaries(st.sampled_from(NAMES), values, max_size=5).map(lambda t: yaml.safe_dump(t, default_flow_style=True)),
    st.sampled_from(["optim: {lr: 1e-3}\ndata: {shards: s}\n", "a: &x [*x]\n", "optim:\n  lr: 2024-13-01\n",
                     "!!python/object/apply:os.system ['true']\n", "[[[[[[[[[[", "optim: {lr: .inf}\n"]),
)


@FUZZ
@given(st.one_of(yaml_texts.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=200)))
def test_random_config_file_is_accepted_or_one_config_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_bytes(content)
        _accepts_or_config_error(lambda: load_config(path, ["data.shards=shards"]))


# ---------------------------------------------------------------------------------------------
# .npy and tar readers
# ---------------------------------------------------------------------------------------------

def _real_npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


npy_files = st.one_of(
    st.binary(max_size=300),
    st.builds(npy_bytes, st.sampled_from(["<f4", "<f8", "<f2", "|u1", "<i8", "|O", "<U3", "<c8", "bogus"]),
              st.lists(st.integers(-2, 10**12), max_size=3).map(tuple), st.binary(max_size=300)),
    st.builds(lambda raw, cut: raw[:cut], st.just(_real_npy(np.ones((10, 128), np.float32))), st.integers(0, 6000)),
)


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_features")
    for sub, shape in (("vggish", (10, 128)), ("res152", (80, 2048)), ("r2plus1d_18", (10, 512))):
        (root / sub).mkdir()
        np.save(root / sub / "AAAAAAAAAAA.npy", np.zeros(shape, np.float32))
    return root


@FUZZ
@given(content=npy_files)
def test_feature_reader_gives_an_array_or_a_data_error_for_any_bytes(feature_dir, content):
    from distributed.data.features import FeatureSpec, read_video_features

    (feature_dir / "vggish" / "AAAAAAAAAAA.npy").write_bytes(content)
    try:
        arrays = read_video_features(feature_dir, "AAAAAAAAAAA", FeatureSpec())
    except DataError as err:
        assert "AAAAAAAAAAA.npy" in str(err) and "\n" not in str(err)
        return
    assert arrays["audio"].shape == (10, 128) and np.isfinite(arrays["audio"]).all()


@pytest.fixture(scope="module")
def genuine_shard(tiny_shards) -> tuple[dict, dict[str, bytes]]:
    """The val manifest and the raw fields of one genuine sample of its first shard."""
    import tarfile

    manifest = json.loads((tiny_shards / "val" / "manifest.json").read_text())
    with tarfile.open(tiny_shards / "val" / manifest["shards"][0]["name"]) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        key = members[0].name.split(".", 1)[0]
        fields = {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in members if m.name.startswith(key + ".")}
    return manifest, fields


def _tar_with(fields: dict[str, bytes], key: str = "AAAAAAAAAAA") -> bytes:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in fields.items():
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _truncated_and_flipped(raw: bytes, cut: int, flip: int) -> bytes:
    data = bytearray(raw[:cut])
    if flip < len(data):
        data[flip] ^= 0xFF
    return bytes(data)


@FUZZ
@given(data=st.data())
def test_shard_reader_gives_samples_or_a_data_error_for_any_bytes(genuine_shard, data):
    from distributed.data.shards.samples import decode_sample, iter_tar_samples

    manifest, fields = genuine_shard
    kind = data.draw(st.sampled_from(["random", "damaged tar", "one bad field"]))
    if kind == "random":
        content = data.draw(st.binary(max_size=2000))
    elif kind == "damaged tar":
        raw = _tar_with(fields)
        content = _truncated_and_flipped(raw, data.draw(st.integers(0, len(raw))), data.draw(st.integers(0, len(raw))))
    else:
        name = data.draw(st.sampled_from(sorted(fields)))
        content = _tar_with({**fields, name: data.draw(st.one_of(npy_files, st.binary(max_size=200)))})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "val-000000.tar"
        path.write_bytes(content)
        try:
            for position, raw_sample in enumerate(iter_tar_samples(path)):
                decode_sample(raw_sample, manifest, path, position)
        except DataError as err:
            assert str(path) in str(err) and "\n" not in str(err)
