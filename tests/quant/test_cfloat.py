"""float32 helpers with C semantics (``cwp_export/quant/cfloat.py``)."""

from __future__ import annotations

import torch

from cwp_export.quant.cfloat import nearest_int, nearest_int_clamped, nearest_int_float, seq_sum0


def test_seq_sum0_adds_left_to_right_in_float32():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 16, 17, 32, 256):
        # wide magnitudes: any other summation order or a wider accumulator changes the last bits
        t = torch.randn(n, 3, 1001, generator=g) * torch.exp(torch.randn(n, 3, 1001, generator=g) * 4)
        acc = torch.zeros_like(t[0])
        for i in range(n):
            acc = acc + t[i]
        assert torch.equal(seq_sum0(t), acc)
    # C's accumulator starts at +0: a sum of negative zeros is +0
    assert str(seq_sum0(torch.tensor([[-0.0], [-0.0]])).item()) == "0.0"


def _awkward_values() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    mags = 10.0 ** torch.randint(-3, 39, (100_000,), generator=g).float()
    halves = torch.arange(-80, 81, dtype=torch.float32) / 2
    return torch.cat([torch.randn(100_000, generator=g) * mags, halves,
                      torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0,
                                    4194303.0, 4194303.5, -4194304.5, 8388608.0, 3e38, -3e38,
                                    -12582912.0, 12582911.0, -25165824.0])])


def test_nearest_int_float_equals_the_bit_trick():
    v = _awkward_values()
    assert torch.equal(nearest_int_float(v), nearest_int(v).to(torch.float32))


def test_nearest_int_clamped_in_range_and_beyond():
    v = _awkward_values()
    for lo, hi in ((0, 15), (-32, 31), (-4, 3)):
        want = nearest_int(v).clamp(lo, hi).to(torch.float32)
        assert torch.equal(nearest_int_clamped(v.clone(), lo, hi), want)          # exact path
        small = v[v.abs() < 1000]
        assert torch.equal(nearest_int_clamped(small.clone(), lo, hi),           # fast path
                           nearest_int(small).clamp(lo, hi).to(torch.float32))
    assert nearest_int_clamped(torch.empty(0), 0, 15).numel() == 0
