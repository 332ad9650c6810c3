"""Affine encoders (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) against ggml's own quantizer.

Q4_1 and Q5_1 must be byte-identical. The K-types must have ≥ 99.9 % of their 256-value
super-blocks byte-identical and an importance-weighted squared error within 0.1 % of ggml's (in
practice they are byte-identical too). Run with ``pytest -s`` to see the identical-block shares.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cwp_export import quant
from cwp_export.ggml_ref import parity
from cwp_export.ggml_ref import quantize as ggml_quantize

LEGACY = ["Q4_1", "Q5_1"]
K_TYPES = ["Q2_K", "Q4_K", "Q5_K"]


def _tensors(legacy: bool):
    g = torch.Generator().manual_seed(1)
    yield "normal", torch.randn(48, 256, generator=g)
    yield "heavy-tailed", torch.randn(8, 1536, generator=g) ** 3 * 10
    yield "tiny", torch.randn(8, 256, generator=g) * 1e-30
    yield "huge", torch.randn(8, 256, generator=g) * 1e30
    yield "zeros", torch.zeros(4, 256)
    yield "constant", torch.full((4, 256), -3.25)
    yield "all-positive", torch.rand(16, 256, generator=g) + 0.5
    yield "sparse", torch.randn(8, 256, generator=g) * (torch.rand(8, 256, generator=g) < 0.1)
    if legacy:
        yield "rows-of-96", torch.randn(8, 96, generator=g)
        zeros = [0.0, -0.0, 1.0, 2.0] * 8 + [-0.0, 0.0, -1.0, -2.0] * 8
        yield "signed-zeros", torch.tensor(zeros)[None]


def _importance(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape[1], generator=g) * 10 + 0.01


def compare(name: str, x: torch.Tensor, importance: torch.Tensor | None) -> tuple[int, int]:
    """Asserts the type's parity criterion; returns (identical blocks, blocks)."""
    p = parity(quant.get(name), x, importance)
    if name in LEGACY:
        assert p.identical, f"{name}: {p.blocks - p.same_blocks} of {p.blocks} blocks differ from ggml"
    elif not p.identical:
        assert p.same_blocks >= 0.999 * p.blocks, f"{name}: only {p.same_blocks}/{p.blocks} identical"
        assert abs(p.error_ours - p.error_ggml) <= 1e-3 * abs(p.error_ggml), (name, p)
    return p.same_blocks, p.blocks


@pytest.mark.parametrize("with_importance", [False, True], ids=["no-importance", "per-column"])
@pytest.mark.parametrize("name", LEGACY + K_TYPES)
def test_matches_ggml(name, with_importance):
    same = total = 0
    for seed, (label, x) in enumerate(_tensors(name in LEGACY)):
        if x.shape[1] % quant.get(name).block_size:
            continue
        imp = _importance(x, seed) if with_importance else None
        s, t = compare(name, x, imp)
        same, total = same + s, total + t
    kind = "per-column importance" if with_importance else "no importance"
    print(f"\n{name} ({kind}): {same}/{total} = {same / total:.2%} blocks byte-identical to ggml")


def test_importance_shapes():
    x = torch.randn(4, 256)
    qt = quant.get("Q4_K")
    col = torch.rand(256) + 0.1
    assert qt.encode(x, col) == qt.encode(x, col.expand(4, 256).clone())
    assert len(qt.encode(x.reshape(2, 2, 256))) == 4 * 144
    with pytest.raises(ValueError, match="importance of shape"):
        qt.encode(x, torch.ones(3))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(LEGACY),
       st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=32, max_size=32),
       st.integers(1, 3),
       st.one_of(st.none(),
                 st.lists(st.floats(0.0009765625, 1024.0, width=32), min_size=32, max_size=32)))
def test_legacy_property(name, values, reps, imp):
    x = torch.tensor(values * reps, dtype=torch.float32).reshape(1, 32 * reps)
    importance = None if imp is None else torch.tensor(imp * reps, dtype=torch.float32)
    qt = quant.get(name)
    imatrix = None if importance is None else importance.numpy()
    assert qt.encode(x, importance) == ggml_quantize(x.numpy(), qt.ggml_type, imatrix)


def test_search_runs_scripted():
    """The searches are TorchScript (GIL-free, so row bands run in parallel); a silent fallback to
    the Python functions would only show as a slowdown."""
    from cwp_export.quant import affine

    assert isinstance(affine._qkx_chunk_fast, torch.jit.ScriptFunction)
    assert isinstance(affine._qp_fast, torch.jit.ScriptFunction)


def test_arithmetic_nearest_int_equals_the_bit_trick():
    from cwp_export.quant.affine import _nearest_int_arith
    from cwp_export.quant.cfloat import nearest_int

    g = torch.Generator().manual_seed(0)
    mags = 10.0 ** torch.randint(-3, 39, (200_000,), generator=g).float()
    v = torch.cat([torch.randn(200_000, generator=g) * mags,
                   torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0,
                                 -12582912.0, 4194303.5, -4194304.5, 8388608.0, 3e38, -3e38,
                                 12582911.0, -12582913.0, -25165824.0])])
    assert torch.equal(_nearest_int_arith(v), nearest_int(v))


@pytest.mark.parametrize("name", LEGACY + K_TYPES)
def test_infinite_values_match(name):
    """±inf and ±3e38 make a group's scale blow up, where C's nearest_int returns its raw bit
    pattern (ggml's own bytes for these blocks are the oracle)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 256, generator=g)
    x[0, 3], x[1, 40], x[2, 77], x[2, 78] = float("inf"), -float("inf"), 3e38, -3e38
    qt = quant.get(name)
    for imp in (None, torch.rand(256, generator=g) + 0.1):
        ref = ggml_quantize(x.numpy(), qt.ggml_type, None if imp is None else imp.numpy())
        assert qt.encode(x, imp) == ref
