"""Every weight matrix of real SmolLM2-135M, every importance-aware type, against ggml (slow)."""

import pytest
import torch

from cwp_export import quant
from cwp_export.ggml_ref import parity

EXACT = ["Q4_0", "Q5_0", "Q4_1", "Q5_1"]           # must be byte-identical
NEAR = ["Q3_K", "Q6_K", "IQ4_NL", "Q2_K", "Q4_K", "Q5_K"]  # ≥ 99.9% of blocks, same error


def _smollm2_matrices():
    from safetensors import safe_open

    from cwp_export.builtin import builtin_model_path

    path = builtin_model_path("smollm2") / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            if t.ndim == 2:
                yield key, t.to(torch.float32)


def _activation_importance(x: torch.Tensor, seed: int) -> torch.Tensor:
    """imatrix-like: mean square of random activations whose columns have uneven scales."""
    g = torch.Generator().manual_seed(seed)
    col_scale = torch.exp(torch.randn(x.shape[1], generator=g))
    acts = torch.randn(64, x.shape[1], generator=g) * col_scale
    return (acts * acts).mean(dim=0)


@pytest.mark.slow
@pytest.mark.parametrize("with_importance", [False, True], ids=["no-importance", "per-column"])
def test_smollm2_every_matrix(with_importance):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CPUs: one thread is faster than contended OpenMP teams
    try:
        counts = {name: [0, 0] for name in EXACT + NEAR}
        for i, (key, x) in enumerate(_smollm2_matrices()):
            imp = _activation_importance(x, i) if with_importance else None
            for name, tally in counts.items():
                if x.shape[1] % quant.get(name).block_size:
                    continue  # K-types: rows of 576 are not whole super-blocks
                p = parity(quant.get(name), x, imp)
                if name in EXACT:
                    assert p.identical, f"{name} {key}: {p.blocks - p.same_blocks} blocks differ"
                elif not p.identical:
                    assert p.same_blocks >= 0.999 * p.blocks, (name, key, p)
                    assert abs(p.error_ours - p.error_ggml) <= 1e-3 * p.error_ggml, (name, key, p)
                tally[0] += p.same_blocks
                tally[1] += p.blocks
    finally:
        torch.set_num_threads(threads)
    kind = "per-column importance" if with_importance else "no importance"
    for name, (same, total) in counts.items():
        print(f"\nSmolLM2 {name} ({kind}): {same}/{total} = {same / max(total, 1):.2%} blocks "
              f"identical")
        assert total > 0
