"""The GGUF writer, read back with gguf-py's GGUFReader (never trusting the writer)."""

import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType as V

from cwp_export.formats.gguf_writer import GGUFWriter, tensor_nbytes


def _field(reader, key):
    f = reader.fields[key]
    return f.contents()


def test_metadata_round_trip(tmp_path):
    w = GGUFWriter()
    w.add_string("general.architecture", "llama")
    w.add_u32("a.u32", 7)
    w.add_i32("a.i32", -7)
    w.add_f32("a.f32", 0.25)
    w.add_bool("a.bool", True)
    w.add("a.u64", 2**40, V.UINT64)
    w.add("a.f64", 1.5, V.FLOAT64)
    w.add_array("a.strs", ["x", "ünï", ""], V.STRING)
    w.add_array("a.ints", [1, -2, 3], V.INT32)
    w.add_array("a.floats", [0.5, -1.0], V.FLOAT32)
    w.add_array("a.bools", [True, False, True], V.BOOL)
    data = np.arange(64, dtype=np.float32).reshape(2, 32)
    w.add_tensor("t.weight", data.shape, T.F32, lambda: data.tobytes())
    path = tmp_path / "m.gguf"
    size, sha = w.write(path)
    assert size == path.stat().st_size == w.data_size()
    r = GGUFReader(path)
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "a.u32") == 7 and _field(r, "a.i32") == -7
    assert _field(r, "a.f32") == 0.25 and _field(r, "a.bool") is True
    assert _field(r, "a.u64") == 2**40 and _field(r, "a.f64") == 1.5
    assert _field(r, "a.strs") == ["x", "ünï", ""]
    assert _field(r, "a.ints") == [1, -2, 3]
    assert _field(r, "a.floats") == [0.5, -1.0]
    assert _field(r, "a.bools") == [True, False, True]
    (t,) = r.tensors
    assert t.name == "t.weight" and list(t.shape) == [32, 2]
    assert np.array_equal(np.asarray(t.data).reshape(2, 32), data)


def test_tensors_aligned_and_in_order(tmp_path):
    w = GGUFWriter()
    shapes = [(3,), (5, 32), (7,), (2, 64)]
    arrays = [np.random.default_rng(i).standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)]
    for i, a in enumerate(arrays):
        w.add_tensor(f"t{i}", a.shape, T.F32, lambda a=a: a.tobytes())
    path = tmp_path / "m.gguf"
    w.write(path)
    r = GGUFReader(path)
    for i, (t, a) in enumerate(zip(r.tensors, arrays)):
        assert t.name == f"t{i}"
        assert t.data_offset % 32 == 0
        assert np.array_equal(np.asarray(t.data).reshape(a.shape), a)


def test_wrong_size_leaves_nothing(tmp_path):
    w = GGUFWriter()
    w.add_tensor("t", (2, 32), T.F32, lambda: b"\0" * 10)
    with pytest.raises(ValueError, match="produced 10 bytes"):
        w.write(tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == []


def test_rejects_bad_entries():
    w = GGUFWriter()
    w.add_tensor("t", (2, 32), T.F32, lambda: b"")
    with pytest.raises(ValueError, match="duplicate tensor"):
        w.add_tensor("t", (2, 32), T.F32, lambda: b"")
    with pytest.raises(ValueError, match="63-byte"):
        w.add_tensor("x" * 64, (2, 32), T.F32, lambda: b"")
    with pytest.raises(ValueError, match="block size"):
        w.add_tensor("q", (2, 33), T.Q8_0, lambda: b"")
    w.add_u32("k", 1)
    with pytest.raises(ValueError, match="duplicate metadata"):
        w.add_u32("k", 2)


def test_nbytes():
    assert tensor_nbytes((4, 64), T.Q8_0) == 4 * 2 * 34
    assert tensor_nbytes((4, 64), T.F16) == 512
    assert tensor_nbytes((4, 256), T.Q4_K) == 4 * 144
