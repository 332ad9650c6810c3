"""Tiny random llama / qwen3 models in float32 for the scoring tests (built once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """arch → (model, tokenizer, folder), float32, eval mode."""
    import torch
    import transformers as tf

    from cwp_export.testing import make_tiny_model

    root = tmp_path_factory.mktemp("score-tiny")
    cache = {}

    def get(arch: str):
        if arch not in cache:
            folder = make_tiny_model(arch, root / arch)
            model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            tok = tf.AutoTokenizer.from_pretrained(folder)
            cache[arch] = (model, tok, folder)
        return cache[arch]

    return get
