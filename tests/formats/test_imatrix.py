"""Importing llama.cpp importance matrices.

Files written here follow the documented formats (GGUF and legacy .dat); when a ``llama-imatrix``
binary of the installed llama-cpp-python version is cached, a file it computes on a tiny model is
also imported and checked against the mean squared activations transformers computes for the same
tokens. Build that binary from the llama-cpp-python sdist (about 10 minutes on 2 cores)::

    cmake -S <sdist>/vendor/llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    ninja -C build llama-imatrix
    cp build/bin/llama-imatrix build/bin/*.so* ~/.cache/cwp-export/llama.cpp-bin-<version>/
"""

from __future__ import annotations

import importlib.metadata
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from cwp_export.cache import cache_dir
from cwp_export.errors import InputError
from cwp_export.formats.imatrix import load_imatrix, read_imatrix

SHAPES = {
    "token_embd.weight": (100, 64),
    "blk.0.attn_norm.weight": (64,),
    "blk.0.attn_q.weight": (64, 64),
    "blk.0.ffn_down.weight": (64, 128),
}


def write_gguf_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]],
                       meta: bool = True, general_type: str = "imatrix") -> Path:
    """entries: name → (in_sum2 of shape (n_mat, n_per_row), counts of shape (n_mat,))."""
    w = GGUFWriter(path, arch="llama")  # gguf-py always writes general.architecture
    w.add_type(general_type)
    if meta:
        w.add_array("imatrix.datasets", ["calib.txt"])
        w.add_uint32("imatrix.chunk_count", 3)
        w.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in sorted(entries.items()):
        w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(sums, dtype=np.float32))
        w.add_tensor(f"{name}.counts", np.asarray(counts, dtype=np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_legacy_imatrix(path: Path, entries: dict[str, tuple[int, np.ndarray]],
                         chunks: int | None = 3, dataset: str = "calib.txt") -> Path:
    out = struct.pack("<i", len(entries))
    for name, (ncall, values) in entries.items():
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values))
        out += np.asarray(values, dtype="<f4").tobytes()
    if chunks is not None:
        out += struct.pack("<i", chunks) + struct.pack("<i", len(dataset)) + dataset.encode()
    path.write_bytes(out)
    return path


def _entries(rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"blk.0.attn_q.weight": (rng.random((1, 64)) * 50, np.array([25.0])),
            "blk.0.ffn_down.weight": (rng.random((1, 128)) * 7, np.array([7.0]))}


def test_gguf_importance_is_sum_over_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    entries = _entries(rng)
    im = read_imatrix(write_gguf_imatrix(tmp_path / "im.gguf", entries))
    assert not im.legacy and im.datasets == ("calib.txt",)
    assert (im.chunk_count, im.chunk_size) == (3, 512)
    for name, (sums, counts) in entries.items():
        got = im.importance[name]
        assert got.dtype == np.float32 and got.shape == (sums.shape[1],)
        np.testing.assert_array_equal(got, sums[0].astype(np.float32) / np.float32(counts[0]))
    assert load_imatrix(tmp_path / "im.gguf", SHAPES).keys() == entries.keys()


def test_gguf_unused_matrix_gets_neutral_importance(tmp_path: Path) -> None:
    path = write_gguf_imatrix(tmp_path / "im.gguf",
                              {"blk.0.attn_q.weight": (np.full((1, 64), 3.0), np.array([0.0]))})
    np.testing.assert_array_equal(load_imatrix(path)["blk.0.attn_q.weight"], np.ones(64))


def test_legacy_dat(tmp_path: Path) -> None:
    v = np.linspace(0.5, 2.0, 64, dtype=np.float32)
    path = write_legacy_imatrix(tmp_path / "im.dat", {"blk.0.attn_q.weight": (4, v * 4),
                                                      "blk.0.ffn_down.weight": (0, np.ones(128))})
    im = read_imatrix(path)
    assert im.legacy and im.chunk_count == 3 and im.datasets == ("calib.txt",)
    np.testing.assert_allclose(im.importance["blk.0.attn_q.weight"], v, rtol=1e-7)
    np.testing.assert_array_equal(im.importance["blk.0.ffn_down.weight"], np.ones(128))
    no_trailer = write_legacy_imatrix(tmp_path / "b.dat", {"blk.0.attn_q.weight": (1, v)},
                                      chunks=None)
    assert read_imatrix(no_trailer).chunk_count == 0


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("garbage", "neither a GGUF importance matrix nor a legacy .dat"),
    ("empty", "neither a GGUF importance matrix nor a legacy .dat"),
    ("truncated_gguf", "corrupt"),
    ("truncated_dat", "truncated"),
    ("model", "not an importance matrix"),
    ("no_counts", "no counts"),
    ("no_meta", "lacks the metadata"),
    ("nan", "non-finite"),
    ("moe", "mixture-of-experts"),
    ("other_model", "tensors this model does not have: blk.7.attn_q.weight"),
    ("wrong_width", "has 32 values for blk.0.attn_q.weight, whose rows hold 64"),
    ("vector", "is a vector in this model"),
])
def test_errors(case: str, message: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    p = tmp_path / "im.gguf"
    one = {"blk.0.attn_q.weight": (rng.random((1, 64)), np.array([2.0]))}
    if case == "garbage":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "truncated_gguf":
        write_gguf_imatrix(p, one)
        p.write_bytes(p.read_bytes()[:200])
    elif case == "truncated_dat":
        write_legacy_imatrix(p, {"blk.0.attn_q.weight": (1, np.ones(64))})
        p.write_bytes(p.read_bytes()[:60])
    elif case == "model":
        write_gguf_imatrix(p, one, general_type="model")
    elif case == "no_counts":
        w = GGUFWriter(p, arch="llama")
        w.add_type("imatrix")
        w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones((1, 64), np.float32))
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    elif case == "no_meta":
        write_gguf_imatrix(p, one, meta=False)
    elif case == "nan":
        write_gguf_imatrix(p, {"blk.0.attn_q.weight": (np.full((1, 64), np.nan), np.array([1.0]))})
    elif case == "moe":
        write_gguf_imatrix(p, {"blk.0.ffn_down_exps.weight": (np.ones((4, 64)), np.ones(4))})
    elif case == "other_model":
        write_gguf_imatrix(p, {**one, "blk.7.attn_q.weight": one["blk.0.attn_q.weight"]})
    elif case == "wrong_width":
        write_gguf_imatrix(p, {"blk.0.attn_q.weight": (np.ones((1, 32)), np.array([2.0]))})
    elif case == "vector":
        write_gguf_imatrix(p, {"blk.0.attn_norm.weight": (np.ones((1, 64)), np.array([2.0]))})
    with pytest.raises(InputError, match=message) as e:
        load_imatrix(p, SHAPES)
    assert "\n" not in str(e.value)


