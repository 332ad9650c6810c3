"""Symmetric encoders (Q4_0, Q5_0, Q3_K, Q6_K, IQ4_NL) against ggml's own quantizer.

Q4_0 and Q5_0 must be byte-identical to ``ggml_quantize_chunk``. Q3_K, Q6_K and IQ4_NL must have
≥ 99.9 % of their blocks (256-value super-blocks for the K-types) byte-identical and an
importance-weighted squared error within 0.1 % of ggml's; in practice they are byte-identical too.
Run with ``pytest -s`` to see the identical-block shares.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cwp_export import quant
from cwp_export.ggml_ref import parity
from cwp_export.ggml_ref import quantize as ggml_quantize
from cwp_export.quant import symmetric

EXACT = ["Q4_0", "Q5_0"]
NEAR = ["Q3_K", "Q6_K", "IQ4_NL"]


def _tensors():
    g = torch.Generator().manual_seed(3)
    yield "normal", torch.randn(32, 1536, generator=g)
    yield "heavy-tailed", torch.randn(16, 512, generator=g) ** 3 * 10
    yield "ratio-of-normals", torch.randn(8, 256, generator=g) / torch.randn(8, 256, generator=g)
    yield "tiny", torch.randn(8, 256, generator=g) * 1e-30
    yield "huge", torch.randn(8, 256, generator=g) * 1e30
    yield "zeros", torch.zeros(4, 256)
    yield "constant", torch.full((4, 256), -3.25)
    yield "all-positive", torch.rand(8, 256, generator=g) + 0.5
    yield "sparse", torch.randn(8, 256, generator=g) * (torch.rand(8, 256, generator=g) < 0.1)
    scales = 10.0 ** torch.randint(-38, 30, (16, 1), generator=g)  # magnitudes row by row
    yield "row-magnitudes", torch.randn(16, 256, generator=g) * scales
    zero_blocks = torch.randn(8, 512, generator=g)
    zero_blocks[:, :48] = 0  # all-zero sub-blocks / blocks next to live ones
    zero_blocks[2] = 0
    yield "zero-blocks", zero_blocks
    yield "rows-of-96", torch.randn(8, 96, generator=g)  # legacy block sizes only
    yield "rows-of-576", torch.randn(8, 576, generator=g)
    yield "halves", (torch.arange(-64, 64, dtype=torch.float32) + 0.5).reshape(2, 64)


def _importance(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape[1], generator=g) ** 3 * 10 + 0.001


def compare(name: str, x: torch.Tensor, importance: torch.Tensor | None) -> tuple[int, int]:
    """Asserts the type's parity criterion; returns (identical blocks, blocks)."""
    p = parity(quant.get(name), x, importance)
    if name in EXACT:
        assert p.identical, f"{name}: {p.blocks - p.same_blocks} of {p.blocks} blocks differ from ggml"
    elif not p.identical:
        assert p.same_blocks >= 0.999 * p.blocks, f"{name}: only {p.same_blocks}/{p.blocks} identical"
        if np.isfinite(p.error_ggml):  # scales overflowing fp16 (|x| ~ 1e30) dequantize to inf/NaN
            assert abs(p.error_ours - p.error_ggml) <= 1e-3 * p.error_ggml, (name, p)
    return p.same_blocks, p.blocks


@pytest.mark.parametrize("with_importance", [False, True], ids=["no-importance", "per-column"])
@pytest.mark.parametrize("name", EXACT + NEAR)
def test_matches_ggml(name, with_importance):
    block = quant.get(name).block_size
    same = total = 0
    for seed, (label, x) in enumerate(_tensors()):
        if x.shape[1] % block:
            continue
        s, t = compare(name, x, _importance(x, seed) if with_importance else None)
        same, total = same + s, total + t
    kind = "per-column importance" if with_importance else "no importance"
    print(f"\n{name} ({kind}): {same}/{total} = {same / total:.2%} blocks byte-identical to ggml")


@pytest.mark.parametrize("name", EXACT + NEAR)
def test_importance_shapes_and_sizes(name):
    qt = quant.get(name)
    x = torch.randn(4, 512)
    col = torch.rand(512) + 0.1
    assert qt.encode(x, col) == qt.encode(x, col.expand(4, 512).clone())
    assert len(qt.encode(x.reshape(2, 2, 512))) == 4 * 512 // qt.block_size * qt.type_size
    assert qt.encode(x.to(torch.bfloat16)) == qt.encode(x.to(torch.bfloat16).float())


