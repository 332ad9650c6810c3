"""cwp_export.source: finding a checkpoint and indexing its safetensors weights.

Covers sharded checkpoints (``model.safetensors.index.json``), missing and inconsistent shards,
header validation (every file we accept must be one the safetensors loader can read; everything
else is an :class:`InputError`, never another exception), pickle refusal and hub-cache names.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwp_export.errors import InputError
from cwp_export.source import open_source, read_safetensors_header
from cwp_export.testing import make_tiny_model

NAME = "tiny"


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("single") / NAME)


@pytest.fixture(scope="module")
def sharded(single: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint re-saved in ~100 kB shards, in a folder of the same name."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("sharded") / NAME
    AutoModelForCausalLM.from_pretrained(single).save_pretrained(folder, max_shard_size="100KB")
    for f in single.iterdir():
        if not f.name.startswith("model") and not (folder / f.name).exists():
            shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture
def sharded_copy(sharded: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sharded, tmp_path / NAME))


def _weight_map(folder: Path) -> dict[str, str]:
    return json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]


# -- sharded checkpoints ------------------------------------------------------------------------

def test_sharded_checkpoint_indexes_every_tensor(single: Path, sharded: Path) -> None:
    import torch
    from safetensors import safe_open

    weight_map = _weight_map(sharded)
    shards = sorted(set(weight_map.values()))
    assert len(shards) > 1, "max_shard_size did not shard the tiny model"
    assert not (sharded / "model.safetensors").exists()

    src = open_source(sharded)
    one = open_source(single)
    assert set(src.tensors) == set(weight_map) == set(one.tensors)
    for name, ref in src.tensors.items():
        assert ref.file == sharded / weight_map[name]
        assert (ref.dtype, ref.shape) == (one.tensors[name].dtype, one.tensors[name].shape)
    # every shard's own header agrees with what was indexed
    for shard in shards:
        with safe_open(str(sharded / shard), framework="pt") as f:
            assert set(f.keys()) == {n for n, s in weight_map.items() if s == shard}
    for name in src.tensors:
        assert torch.equal(src.load(name), one.load(name)), name


def test_sharded_export_is_identical_to_single_file(single: Path, sharded: Path,
                                                    tmp_path: Path) -> None:
    from cwp_export.api import export

    a = export(single, outdir=tmp_path / "a", progress=False, argv=[])
    b = export(sharded, outdir=tmp_path / "b", progress=False, argv=[])
    assert a.model_path.name == b.model_path.name == f"{NAME}-F16.gguf"
    assert a.model_path.read_bytes() == b.model_path.read_bytes()


def test_missing_shard_is_reported(sharded_copy: Path) -> None:
    shard = sorted(set(_weight_map(sharded_copy).values()))[-1]
    (sharded_copy / shard).unlink()
    with pytest.raises(InputError, match=rf"missing shard\(s\) {shard}"):
        open_source(sharded_copy)


@pytest.mark.parametrize("index", ["{not json", "[]", '{"weight_map": [1]}',
                                   '{"weight_map": {"a": 5}}', '{"weight_map": {"a": null}}',
                                   '{"other": {}}'])
def test_corrupt_index_is_reported(index: str, sharded_copy: Path) -> None:
    (sharded_copy / "model.safetensors.index.json").write_text(index)
    with pytest.raises(InputError, match="model.safetensors.index.json is corrupt"):
        open_source(sharded_copy)


def test_tensor_in_two_files_is_reported(single: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(single, tmp_path / NAME))
    shutil.copy(folder / "model.safetensors", folder / "model-copy.safetensors")
    with pytest.raises(InputError, match="appears in both"):
        open_source(folder)


def test_unlisted_safetensors_next_to_an_index_are_ignored(sharded_copy: Path) -> None:
    (sharded_copy / "stray.safetensors").write_bytes(b"not even a safetensors file")
    assert set(open_source(sharded_copy).tensors) == set(_weight_map(sharded_copy))


# -- folders and names --------------------------------------------------------------------------

def test_model_given_as_a_file(single: Path) -> None:
    with pytest.raises(InputError, match="is a file"):
        open_source(single / "config.json")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        open_source(tmp_path / "nope")


@pytest.mark.parametrize("text,match", [("{oops", "not valid JSON"), ("[1, 2]", "JSON object")])
def test_bad_config_json(text: str, match: str, single: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(single, tmp_path / NAME))
    (folder / "config.json").write_text(text)
    with pytest.raises(InputError, match=match):
        open_source(folder)


@pytest.mark.parametrize("names", [["pytorch_model.bin"], ["model.pt", "consolidated.pth"]])
def test_pickle_only_folder_is_refused(names: list[str], single: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(single, tmp_path / NAME))
    (folder / "model.safetensors").unlink()
    for n in names:
        (folder / n).write_bytes(b"\x80\x04K\x01.")  # a valid pickle; must never be opened
    with pytest.raises(InputError, match="only pickle weights") as e:
        open_source(folder)
    for n in names:
        assert n in str(e.value)


def test_hub_cache_snapshot_takes_the_repo_name(single: Path, tmp_path: Path) -> None:
    snap = tmp_path / "hub" / "models--SomeOrg--Some-Model-1B" / "snapshots" / "0123abcd"
    shutil.copytree(single, snap)
    assert open_source(snap).name == "Some-Model-1B"
    assert open_source(single).name == NAME


# -- safetensors headers ------------------------------------------------------------------------

def _file(path: Path, header, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _t(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_valid_header(tmp_path: Path) -> None:
    p = _file(tmp_path / "x.safetensors",
              {"__metadata__": {"format": "pt"}, "a": _t(), "b": _t("F16", (2, 3), (8, 20))},
              bytes(20))
    refs = read_safetensors_header(p)
    assert set(refs) == {"a", "b"}
    assert (refs["b"].dtype, refs["b"].shape, refs["b"].start, refs["b"].end) == ("F16", (2, 3), 8, 20)
    assert refs["b"].numel == 6 and refs["b"].nbytes == 12 and refs["a"].file == p


@pytest.mark.parametrize("content,match", [
    (b"", "shorter than 8 bytes"),
    (b"\x01\x02", "shorter than 8 bytes"),
    (struct.pack("<Q", 1000) + b"{}", "truncated or corrupt"),
    (struct.pack("<Q", 2**62) + b"{}", "truncated or corrupt"),
    (struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc", "corrupt safetensors header"),
    (struct.pack("<Q", 4) + b"{abc", "corrupt safetensors header"),
    (struct.pack("<Q", 6) + b"[1, 2]", "corrupt safetensors header"),
    (struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, "corrupt safetensors header"),
], ids=["empty", "3-bytes", "length-past-end", "huge-length", "not-utf8", "not-json", "json-list",
        "deeply-nested"])
def test_unreadable_headers(content: bytes, match: str, tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        read_safetensors_header(p)


@pytest.mark.parametrize("header,data,match", [
    ({"a": 3}, b"", "corrupt header entry"),
    ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), "corrupt header entry"),
    ({"a": _t(shape=("x",))}, bytes(8), "corrupt header entry"),
    ({"a": _t(offsets=(0,))}, bytes(8), "corrupt header entry"),
    ({"a": _t(dtype="F8_E4M3", offsets=(0, 2))}, bytes(2), "unsupported dtype"),
    ({"a": _t(dtype=["F32"])}, bytes(8), "unsupported dtype"),
    ({"a": _t(offsets=(0, 4))}, bytes(4), "does not match its shape"),
    ({"a": _t(offsets=(8, 0))}, bytes(8), "does not match its shape"),
    ({"a": _t(offsets=(8, 16))}, bytes(12), "is truncated"),
    ({"a": _t()}, bytes(12), "not a valid safetensors"),                 # trailing bytes
    ({"a": _t(offsets=(4, 12))}, bytes(12), "not a valid safetensors"),  # gap before a
    ({"a": _t(), "b": _t()}, bytes(8), "not a valid safetensors"),       # overlap
    ({"a": _t(shape=(-1, -2))}, bytes(8), "not a valid safetensors"),    # negative dims
    ({"__metadata__": 3, "a": _t()}, bytes(8), "not a valid safetensors"),
], ids=["entry-not-object", "no-offsets", "shape-not-ints", "one-offset", "dtype-unsupported",
        "dtype-list", "range-too-short", "range-reversed", "past-end", "trailing-bytes", "gap",
        "overlap", "negative-dims", "metadata-not-object"])
def test_inconsistent_headers(header: dict, data: bytes, match: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=match):
        read_safetensors_header(_file(tmp_path / "x.safetensors", header, data))


def test_truncated_real_file(single: Path, tmp_path: Path) -> None:
    data = (single / "model.safetensors").read_bytes()
    p = tmp_path / "model.safetensors"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="is truncated"):
        read_safetensors_header(p)


def _accepts_or_refuses(content: bytes) -> None:
    """The property: a header is refused with InputError, or every tensor it lists loads with the
    stated shape through the safetensors library (what convert does later)."""
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.safetensors"
        p.write_bytes(content)
        try:
            refs = read_safetensors_header(p)
        except InputError:
            return
        with safe_open(str(p), framework="pt") as f:
            for name, ref in refs.items():
                assert tuple(f.get_tensor(name).shape) == ref.shape


_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 70) | st.floats() | st.text(max_size=4),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                     max_leaves=8)
_entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "BOOL", "F64", "Q4"]) | _json,
    "shape": st.lists(st.integers(-2, 4), max_size=3) | _json,
    "data_offsets": st.lists(st.integers(-4, 40), min_size=2, max_size=2) | _json,
})
_header = st.dictionaries(st.text(min_size=1, max_size=3), _entry | _json, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=_header, data=st.binary(max_size=48))
def test_any_structured_header_is_accepted_only_if_loadable(header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    _accepts_or_refuses(struct.pack("<Q", len(raw)) + raw + data)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_damaged_real_header_is_accepted_only_if_loadable(data) -> None:
    good = {"a": _t("F32", (2, 2), (0, 16)), "b": _t("F16", (3,), (16, 22)),
            "__metadata__": {"format": "pt"}}
    raw = json.dumps(good).encode()
    content = bytearray(struct.pack("<Q", len(raw)) + raw + bytes(range(22)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(content) - 1))
        content[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(content)))
    _accepts_or_refuses(bytes(content[:cut]) if data.draw(st.booleans()) else bytes(content))