def test_accepts_tensor_specs(tmp_path: Path) -> None:
    from cwp_export.quant.presets import TensorInfo

    path = write_gguf_imatrix(tmp_path / "im.gguf", _entries(np.random.default_rng(2)))
    specs = [TensorInfo(n, s) for n, s in SHAPES.items()]
    assert set(load_imatrix(path, specs)) == {"blk.0.attn_q.weight", "blk.0.ffn_down.weight"}


# -- a file computed by llama.cpp itself --------------------------------------------------------

def _llama_imatrix() -> Path | None:
    version = importlib.metadata.version("llama_cpp_python")
    exe = cache_dir() / f"llama.cpp-bin-{version}" / "llama-imatrix"
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None


@pytest.mark.skipif(_llama_imatrix() is None,
                    reason="no llama-imatrix binary cached under ~/.cache/cwp-export/"
                           "llama.cpp-bin-<llama-cpp-python version>/ (see this file's docstring)")
def test_real_llama_imatrix_matches_transformers(tmp_path: Path) -> None:
    """Both formats written by llama-imatrix import to the mean squared input of each matrix,
    as transformers computes it on the same token chunks."""
    import llama_cpp
    import torch
    import transformers as tf

    from cwp_export.api import export
    from cwp_export.convert import plan
    from cwp_export.testing import make_tiny_model, training_text

    exe = _llama_imatrix()
    folder = make_tiny_model("llama", tmp_path / "hf")
    gguf = export(folder, quant="F32", outdir=tmp_path / "out", progress=False, argv=[]).model_path
    text = "\n".join(training_text())
    (tmp_path / "calib.txt").write_text(text, encoding="utf-8")
    n_ctx = 32
    env = {**os.environ, "LD_LIBRARY_PATH": str(exe.parent)}
    for fmt in ("gguf", "dat"):
        subprocess.run([str(exe), "-m", str(gguf), "-f", str(tmp_path / "calib.txt"),
                        "-o", str(tmp_path / f"im.{fmt}"), "--output-format", fmt,
                        "-c", str(n_ctx), "-b", str(n_ctx), "-t", "2", "--no-ppl", "--chunks", "6"],
                       check=True, capture_output=True, env=env, timeout=300)
    specs = [t.spec for t in plan(folder, "F32").tensors]
    im = read_imatrix(tmp_path / "im.gguf")
    imp = load_imatrix(tmp_path / "im.gguf", specs)
    legacy = load_imatrix(tmp_path / "im.dat", specs)
    assert (im.chunk_size, im.chunk_count) == (n_ctx, 6)
    matrices = {s.name for s in specs if len(s.shape) == 2 and s.name.startswith("blk.")}
    assert set(imp) == matrices == set(legacy)
    for name in imp:
        np.testing.assert_allclose(legacy[name], imp[name], rtol=1e-5)

    # the same chunks through transformers: mean over tokens of each matrix's squared input
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else True
    bos = llm.token_bos()
    llm.close()
    model = tf.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for mname, module in model.named_modules():
        parts = mname.split(".")
        if len(parts) == 5 and parts[0:2] == ["model", "layers"] and ".".join(parts[3:]) in names:
            key = f"blk.{parts[2]}.{names['.'.join(parts[3:])]}.weight"

            def hook(mod, args, key=key):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[key] = sums.get(key, 0) + (x * x).sum(0)
            hooks.append(module.register_forward_pre_hook(hook))
    n_chunk = im.chunk_count
    with torch.no_grad():
        for c in range(n_chunk):
            chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
            if add_bos:
                chunk[0] = bos
            model(torch.tensor([chunk]))
    for name, s in sums.items():
        np.testing.assert_allclose(imp[name], (s / (n_chunk * n_ctx)).numpy(), rtol=2e-3,
                                   atol=1e-6, err_msg=name)
