"""Converted tiny models run in llama-cpp-python exactly like in transformers."""

import pytest

from cwp_export.testing import ARCHITECTURES, compare_with_transformers


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_f32_logits_and_tokens_match_transformers(arch, tiny_models, converted):
    res = compare_with_transformers(converted(arch, "F32"), tiny_models[arch])
    for lang, r in res.items():
        print(f"{arch} F32 {lang}: max|dlogp|={r['max_abs_dlogprob']:.2e} top1={r['top1_agreement']:.3f}")
        assert r["tokens_equal"], f"{arch}: llama.cpp tokenizes the {lang} prompt differently"
        assert r["top1_agreement"] == 1.0, f"{arch} {lang}"
        assert r["max_abs_dlogprob"] < 0.02, f"{arch} {lang}"


@pytest.mark.parametrize("q,bound", [("F16", 0.05), ("BF16", 0.1), ("Q8_0", 0.3)])
def test_lower_precision_stays_close(q, bound, tiny_models, converted):
    for arch in ("llama", "qwen3", "gemma3"):
        res = compare_with_transformers(converted(arch, q), tiny_models[arch])
        worst = max(r["max_abs_dlogprob"] for r in res.values())
        print(f"{arch} {q}: worst max|dlogp|={worst:.3e}")
        assert all(r["tokens_equal"] for r in res.values())
        assert worst < bound
