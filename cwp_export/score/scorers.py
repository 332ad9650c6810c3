"""Scorers, registered by name: how much each weight matters (higher = more critical).

=============  ==================================================================  ===============
name           score of weight W_ij                                                data it needs
=============  ==================================================================  ===============
``cwp``        F_fair + F_safe − β·(F_general_text + F_general_instruct)           all four
``fairness``   F_fair                                                              fairness
``safety``     F_safe                                                              safety
``magnitude``  |W_ij|                                                              none
``wanda``      |W_ij| · ‖x_j‖₂ over the general-text tokens                        general text
``activation`` E[x_j²] over the general-text tokens (llama.cpp's imatrix, per      general text
               column, the same for every row)
``random``     uniform in [0, 1), seeded per tensor                                none
=============  ==================================================================  ===============

F_kind is the mean over that kind's calibration items of the squared per-item gradient
(:mod:`.fisher`). Every scorer is a function ``(ctx) -> {parameter name: float32 tensor}`` over
the parameters ``ctx.names``; the context hides data-parallel sharding (each rank sees its share
of the items, sums are all-reduced).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass(frozen=True)
class Scorer:
    name: str
    needs: tuple[str, ...]  # calibration kinds read
    fn: Callable[..., dict[str, torch.Tensor]]
    help: str


SCORERS: dict[str, Scorer] = {}


def register(name: str, needs: tuple[str, ...], help: str):
    def deco(fn):
        SCORERS[name] = Scorer(name, needs, fn, help)
        return fn
    return deco


def get(name: str) -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        raise InputError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}") from None


@register("cwp", ("fairness", "safety", "general_text", "general_instruct"),
          "F_fair + F_safe − β·(F_general_text + F_general_instruct) (the default)")
def _cwp(ctx) -> dict[str, torch.Tensor]:
    if not ctx.calib["fairness"].items and not ctx.calib["safety"].items:
        raise InputError("the cwp scorer needs fairness or safety calibration data, and both are "
                         "'none'; give one, or choose the magnitude / activation scorer")
    b = float(ctx.beta)
    return ctx.fisher({"fairness": 1.0, "safety": 1.0, "general_text": -b,
                       "general_instruct": -b})


@register("fairness", ("fairness",), "F_fair only")
def _fairness(ctx) -> dict[str, torch.Tensor]:
    return ctx.fisher({"fairness": 1.0})


@register("safety", ("safety",), "F_safe only")
def _safety(ctx) -> dict[str, torch.Tensor]:
    return ctx.fisher({"safety": 1.0})


@register("magnitude", (), "|W| (no data)")
def _magnitude(ctx) -> dict[str, torch.Tensor]:
    return {n: ctx.param(n).detach().float().abs() for n in ctx.names}


@register("wanda", ("general_text",), "|W|·‖x‖₂ per column, from general-text activations")
def _wanda(ctx) -> dict[str, torch.Tensor]:
    sq, _ = ctx.activation_squares()
    return {n: ctx.param(n).detach().float().abs() * sq[n].sqrt()[None, :] for n in ctx.names}


@register("activation", ("general_text",), "E[x²] per column (imatrix-style)")
def _activation(ctx) -> dict[str, torch.Tensor]:
    sq, count = ctx.activation_squares()
    out = {}
    for n in ctx.names:
        shape = ctx.param(n).shape
        out[n] = (sq[n] / max(1, count)).reshape(1, -1).expand(shape).contiguous()
    return out


@register("random", (), "uniform random (seeded), a floor for ablations")
def _random(ctx) -> dict[str, torch.Tensor]:
    out = {}
    for n in ctx.names:
        g = torch.Generator().manual_seed(int(ctx.seed) * 1_000_003 + zlib.crc32(n.encode()))
        out[n] = torch.rand(ctx.param(n).shape, generator=g, dtype=torch.float32)
    return out
