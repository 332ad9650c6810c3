"""Quantization types: a registry of encoders from float tensors to GGUF tensor bytes.

Only this package knows block byte layouts. Each :class:`QuantType` names its GGML type, its block
size and an ``encode(tensor) -> bytes`` function that is vectorised over the whole tensor (PyTorch,
on whatever device the tensor is on) and matches ggml's own reference quantizer byte for byte.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Callable

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import InputError


# An encoder turns a 2-D float tensor (rows × n_per_row) into GGUF block bytes. ``importance`` is
# None, one weight per column (shape (n_per_row,): llama.cpp's imatrix semantics) or one weight
# per element (same shape as the tensor); types without an importance-aware algorithm ignore it.
Encoder = Callable[[torch.Tensor, "torch.Tensor | None"], bytes]


@dataclass(frozen=True)
class QuantType:
    name: str
    ggml_type: GGMLQuantizationType
    encoder: Encoder

    def encode(self, x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
        """Encode ``x`` (any shape whose last dimension holds whole blocks) row by row."""
        rows = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        if rows.shape[1] % self.block_size:
            raise ValueError(f"rows of {rows.shape[1]} values do not hold whole {self.name} "
                             f"blocks of {self.block_size}; use a type whose block divides the row")
        if importance is not None:
            if importance.shape == x.shape:
                importance = importance.reshape(rows.shape)
            elif tuple(importance.shape) != (rows.shape[1],):
                raise ValueError(f"importance of shape {tuple(importance.shape)} fits neither a "
                                 f"column ({rows.shape[1]},) nor the tensor {tuple(x.shape)}")
        return _encode_split(self.encoder, rows, importance)

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.ggml_type][0]

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.ggml_type][1]

    @property
    def is_quantized(self) -> bool:
        return self.block_size > 1


# Below this many elements a tensor is encoded in one piece (thread start-up would dominate).
PARALLEL_MIN_ELEMENTS = 1 << 17
_THREADS_LOCK = threading.Lock()


def _encode_split(encoder: Encoder, rows: torch.Tensor, importance: torch.Tensor | None) -> bytes:
    """Encode on CPU with ``torch.get_num_threads()`` workers, each on its own band of rows.

    Rows are independent in every GGML type, so the bands' bytes simply join. The encoders run
    hundreds of small element-wise ops per block: one OpenMP team per op spends more time waking
    threads than working, while whole bands per thread scale with the cores (PyTorch drops the GIL
    inside each op, and the TorchScript searches run without it). The workers run with one
    intra-op thread each; the caller's setting is restored afterwards.
    """
    threads = torch.get_num_threads()
    if rows.device.type != "cpu" or threads < 2 or rows.numel() < PARALLEL_MIN_ELEMENTS \
            or rows.shape[0] < 2:
        return encoder(rows, importance)
    n = min(threads, rows.shape[0])
    bounds = [rows.shape[0] * k // n for k in range(n + 1)]
    bands = [(rows[a:b], importance[a:b] if importance is not None and importance.ndim == 2
              else importance) for a, b in zip(bounds, bounds[1:])]
    with _THREADS_LOCK:
        torch.set_num_threads(1)
        try:
            parts = list(_pool(threads).map(lambda band: encoder(*band), bands))
        finally:
            torch.set_num_threads(threads)
    return b"".join(parts)


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)


def _pool(n: int) -> ThreadPoolExecutor:
    """The encoding workers, kept across calls (starting threads costs about a tenth of a
    Q8_0 tensor's time). They first run an op while the intra-op setting is 1 (the caller holds
    it there), which PyTorch then keeps for those threads. A forked child gets its own pool:
    the parent's threads do not exist there."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != n:
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)
        _POOL = (os.getpid(), n, ThreadPoolExecutor(n, thread_name_prefix="cwp-encode"))
    return _POOL[2]


_REGISTRY: dict[str, QuantType] = {}


def register(qt: QuantType) -> QuantType:
    if qt.name in _REGISTRY:
        raise ValueError(f"quant type {qt.name} is registered twice")
    _REGISTRY[qt.name] = qt
    return qt


def get(name: str) -> QuantType:
    try:
        return _REGISTRY[name.upper()]
    except KeyError:
        raise InputError(f"unknown quant type {name!r}; supported: {', '.join(names())}") from None


def names() -> list[str]:
    return list(_REGISTRY)


def check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise InputError(f"tensor {name} holds {bad} NaN/Inf value(s); the checkpoint is damaged "
                         f"and cannot be quantized")


def check_f16_range(name: str, t: torch.Tensor) -> None:
    """F16 tops out at 65504: larger magnitudes would silently become infinities."""
    big = t.abs() > 65504.0
    if big.any():
        raise InputError(f"tensor {name} holds {int(big.sum())} value(s) beyond the F16 range "
                         f"(|x| > 65504); export it with --quant BF16 or F32 instead")


from . import basic  # noqa: E402,F401  (registers F32, F16, BF16, Q8_0)
from . import symmetric  # noqa: E402,F401  (registers Q4_0, Q5_0, Q3_K, Q6_K, IQ4_NL)
from . import affine  # noqa: E402,F401  (registers Q4_1, Q5_1, Q2_K, Q4_K, Q5_K)

__all__ = ["QuantType", "check_f16_range", "check_finite", "get", "names", "register"]
