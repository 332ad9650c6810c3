"""Gemma 3 text adapter (Gemma3ForCausalLM)."""

from __future__ import annotations

from gguf import GGUFValueType

from ..errors import InputError
from . import register
from .base import ArchAdapter, HParam, Transform, f32, u32


def _shift_norm(w):
    # Gemma3RMSNorm scales by (1 + weight); llama.cpp's RMS norm scales by weight.
    return w.float() + 1.0


@register
class Gemma3Adapter(ArchAdapter):
    hf_architectures = ("Gemma3ForCausalLM",)
    gguf_arch = "gemma3"
    default_tied = True
    default_context_length = 131072
    always_head_dims = True
    layer_map = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }

    def __init__(self, config):
        super().__init__(config)
        c = self.cfg
        if c.get("attn_logit_softcapping") is not None:
            raise InputError("config.json sets attn_logit_softcapping, which Gemma 3 does not use "
                             "and llama.cpp's gemma3 does not implement")
        # llama.cpp scales attention by 1/sqrt(head_dim) for every Gemma 3 size but the 27B
        qpas = c.get("query_pre_attn_scalar")
        if qpas is not None and int(qpas) not in (self.head_dim, self.n_embd // self.n_head):
            raise InputError(f"config.json sets query_pre_attn_scalar={qpas}, which llama.cpp's "
                             f"gemma3 cannot express (it uses head_dim={self.head_dim})")

    def layer_types(self) -> list[str]:
        types = self.cfg.get("layer_types")
        if types is None:
            pattern = int(self.cfg.get("sliding_window_pattern", default=6))
            types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                     for i in range(self.n_layer)]
        if len(types) != self.n_layer:
            raise InputError(f"config.json lists {len(types)} layer_types for "
                             f"{self.n_layer} layers")
        return list(types)

    def hparams(self):
        a, c = self.gguf_arch, self.cfg
        out = super().hparams()
        swa = self.cfg.rope("sliding_attention")
        if swa.get("rope_theta") is not None:
            out.append(f32(f"{a}.rope.freq_base_swa", swa["rope_theta"]))
        if c.get("final_logit_softcapping"):
            out.append(f32(f"{a}.final_logit_softcapping", c.get("final_logit_softcapping")))
        types = self.layer_types()
        if c.get("sliding_window") and "sliding_attention" in types:
            out.append(u32(f"{a}.attention.sliding_window", c.get("sliding_window")))
            out.append(HParam(f"{a}.attention.sliding_window_pattern",
                              [t == "sliding_attention" for t in types],
                              GGUFValueType.ARRAY, GGUFValueType.BOOL))
        return out

    def layer_transform(self, gguf_suffix: str) -> Transform | None:
        return _shift_norm if gguf_suffix.endswith("norm.weight") else None

    def global_transform(self, gguf_name: str) -> Transform | None:
        return _shift_norm if gguf_name == "output_norm.weight" else None
