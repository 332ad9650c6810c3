"""float32 arithmetic with C semantics, shared by the encoders.

ggml accumulates sums in plain ``float s = 0; for (...) s += t[i];`` loops. Matching its bytes
needs the same left-to-right float32 rounding, which none of PyTorch's reductions promise
(``sum`` is pairwise/cascaded, ``cumsum`` accumulates in float64 on CPU).

The functions here are TorchScript-compatible, so scripted encoder loops can call them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def seq_acc(acc: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``acc[0] + t[0] + t[1] + ...`` left to right in float32 (``acc`` is [1, ...], updated).

    On CPU this is one ``index_add_`` of every slice into the same row: PyTorch adds the slices
    in index order, one float32 addition each (its documented order; pinned by
    ``tests/quant/test_cfloat.py``), without a Python-level op per slice. CUDA's ``index_add_``
    uses atomics in no fixed order, so other devices add slice by slice.
    """
    if t.device.type == "cpu":
        idx = torch.zeros(t.shape[0], dtype=torch.long, device=t.device)
        return acc.index_add_(0, idx, t)[0]
    out = acc[0]
    for i in range(t.shape[0]):
        out = out + t[i]
    return out


def seq_sum0(t: torch.Tensor) -> torch.Tensor:
    """Left-to-right float32 sum over dim 0, starting from +0 (C's ``float s = 0; s += t[i]``)."""
    return seq_acc(torch.zeros_like(t[:1]), t)


def nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's ``nearest_int``: add 1.5·2²³ in float32 and read the low mantissa bits (int32).

    Identical to round-half-to-even for |v| < 2²²; beyond that it returns what the C trick
    returns (inf → −2²²). A NaN gives 0, as on x86 (whose default NaN has only the quiet bit set
    in its mantissa; PyTorch's NaN payloads vary by code path). Not for TorchScript, which reads
    ``.view(torch.int32)`` as a reshape: scripted code uses :func:`nearest_int_float`.
    """
    s = (v.to(torch.float32) + 12582912.0).view(torch.int32)
    i = (s & 0x007FFFFF) - 0x00400000
    return torch.where(torch.isnan(v), torch.zeros_like(i), i)


def nearest_int_float(v: torch.Tensor) -> torch.Tensor:
    """ggml's ``nearest_int`` (add 1.5·2²³ in float32, keep the low 23 mantissa bits, subtract
    2²²) as float32, without reinterpreting bits (TorchScript reads ``.view(torch.int32)`` as a
    reshape). The low 23 bits of a normal float32 f = m·2^e (½ <= |m| < 1) are |m|·2²⁴ − 2²³,
    exact in float32; 0 and ±inf have none, NaN gives 0 (x86's default NaN has no payload).
    Round half to even for |v| < 2²², the same garbage as C beyond; equal to
    :func:`nearest_int` for every input (pinned by ``tests/quant/test_cfloat.py``)."""
    f = v + 12582912.0
    m, _ = torch.frexp(f)
    mant = m.abs() * 16777216.0 - 8388608.0
    mant = torch.where(torch.isfinite(f) & (f != 0), mant, torch.zeros_like(mant))
    return torch.where(torch.isnan(f), torch.zeros_like(mant), mant - 4194304.0)


def nearest_int_clamped(v: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``MAX(lo, MIN(hi, nearest_int(v)))`` as float32 (``v`` is overwritten). When every |v|
    stays below 2²² (one reduction over the tensor checks; NaN fails it) that is plain
    round-half-even; otherwise :func:`nearest_int_float` reproduces C's bit pattern."""
    if v.numel() > 0:
        vmin, vmax = torch.aminmax(v)
        if not bool((vmin >= -4194303.0) & (vmax <= 4194303.0)):
            return nearest_int_float(v).clamp_(lo, hi)
    return v.round_().clamp_(lo, hi)


def script(fn: Callable) -> Callable:
    """``torch.jit.script(fn)``, or ``fn`` itself where TorchScript is unavailable.

    The scripted function runs the very same ATen ops in the same order (the CPU fuser is off by
    default, so nothing is fused or reassociated) — bytes do not change — but its loop runs in
    C++: about a fifth less overhead per op, and without holding the GIL, so the row bands of
    :func:`cwp_export.quant._encode_split` run truly in parallel.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # scripting is in maintenance
            return torch.jit.script(fn)
    except Exception:  # pragma: no cover - TorchScript missing or unable to compile
        return fn
