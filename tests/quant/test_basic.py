"""F16, BF16 and Q8_0 encoders against ggml's own quantizer, byte for byte."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from hypothesis import given, settings
from hypothesis import strategies as st

from cwp_export import quant
from cwp_export.errors import InputError
from cwp_export.ggml_ref import quantize as ggml_quantize
from cwp_export.quant.basic import round_half_away


def _tensors():
    g = torch.Generator().manual_seed(0)
    yield "normal", torch.randn(64, 256, generator=g)
    yield "heavy-tailed", torch.randn(32, 128, generator=g) ** 3 * 10
    yield "tiny", torch.randn(16, 64, generator=g) * 1e-30
    yield "huge", torch.randn(16, 64, generator=g) * 1e30
    yield "zeros", torch.zeros(8, 64)
    yield "constant", torch.full((8, 64), -3.25)
    halves = torch.arange(-64, 64, dtype=torch.float32).reshape(4, 32) + 0.5  # exact .5 cases
    yield "halves", halves
    yield "one-hot", torch.eye(64)


@pytest.mark.parametrize("name", ["F16", "BF16", "Q8_0"])
def test_matches_ggml(name):
    qt = quant.get(name)
    for label, x in _tensors():
        ours = qt.encode(x)
        ref = ggml_quantize(x.numpy(), qt.ggml_type)
        assert ours == ref, f"{name} differs from ggml on the {label} tensor"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=32, max_size=32),
       st.integers(1, 4))
def test_q8_0_property(values, reps):
    x = torch.tensor(values * reps, dtype=torch.float32).reshape(reps, 32)
    assert quant.get("Q8_0").encode(x) == ggml_quantize(x.numpy(), T.Q8_0)


def test_q8_0_signed_zero_blocks_and_chunk_edges():
    from cwp_export.quant import basic

    n = basic.Q8_0_CHUNK_BLOCKS * 32
    x = torch.randn(3, n) * 3
    x[0, :64] = -0.0          # all-(-0) blocks: ggml's fabsf/MAX scan gives d = +0
    x[1, 32:64] = 0.0
    x[2, n - 32:] = torch.tensor([0.5, 1.5, -2.5, 127.0] * 8) / 127.0
    assert quant.get("Q8_0").encode(x) == ggml_quantize(x.numpy(), T.Q8_0)


def test_bf16_passthrough_from_bf16_source():
    x = torch.randn(4, 32).to(torch.bfloat16)
    assert quant.get("BF16").encode(x) == ggml_quantize(x.float().numpy(), T.BF16)


def test_round_half_away_from_zero():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 2.4999998])
    assert round_half_away(x).tolist() == [1.0, 2.0, 3.0, -1.0, -3.0, 0.0, 2.0]


def test_unknown_type_lists_supported():
    with pytest.raises(InputError, match="supported: F32, F16, BF16, Q8_0"):
        quant.get("Q9_9")


def test_non_finite_refused_with_tensor_name():
    x = torch.ones(2, 32)
    x[1, 3] = float("nan")
    with pytest.raises(InputError, match="blk.0.attn_q.weight holds 1 NaN"):
        quant.check_finite("blk.0.attn_q.weight", x)


def test_sizes():
    assert len(quant.get("Q8_0").encode(torch.ones(3, 64))) == 3 * 2 * 34
    assert np.frombuffer(quant.get("F32").encode(torch.ones(5)), dtype=np.float32).tolist() == [1.0] * 5


def test_rows_must_hold_whole_blocks():
    with pytest.raises(ValueError, match="rows of 48 values do not hold whole Q8_0 blocks of 32"):
        quant.get("Q8_0").encode(torch.ones(2, 48))


def test_importance_shape_is_checked():
    with pytest.raises(ValueError, match="fits neither a column"):
        quant.get("Q8_0").encode(torch.ones(2, 64), torch.ones(3))


def test_fast_int8_rounding_equals_roundf():
    from cwp_export.quant.basic import round_half_away_int8

    halves = torch.arange(-254, 255, dtype=torch.float32) / 2.0
    y = torch.cat([halves, torch.nextafter(halves, torch.tensor(0.0)),
                   torch.nextafter(halves, torch.tensor(1e3)), torch.randn(100_000) * 50,
                   torch.tensor([0.49999997, -0.49999997, 0.0, -0.0, 127.0, -127.0])]).clamp(-127, 127)
    assert torch.equal(round_half_away_int8(y.clone()), round_half_away(y).to(torch.int8))
