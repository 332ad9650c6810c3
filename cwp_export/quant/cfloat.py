"""float32 arithmetic with C semantics, shared by the encoders.

ggml accumulates sums in plain ``float s = 0; for (...) s += t[i];`` loops. Matching its bytes
needs the same left-to-right float32 rounding, which none of PyTorch's reductions promise
(``sum`` is pairwise/cascaded, ``cumsum`` accumulates in float64 on CPU).
"""

from __future__ import annotations

import torch

_ZERO_INDEX: dict[tuple[int, str], torch.Tensor] = {}


def seq_sum0(t: torch.Tensor) -> torch.Tensor:
    """Left-to-right float32 sum over dim 0, starting from +0 (C's ``float s = 0; s += t[i]``).

    On CPU this is one ``index_add_`` of every slice into the same row: PyTorch adds the slices
    in index order, one float32 addition each (documented order; pinned by
    ``tests/quant/test_cfloat.py``), without a Python-level op per slice. CUDA's ``index_add_``
    uses atomics in no fixed order, so other devices add slice by slice.
    """
    n = t.shape[0]
    if t.device.type == "cpu" and t.dtype == torch.float32:
        key = (n, str(t.device))
        idx = _ZERO_INDEX.get(key)
        if idx is None:
            idx = _ZERO_INDEX[key] = torch.zeros(n, dtype=torch.long)
        return torch.zeros_like(t[:1]).index_add_(0, idx, t)[0]
    acc = torch.zeros_like(t[0])
    for i in range(n):
        acc += t[i]
    return acc
