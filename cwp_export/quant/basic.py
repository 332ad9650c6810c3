"""Float types and Q8_0, matching ggml's reference conversions byte for byte.

* F32, F16: IEEE conversions with round-to-nearest-even (what ggml's fp32→fp16 does).
* BF16: round-to-nearest-even on the upper 16 bits; NaN keeps a quiet-NaN payload (ggml's rule).
* Q8_0: blocks of 32 values: ``d = max|x| / 127`` stored as fp16, then ``q = round(x / d)`` with
  round-half-away-from-zero (C ``roundf``), computed in fp32 like ggml's ``quantize_row_q8_0_ref``.

None of these has an importance-aware algorithm in ggml (Q8_0 ignores an imatrix there too), so
they ignore ``importance``.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from . import QuantType, register


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().cpu().numpy().tobytes()


def encode_f32(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _bytes(x.to(torch.float32))


def encode_f16(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _bytes(x.to(torch.float16))


def encode_bf16(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    if x.dtype == torch.bfloat16:
        return _bytes(x.view(torch.int16))
    bits = x.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    nan = torch.isnan(x.to(torch.float32))
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    quiet = (bits >> 16) | 64
    out = torch.where(nan, quiet, rounded) & 0xFFFF
    return out.to(torch.int32).numpy().astype(np.uint16).tobytes()


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C ``roundf``: halves go away from zero (torch.round goes to even)."""
    t = torch.trunc(x)
    return t + torch.where((x - t).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


# The largest float32 below one half (0.5 − 2⁻²⁵).
_HALF_DOWN = torch.tensor(float(np.nextafter(np.float32(0.5), np.float32(0.0))))


def round_half_away_int8(y: torch.Tensor) -> torch.Tensor:
    """``round_half_away`` for |y| < 128, straight to int8 in two passes (``y`` is overwritten).

    ``trunc(y + copysign(0.5 − 2⁻²⁵, y))`` is C ``roundf`` for every float32 |y| < 2²³. With 0.5
    itself, y = 0.5 − 2⁻²⁵ would sum to 1 − 2⁻²⁵ and round up to 1; with one ulp less, an exact
    half k + ½ sums to k + 1 − 2⁻²⁵, which still rounds up to k + 1 (the ulp there is ≥ 2⁻²³),
    and anything below a half stays below the next integer.
    """
    y += torch.copysign(_HALF_DOWN.to(y.device), y)
    return y.to(torch.int8)


# Blocks per step of the Q8_0 encoder: its five passes then stay in a core's cache.
Q8_0_CHUNK_BLOCKS = 1 << 14


def encode_q8_0(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    flat = x.to(torch.float32).reshape(-1, 32)
    out = torch.empty((flat.shape[0], 34), dtype=torch.uint8, device=flat.device)
    for b in range(0, flat.shape[0], Q8_0_CHUNK_BLOCKS):
        blocks = flat[b:b + Q8_0_CHUNK_BLOCKS]
        d = blocks.abs().amax(dim=1) / 127.0    # (aminmax over rows of 32 is 8x slower)
        inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
        q = round_half_away_int8(blocks * inv[:, None])
        out[b:b + Q8_0_CHUNK_BLOCKS, 2:] = q.view(torch.uint8)
        out[b:b + Q8_0_CHUNK_BLOCKS, :2] = d.to(torch.float16).view(torch.uint8).reshape(-1, 2)
    return out.cpu().numpy().tobytes()


F32 = register(QuantType("F32", T.F32, encode_f32))
F16 = register(QuantType("F16", T.F16, encode_f16))
BF16 = register(QuantType("BF16", T.BF16, encode_bf16))
Q8_0 = register(QuantType("Q8_0", T.Q8_0, encode_q8_0))
