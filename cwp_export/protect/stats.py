"""Tensor-side numbers the planner and the report need (torch): where the critical mass sits,
each type's error on Gaussian data, per-element importance, and the exact coverage of a plan."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from .. import quant
from .plan import LADDER, Plan, TensorStats, bits_per_weight

# Relative weight of a critical element in the importance-weighted rounding (on top of its
# column's activation importance): critical weights weigh this many times more than the rest.
CRITICAL_WEIGHT = 100.0


def critical_mass(score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Score mass of the critical weights (scores clamped at 0; zero elsewhere)."""
    return score.float().clamp_min(0) * mask


def tensor_stats(name: str, weight: torch.Tensor, score: torch.Tensor, mask: torch.Tensor,
                 base_type: str) -> TensorStats:
    if tuple(score.shape) != tuple(weight.shape) or tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(f"{name}: scores {list(score.shape)} / mask {list(mask.shape)} do not "
                         f"match the weight {list(weight.shape)}")
    m = critical_mass(score, mask)
    return TensorStats(name=name, shape=(int(weight.shape[0]), int(weight.shape[1])),
                       base_type=base_type,
                       mean_square=float(weight.float().square().mean()),
                       mass=float(m.sum()), critical=int(mask.sum()),
                       col_mass=[float(v) for v in m.sum(0)],
                       row_mass=[float(v) for v in m.sum(1)])


@functools.cache
def relative_mse() -> dict[str, float]:
    """Mean squared quantization error / mean square, per ladder type, on a fixed Gaussian
    matrix (seeded; a property of the formats, used to compare types, not a measurement of
    any model)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1024, generator=g)
    ms = float(x.square().mean())
    out = {}
    for t in LADDER:
        qt = quant.get(t)
        if qt.name in ("F16",):
            deq = x.half().float()
        else:
            deq = dequantize(qt.encode(x), t, x.shape)
        out[t] = float((deq - x).square().mean()) / ms
    return out


def dequantize(blob: bytes, type_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    arr = gguf_dequantize(np.frombuffer(blob, dtype=np.uint8), GGMLQuantizationType[type_name])
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(shape)


def element_importance(mask: torch.Tensor, column: torch.Tensor | None,
                       critical_weight: float = CRITICAL_WEIGHT) -> torch.Tensor:
    """Per-element rounding weights: the column's activation importance (E[x²], as an imatrix;
    1 when unknown) times ``1 + critical_weight`` for critical weights."""
    base = torch.ones(mask.shape[-1]) if column is None else column.float().clamp_min(0)
    if column is not None and float(base.max()) <= 0:
        base = torch.ones_like(base)
    return base[None, :] * (1.0 + critical_weight * mask.float())


def coverage(scores: dict[str, torch.Tensor], mask: dict[str, torch.Tensor],
             plan: Plan) -> dict[str, Any]:
    """Exact shares of the critical set (by score mass and by count) that the export keeps
    exact (adapter), keeps at ≥ 8 bits (type), or only weights in the rounding."""
    tot_m = tot_n = 0.0
    ex_m = ex_n = hi_m = hi_n = 0.0
    for name, s in scores.items():
        mk = mask[name]
        m = critical_mass(s, mk)
        tot_m += float(m.sum())
        tot_n += int(mk.sum())
        exact = torch.zeros_like(mk)
        cols = plan.columns.get(name, [])
        rows = plan.rows.get(name, [])
        if cols:
            exact[:, cols] = True
        if rows:
            exact[rows, :] = True
        em = exact & mk
        ex_m += float(m[em].sum())
        ex_n += int(em.sum())
        t = plan.types.get(name)
        if t is not None and bits_per_weight(t) >= 8:
            rest = mk & ~exact
            hi_m += float(m[rest].sum())
            hi_n += int(rest.sum())
    tm, tn = tot_m or 1.0, tot_n or 1.0
    return {
        "critical_weights": int(tot_n),
        "exact": {"mass": ex_m / tm, "weights": ex_n / tn},
        "8bit": {"mass": hi_m / tm, "weights": hi_n / tn},
        "importance_only": {"mass": max(0.0, 1 - (ex_m + hi_m) / tm),
                            "weights": max(0.0, 1 - (ex_n + hi_n) / tn)},
    }
