"""The critical set: the top fraction of all scored weights under one global threshold."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError


def critical_count(fraction: float, n: int) -> int:
    """``round(fraction · n)`` with halves rounded up (not Python's round-half-to-even)."""
    return math.floor(fraction * n + 0.5)


def global_threshold_mask(scores: dict[str, torch.Tensor], fraction: float
                          ) -> dict[str, torch.Tensor]:
    """Mark exactly ``round(fraction · N)`` weights of all tensors together as critical.

    One global threshold: every weight scoring above it is critical; among weights scoring
    exactly the threshold, those first in (tensor name order, flat index) are taken until the
    count is exact. The result does not depend on the order of ``scores``.
    """
    if not scores:
        raise InputError("no scores to choose critical weights from")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or math.isnan(fraction) or not 0 <= fraction <= 1:
        raise InputError(f"the protected fraction {fraction!r} is outside 0..1; write e.g. 0.01")
    names = sorted(scores)
    flat = []
    for n in names:
        t = scores[n].detach().reshape(-1).float().cpu()
        if not torch.isfinite(t).all():
            raise InputError(f"the scores of {n} contain NaN or infinite values")
        flat.append(t)
    values = torch.cat(flat)
    total = values.numel()
    k = critical_count(float(fraction), total)
    if k == 0:
        chosen = torch.zeros(total, dtype=torch.bool)
    elif k == total:
        chosen = torch.ones(total, dtype=torch.bool)
    else:
        threshold = torch.kthvalue(values, total - k + 1).values
        chosen = values > threshold
        need = k - int(chosen.sum())
        ties = torch.nonzero(values == threshold).reshape(-1)[:need]
        chosen[ties] = True
    out, start = {}, 0
    for n, t in zip(names, flat):
        out[n] = chosen[start:start + t.numel()].reshape(scores[n].shape).clone()
        start += t.numel()
    return {n: out[n] for n in scores}


def _top_share(mass: torch.Tensor, share: float = 0.01) -> float:
    total = float(mass.sum())
    if total <= 0:
        return 0.0
    top = max(1, math.ceil(share * mass.numel()))
    return float(torch.topk(mass, top).values.sum()) / total


def summary(scores: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Where the critical weights sit.

    Per tensor: ``critical_share`` (critical weights / weights of the tensor),
    ``mass_share`` (its part of the summed scores of all critical weights), and for 2-D tensors
    ``top1pct_cols`` / ``top1pct_rows``: the part of the tensor's critical score mass held by its
    best 1% of columns / rows (at least one). Score mass counts scores clamped at 0.
    """
    if set(scores) != set(mask):
        raise InputError("scores and mask name different tensors")
    masses = {n: (scores[n].float().clamp_min(0) * mask[n]) for n in scores}
    total_mass = sum(float(m.sum()) for m in masses.values())
    total_crit = sum(int(mask[n].sum()) for n in scores)
    total = sum(scores[n].numel() for n in scores)
    tensors = {}
    for n, s in scores.items():
        m = masses[n]
        row = {"weights": s.numel(), "critical": int(mask[n].sum()),
               "critical_share": int(mask[n].sum()) / max(1, s.numel()),
               "mass_share": float(m.sum()) / total_mass if total_mass > 0 else 0.0}
        if m.ndim == 2:
            row["top1pct_cols"] = _top_share(m.sum(0))
            row["top1pct_rows"] = _top_share(m.sum(1))
        tensors[n] = row
    return {"weights": total, "critical": total_crit,
            "critical_share": total_crit / max(1, total), "tensors": tensors}