def test_chunked_rows_match_whole(monkeypatch):
    """Row chunking (for memory) must not change a byte, with per-element importance too."""
    x = torch.randn(24, 512)
    imp = torch.rand(24, 512) + 0.1
    whole = {(n, i): quant.get(n).encode(x, imp if i else None) for n in EXACT + NEAR
             for i in (0, 1)}
    monkeypatch.setattr(symmetric, "_CHUNK_CPU", 1000)  # one or two rows per chunk
    monkeypatch.setattr(symmetric, "_CHUNK_CPU_ONE_PASS", 1000)
    for (n, i), ref in whole.items():
        assert quant.get(n).encode(x, imp if i else None) == ref, n


def test_nearest_int_is_ggmls_magic_number_trick():
    v = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 3.4999998, 4194303.0, 4194304.5, 6e6, -1e7,
                      float("nan")])
    ref = []
    for f in v.numpy():  # the C: float val = f + 12582912.f; (bits & 0x7fffff) - 0x400000
        bits = (np.float32(f) + np.float32(12582912.0)).view(np.int32)
        ref.append(0 if np.isnan(f) else int((bits & 0x007FFFFF) - 0x00400000))
    assert symmetric.nearest_int(v).tolist() == ref
    assert ref[:5] == [0, 2, 2, 0, -2]  # halves go to even, unlike roundf


def test_iq4nl_thresholds_reproduce_best_index():
    values = np.array(symmetric.KVALUES_IQ4NL, dtype=np.float32)

    def best_index(x: np.float32) -> int:  # ggml's best_index_int8, transcribed for the test
        if x <= values[0]:
            return 0
        if x >= values[-1]:
            return 15
        mu = int(np.searchsorted(values, x, side="right"))
        return mu - 1 if np.float32(x - values[mu - 1]) < np.float32(values[mu] - x) else mu

    probe = [np.float32(v) for t in symmetric._IQ4NL_THRESHOLDS
             for v in (np.nextafter(t, np.float32(-200)), t, np.nextafter(t, np.float32(200)))]
    probe += [np.float32(v) for v in np.linspace(-140, 140, 2001)]
    x = torch.tensor(np.array(probe, dtype=np.float32))
    got = symmetric._best_index_iq4nl(x).tolist()
    assert got == [best_index(p) for p in probe]


_BLOCK = st.one_of(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=32, max_size=32),
    st.builds(lambda v: [v] * 32, st.floats(-1e4, 1e4, allow_nan=False, width=32)),  # constants
    st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-20, 3.0]), min_size=32, max_size=32),
)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["Q4_0", "Q5_0", "IQ4_NL"]), st.lists(_BLOCK, min_size=1, max_size=3),
       st.one_of(st.none(), st.lists(st.floats(0.0009765625, 1024.0, width=32), min_size=32,
                                     max_size=32)))
def test_block_property(name, blocks, imp):
    x = torch.tensor([v for b in blocks for v in b], dtype=torch.float32)[None]
    importance = None if imp is None else torch.tensor(imp * len(blocks), dtype=torch.float32)
    qt = quant.get(name)
    ref = ggml_quantize(x.numpy(), qt.ggml_type, None if importance is None else importance.numpy())
    assert qt.encode(x, importance) == ref


def test_first_absmax_equals_the_scan():
    """The amax/amin shortcut gives the scan's (amax, first signed extreme) for every block:
    ties between +a and -a (the first wins), NaN (never wins), ±inf, zeros and -0."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4096, 32, generator=g)
    x[0] = 0.0
    x[1] = -0.0
    x[2, 3], x[2, 7] = 5.0, -5.0
    x[3, 1], x[3, 9] = -5.0, 5.0
    x[4, 2] = float("nan")
    x[5] = float("nan")
    x[6, 4] = float("inf")
    x[7, 4], x[7, 5] = -float("inf"), float("inf")
    x[8, 0], x[8, 1] = -0.0, 0.0
    x[9:1000] = torch.randint(-3, 4, (991, 32), generator=g).float()   # many ties
    fast, scan = symmetric._first_absmax(x), symmetric._first_absmax_scan(x)
    for a, b in zip(fast, scan):
        assert torch.equal(a, b)
        assert torch.equal(torch.signbit(a), torch.signbit(b))
