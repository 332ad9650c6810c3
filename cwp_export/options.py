"""Parsing of user-facing option values (pure functions, shared by the CLI and the API)."""

from __future__ import annotations

import math

from .errors import InputError


def parse_fraction(text: str | float, option: str = "--protect", upper: float = 1.0) -> float:
    """'1%' → 0.01, '0.5%' → 0.005, '0.01' → 0.01; refuses negatives, > ``upper`` (100%) and
    junk."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise InputError(f"{option} {raw!r} is not a number; write a percentage like 1% or a "
                         f"fraction like 0.01") from None
    if math.isnan(value) or value < 0 or value > upper:
        raise InputError(f"{option} {raw!r} is outside 0%..{100 * upper:g}%; write a percentage "
                         f"like 1% or a fraction like 0.01")
    return value


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["blk.0.attn_v.weight=Q8_0", ...]`` → ``{"blk.0.attn_v.weight": "Q8_0"}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, qtype = str(item).partition("=")
        if not sep or not name.strip() or not qtype.strip():
            raise InputError(f"--tensor-type {item!r} is not NAME=TYPE; write e.g. "
                             f"blk.0.attn_v.weight=Q8_0")
        if name.strip() in out:
            raise InputError(f"--tensor-type gives {name.strip()} twice; give each tensor once")
        out[name.strip()] = qtype.strip().upper()
    return out


def parse_layers(text: str | None) -> list[int] | None:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]``; None or empty → None (all layers)."""
    if text is None or not str(text).strip():
        return None
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise InputError(f"--layers {text!r} is not a list of layer numbers; write e.g. "
                             f"0-3,7") from None
        if a < 0 or b < a:
            raise InputError(f"--layers range {part!r} is empty or negative; write e.g. 0-3")
        out.update(range(a, b + 1))
    return sorted(out)


def parse_languages(text: str | None) -> list[str] | None:
    """``"en,fr, ko"`` → ``["en", "fr", "ko"]``; None or empty → None (the defaults)."""
    if text is None or not str(text).strip():
        return None
    return [x.strip().lower() for x in str(text).split(",") if x.strip()]
