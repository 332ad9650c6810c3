"""Per-element importance, for every type whose rounding has an importance-aware algorithm."""

import pytest
import torch

from cwp_export import quant
from cwp_export.testing import importance_effect

WEIGHTED = ["Q4_0", "Q5_0", "Q3_K", "Q6_K", "IQ4_NL", "Q4_1", "Q5_1", "Q2_K", "Q4_K", "Q5_K"]


@pytest.mark.parametrize("name", WEIGHTED)
def test_per_element_importance(name):
    """1 % of the elements weighted 1000×: their error drops, the tensor's total barely moves."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(32, 512, generator=g)
    chosen = torch.rand(x.shape, generator=g) < 0.01
    chosen_ratio, total_ratio = importance_effect(quant.get(name), x, chosen)
    print(f"\n{name}: chosen-element error ×{chosen_ratio:.3f}, "
          f"total error ×{total_ratio:.3f} vs no importance")
    assert chosen_ratio < 0.3
    assert total_ratio < 1.3
