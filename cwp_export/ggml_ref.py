"""ggml's own quantizer, reached through ctypes in the ``libggml-base`` llama-cpp-python ships.

This is the oracle the encoders in :mod:`cwp_export.quant` are checked against, byte for byte, and
the reference the quantization benchmarks compare throughput with. It is never used to write files.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


@functools.cache
def library() -> ctypes.CDLL:
    import llama_cpp  # the package ships libggml-base next to libllama

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*"))
    if not candidates:
        raise FileNotFoundError(f"libggml-base not found in {lib_dir}")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    return lib


def quantize(x: np.ndarray, ggml_type: GGMLQuantizationType,
             imatrix: np.ndarray | None = None) -> bytes:
    """Quantize a 2-D float32 array row by row with ``ggml_quantize_chunk``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    nrows, n_per_row = x.shape
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    out = np.zeros(nrows * n_per_row // block * type_size, dtype=np.uint8)
    lib = library()
    lib.ggml_quantize_init(int(ggml_type))
    imat = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        imat = imatrix.ctypes.data_as(ctypes.c_void_p)
    written = lib.ggml_quantize_chunk(int(ggml_type), x.ctypes.data_as(ctypes.c_void_p),
                                      out.ctypes.data_as(ctypes.c_void_p), 0, nrows, n_per_row,
                                      imat)
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
    return out.tobytes()


def weighted_error(x: np.ndarray, blob: bytes, ggml_type: GGMLQuantizationType,
                   weights: np.ndarray | None = None) -> float:
    """Σ w·(x − dequant(blob))² in float64 (w = 1 without weights; per column or per element)."""
    from gguf.quants import dequantize

    with np.errstate(all="ignore"):
        deq = dequantize(np.frombuffer(blob, np.uint8).reshape(x.shape[0], -1), ggml_type)
        err = (x.astype(np.float64) - deq.astype(np.float64)) ** 2
        if weights is not None:
            err = err * np.broadcast_to(weights.astype(np.float64), x.shape)
        return float(err.sum())


@dataclass(frozen=True)
class Parity:
    """How an encoder's output compares with ggml's for the same input."""

    same_blocks: int
    blocks: int
    identical: bool
    error_ours: float   # importance-weighted squared error (only computed when not identical)
    error_ggml: float


def parity(qtype, x, importance=None) -> Parity:
    """Encode the 2-D float tensor ``x`` with ``qtype`` (a cwp_export.quant.QuantType) and with
    ggml, and compare block by block."""
    imp = None if importance is None else importance.numpy()
    ours = qtype.encode(x, importance)
    ref = quantize(x.numpy(), qtype.ggml_type, imp)
    if len(ours) != len(ref):
        raise AssertionError(f"{qtype.name}: {len(ours)} bytes vs ggml's {len(ref)}")
    size = GGML_QUANT_SIZES[qtype.ggml_type][1]
    a, b = np.frombuffer(ours, np.uint8).reshape(-1, size), np.frombuffer(ref, np.uint8).reshape(-1, size)
    same = int((a == b).all(1).sum())
    if ours == ref:
        return Parity(same, len(a), True, 0.0, 0.0)
    xn = x.numpy()
    return Parity(same, len(a), False, weighted_error(xn, ours, qtype.ggml_type, imp),
                  weighted_error(xn, ref, qtype.ggml_type, imp))
