"""ggml's own quantizer, reached through ctypes in the ``libggml-base`` llama-cpp-python ships.

This is the oracle the encoders in :mod:`cwp_export.quant` are checked against, byte for byte, and
the reference the quantization benchmarks compare throughput with. It is never used to write files.
"""

from __future__ import annotations

import ctypes
import functools
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
