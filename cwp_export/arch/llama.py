"""LLaMA-family adapter (LlamaForCausalLM incl. SmolLM2, MistralForCausalLM)."""

from __future__ import annotations

from functools import partial

from . import register
from .base import ArchAdapter, TensorSpec, Transform, permute_rope_rows, u32

LLAMA_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


@register
class LlamaAdapter(ArchAdapter):
    hf_architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    gguf_arch = "llama"
    layer_map = LLAMA_LAYER_MAP

    def hparams(self):
        return super().hparams() + [
            u32("llama.rope.dimension_count", self.head_dim),
            u32("llama.vocab_size", self.vocab_size),
        ]

    def layer_transform(self, gguf_suffix: str) -> Transform | None:
        # llama.cpp's LLaMA rope rotates adjacent pairs; HF rotates halves: reorder Q and K rows.
        if gguf_suffix.startswith("attn_q."):
            return partial(permute_rope_rows, n_head=self.n_head)
        if gguf_suffix.startswith("attn_k."):
            return partial(permute_rope_rows, n_head=self.n_head_kv)
        return None

    def extra_tensors(self) -> list[TensorSpec]:
        spec = self.rope_freqs_llama3()
        return [spec] if spec else []
