"""Qwen2 and Qwen3 adapters. llama.cpp runs both with NEOX-style rope: no Q/K reordering."""

from __future__ import annotations

from . import register
from .base import ArchAdapter
from .llama import LLAMA_LAYER_MAP


@register
class Qwen2Adapter(ArchAdapter):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_arch = "qwen2"
    layer_map = LLAMA_LAYER_MAP
    has_qkv_bias = True


@register
class Qwen3Adapter(ArchAdapter):
    hf_architectures = ("Qwen3ForCausalLM",)
    gguf_arch = "qwen3"
    layer_map = {
        **{k: v for k, v in LLAMA_LAYER_MAP.items() if not k.endswith(".bias")},
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
    }
