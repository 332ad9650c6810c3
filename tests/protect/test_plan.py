"""The planner on hand-made tensor statistics (pure; no model)."""

from __future__ import annotations

import json

import pytest

from cwp_export.errors import InputError
from cwp_export.protect.plan import (
    Plan,
    TensorStats,
    next_type,
    pair_bytes,
    plan,
    type_nbytes,
)

REL = {"Q2_K": 9e-2, "Q3_K": 2e-2, "Q4_0": 7e-3, "Q4_1": 6e-3, "Q4_K": 5e-3, "Q5_0": 2e-3,
       "Q5_1": 1.4e-3, "Q5_K": 1.3e-3, "Q6_K": 3e-4, "Q8_0": 3e-5, "F16": 4e-8}


def _stats(name, out=256, inp=256, mass_cols=None, mass_rows=None, base="Q4_K", ms=1.0):
    cols = [0.0] * inp
    rows = [0.0] * out
    for j, m in (mass_cols or {}).items():
        cols[j] = m
    for i, m in (mass_rows or {}).items():
        rows[i] = m
    return TensorStats(name, (out, inp), base, ms, sum(cols), 10, cols, rows)


def _base(stats):
    return sum(type_nbytes(s.base_type, s.shape[0] * s.shape[1]) for s in stats)


def test_ladder():
    assert next_type("Q4_K", 256) == "Q5_K"
    assert next_type("Q5_0", 576) == "Q5_1"  # 576 is no multiple of 256: no K types
    assert next_type("Q5_1", 576) == "Q8_0"
    assert next_type("Q8_0", 64) == "F16"
    assert next_type("F16", 64) is None


def test_outliers_take_the_densest_columns_and_stop_near_the_fraction():
    a = _stats("blk.0.attn_q.weight", mass_cols={3: 10.0, 7: 1.0, 9: 5.0})
    b = _stats("blk.0.attn_k.weight", mass_cols={1: 8.0})
    stats = [a, b]
    n = 2 * 256 * 256
    # 3 columns of 256 weights ≈ 1.17% of the weights
    p = plan(stats, base_preset="Q4_K_M", fraction=3 * 256 / n, budget_bytes=_base(stats) * 2,
             base_bytes=_base(stats), rel_mse=REL, upgrades=False)
    assert p.columns == {"blk.0.attn_k.weight": [1], "blk.0.attn_q.weight": [3, 9]}
    assert p.restored_weights == 3 * 256
    assert p.adapter_bytes == pair_bytes(256, 256, 2, "Q8_0", "F16") + pair_bytes(
        256, 256, 1, "Q8_0", "F16")
    assert p.estimate["mass_exact"] == pytest.approx(23 / 24)


def test_upgrades_follow_mass_per_byte_and_respect_the_budget():
    hot = _stats("blk.0.ffn_down.weight", mass_cols={0: 100.0})
    cold = _stats("blk.0.ffn_up.weight", mass_cols={0: 1.0})
    stats = [hot, cold]
    step = type_nbytes("Q5_K", 65536) - type_nbytes("Q4_K", 65536)
    p = plan(stats, base_preset="Q4_K_M", fraction=0.0, budget_bytes=_base(stats) + step,
             base_bytes=_base(stats), rel_mse=REL)
    assert p.types == {"blk.0.ffn_down.weight": "Q5_K", "blk.0.ffn_up.weight": "Q4_K"}
    assert p.upgrades == {"blk.0.ffn_down.weight": ["Q4_K", "Q5_K"]}
    assert p.model_bytes + p.adapter_bytes <= p.budget_bytes
    big = plan(stats, base_preset="Q4_K_M", fraction=0.0, budget_bytes=_base(stats) * 10,
               base_bytes=_base(stats), rel_mse=REL)
    assert big.types["blk.0.ffn_down.weight"] == "F16" and big.types["blk.0.ffn_up.weight"] == "F16"


def test_outlier_mass_is_not_counted_again_for_upgrades():
    covered = _stats("blk.0.attn_v.weight", mass_cols={5: 100.0})  # all its mass in one column
    other = _stats("blk.0.attn_output.weight", mass_cols={0: 1.0, 1: 1.0})
    stats = [covered, other]
    p = plan(stats, base_preset="Q4_K_M", fraction=256 / (2 * 65536),
             budget_bytes=_base(stats) + 20000, base_bytes=_base(stats), rel_mse=REL)
    assert p.columns == {"blk.0.attn_v.weight": [5]}
    assert p.types["blk.0.attn_v.weight"] == "Q4_K"  # nothing left to gain there
    assert p.types["blk.0.attn_output.weight"] != "Q4_K"


def test_rows_and_columns_share_their_crossing_weight():
    t = _stats("blk.0.attn_q.weight", out=64, inp=128, base="Q4_0", mass_cols={0: 5.0},
               mass_rows={2: 4.0})
    p = plan([t], base_preset="Q4_0", fraction=1.0, budget_bytes=_base([t]) * 10,
             base_bytes=_base([t]), rel_mse=REL, adapter_types=("F16", "F16"), upgrades=False)
    assert p.columns == {t.name: [0]} and p.rows == {t.name: [2]}
    assert p.restored_weights == 64 + 128 - 1


def test_plan_is_deterministic_and_json_round_trips():
    stats = [_stats(f"blk.{i}.attn_q.weight", mass_cols={j: 1.0 for j in range(5)})
             for i in range(3)]  # ties everywhere
    kw = dict(base_preset="Q4_K_M", fraction=0.01, budget_bytes=_base(stats) + 40000,
              base_bytes=_base(stats), rel_mse=REL)
    a, b = plan(stats, **kw), plan(list(reversed(stats)), **kw)
    assert a.dumps() == b.dumps()
    assert Plan.from_json(json.loads(a.dumps())).dumps() == a.dumps()


def test_bad_budgets_and_types():
    s = [_stats("blk.0.attn_q.weight")]
    with pytest.raises(InputError, match="smaller than the plain"):
        plan(s, base_preset="Q4_K_M", fraction=0.01, budget_bytes=_base(s) - 1,
             base_bytes=_base(s), rel_mse=REL)
    with pytest.raises(InputError, match="adapter storage type"):
        plan(s, base_preset="Q4_K_M", fraction=0.01, budget_bytes=_base(s),
             base_bytes=_base(s), rel_mse=REL, adapter_types=("Q4_0", "F16"))
    # an exact-fit budget: nothing is added
    p = plan(s, base_preset="Q4_K_M", fraction=0.5, budget_bytes=_base(s), base_bytes=_base(s),
             rel_mse=REL)
    assert p.columns == {} and p.upgrades == {} and p.model_bytes == _base(s)
