"""The global threshold mask: exact counts, one threshold, deterministic ties; the summary."""

from __future__ import annotations

import math

import pytest
import torch

from cwp_export.errors import InputError
from cwp_export.options import parse_fraction
from cwp_export.score import critical_count, global_threshold_mask, summary


def _scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"blk.1.ffn_up.weight": torch.rand(37, 23, generator=g),
            "blk.0.attn_q.weight": torch.rand(64, 64, generator=g) * 2,
            "blk.0.attn_v.weight": torch.randn(16, 64, generator=g)}


@pytest.mark.parametrize("text", ["1%", "0.5%", "50%", "0", "100%"])
def test_exact_count_and_single_threshold(text):
    p = parse_fraction(text)
    scores = _scores()
    mask = global_threshold_mask(scores, p)
    n = sum(t.numel() for t in scores.values())
    k = sum(int(m.sum()) for m in mask.values())
    assert k == critical_count(p, n) == math.floor(p * n + 0.5)
    assert all(mask[name].shape == scores[name].shape and mask[name].dtype == torch.bool
               for name in scores)
    chosen = torch.cat([scores[x][mask[x]] for x in scores])
    rest = torch.cat([scores[x][~mask[x]] for x in scores])
    if chosen.numel() and rest.numel():
        assert chosen.min() >= rest.max()


def test_ties_are_broken_by_name_then_flat_index():
    scores = {"b": torch.ones(4, 5), "a": torch.ones(3, 10)}
    mask = global_threshold_mask(scores, 0.5)  # 25 of 50, all equal
    assert int(mask["a"].sum()) == 25 and int(mask["b"].sum()) == 0
    assert mask["a"].reshape(-1)[:25].all() and not mask["a"].reshape(-1)[25:].any()
    # partial ties at the threshold: the strictly larger ones first, then ties in order
    scores = {"a": torch.tensor([[3.0, 1.0, 2.0, 2.0]]), "b": torch.tensor([[2.0, 0.0]])}
    mask = global_threshold_mask(scores, 0.5)  # 3 of 6
    assert mask["a"].tolist() == [[True, False, True, True]] and not mask["b"].any()
    # the order of the dict does not matter
    again = global_threshold_mask(dict(reversed(list(scores.items()))), 0.5)
    assert all(torch.equal(again[n], mask[n]) for n in scores)
    assert list(again) == ["b", "a"]


def test_rounding_is_half_up():
    scores = {"a": torch.arange(10.0)}
    assert int(global_threshold_mask(scores, 0.05)["a"].sum()) == 1  # 0.5 → 1
    assert int(global_threshold_mask(scores, 0.25)["a"].sum()) == 3  # 2.5 → 3


def test_bad_inputs():
    with pytest.raises(InputError, match="no scores"):
        global_threshold_mask({}, 0.01)
    with pytest.raises(InputError, match="outside"):
        global_threshold_mask(_scores(), 1.5)
    with pytest.raises(InputError, match="outside"):
        global_threshold_mask(_scores(), float("nan"))
    with pytest.raises(InputError, match="NaN"):
        global_threshold_mask({"a": torch.tensor([1.0, float("nan")])}, 0.5)


def test_summary():
    scores = {"a": torch.zeros(100, 200), "b": torch.ones(10, 10)}
    scores["a"][:, 7] = 5.0  # one column holds all critical mass of a
    mask = global_threshold_mask(scores, 100 / 20100)  # exactly column 7 of a
    assert mask["a"][:, 7].all() and int(mask["a"].sum()) == 100 and not mask["b"].any()
    s = summary(scores, mask)
    assert s["critical"] == 100 and s["weights"] == 20100
    a = s["tensors"]["a"]
    assert a["critical_share"] == pytest.approx(100 / 20000) and a["mass_share"] == 1.0
    assert a["top1pct_cols"] == 1.0  # 2 of 200 columns hold it all
    assert a["top1pct_rows"] == pytest.approx(0.01)  # 1 of 100 rows holds 1/100
    assert s["tensors"]["b"]["mass_share"] == 0.0
    with pytest.raises(InputError):
        summary(scores, {"a": mask["a"]})
