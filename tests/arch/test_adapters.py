"""Adapter invariants: registry, rope row order, shape checks, config handling."""

import pytest
import torch

from cwp_export.arch import adapter_for, supported_architectures
from cwp_export.arch.base import Config, permute_rope_rows
from cwp_export.errors import InputError


def _hf_rope(x, pos, base=10000.0):
    """transformers' rotate-half rope on one head vector."""
    d = x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.cat([pos * inv, pos * inv])
    rot = torch.cat([-x[d // 2:], x[: d // 2]])
    return x * ang.cos() + rot * ang.sin()


def _llamacpp_rope(x, pos, base=10000.0):
    """llama.cpp's LLaMA (non-NEOX) rope: rotates adjacent pairs (x[2i], x[2i+1])."""
    d = x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    a, b = x[0::2], x[1::2]
    c, s = (pos * inv).cos(), (pos * inv).sin()
    out = torch.empty_like(x)
    out[0::2], out[1::2] = a * c - b * s, a * s + b * c
    return out


@pytest.mark.parametrize("n_head,head_dim", [(1, 8), (4, 16), (3, 64)])
def test_permuted_rows_make_llamacpp_rope_equal_hf_rope(n_head, head_dim):
    torch.manual_seed(0)
    w = torch.randn(n_head * head_dim, 24, dtype=torch.float64)
    x = torch.randn(24, dtype=torch.float64)
    wp = permute_rope_rows(w, n_head)
    for pos in (0, 1, 7, 300):
        for h in range(n_head):
            sl = slice(h * head_dim, (h + 1) * head_dim)
            hf = _hf_rope(w[sl] @ x, pos)
            lc = _llamacpp_rope(wp[sl] @ x, pos)
            # same rotated vector up to the row order, so every q·k dot product is the same
            assert torch.allclose(torch.sort(hf).values, torch.sort(lc).values)
            k = torch.randn(24, dtype=torch.float64)
            assert torch.allclose(hf @ _hf_rope(w[sl] @ k, pos + 3),
                                  lc @ _llamacpp_rope(wp[sl] @ k, pos + 3))


def test_permutation_is_a_row_reordering():
    w = torch.arange(32 * 3, dtype=torch.float32).reshape(32, 3)
    p = permute_rope_rows(w, 2)
    assert sorted(p[:, 0].tolist()) == w[:, 0].tolist()
    assert p[:, 0].tolist()[:4] == [0.0, 24.0, 3.0, 27.0]  # head 0: rows 0, 8, 1, 9 (×3)


def _cfg(**over):
    base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "max_position_embeddings": 128, "rms_norm_eps": 1e-5}
    base.update(over)
    return base


def test_registry_lists_the_supported_architectures():
    assert supported_architectures() == ["Gemma3ForCausalLM", "LlamaForCausalLM",
                                         "MistralForCausalLM", "Qwen2ForCausalLM",
                                         "Qwen3ForCausalLM"]
    with pytest.raises(InputError, match="GPT2LMHeadModel is not supported; supported: Gemma3"):
        adapter_for(_cfg(architectures=["GPT2LMHeadModel"]))
    with pytest.raises(InputError, match="no 'architectures'"):
        adapter_for(_cfg(architectures=None))


def test_shape_mismatch_and_unknown_tensors_are_refused():
    a = adapter_for(_cfg())
    shapes = {s.source: s.shape for s in a.tensor_specs(
        {**{f"model.layers.{i}.{k}": v for i in range(2) for k, v in {
            "input_layernorm.weight": (64,), "self_attn.q_proj.weight": (64, 64),
            "self_attn.k_proj.weight": (32, 64), "self_attn.v_proj.weight": (32, 64),
            "self_attn.o_proj.weight": (64, 64), "post_attention_layernorm.weight": (64,),
            "mlp.gate_proj.weight": (128, 64), "mlp.up_proj.weight": (128, 64),
            "mlp.down_proj.weight": (64, 128)}.items()},
         "model.embed_tokens.weight": (100, 64), "model.norm.weight": (64,),
         "lm_head.weight": (100, 64)})}
    assert len(shapes) == 2 * 9 + 3
    bad = dict(shapes)
    bad["model.layers.1.mlp.up_proj.weight"] = (127, 64)
    with pytest.raises(InputError, match=r"up_proj.weight' has shape \[127, 64\] but config.json implies \[128, 64\]"):
        a.tensor_specs(bad)
    extra = dict(shapes, **{"model.layers.0.mystery.weight": (3,)})
    with pytest.raises(InputError, match="mystery"):
        a.tensor_specs(extra)
    missing = {k: v for k, v in shapes.items() if k != "model.norm.weight"}
    with pytest.raises(InputError, match="'model.norm.weight' is missing"):
        a.tensor_specs(missing)


def test_rope_config_styles_agree():
    old = Config({"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}})
    new = Config({"rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}})
    assert old.rope()["rope_theta"] == new.rope()["rope_theta"] == 5e5
    assert old.rope()["rope_type"] == new.rope()["rope_type"] == "linear"
    g_old = Config({"rope_theta": 1e6, "rope_local_base_freq": 1e4})
    g_new = Config({"rope_parameters": {"full_attention": {"rope_theta": 1e6},
                                        "sliding_attention": {"rope_theta": 1e4}}})
    for c in (g_old, g_new):
        assert c.rope()["rope_theta"] == 1e6
        assert c.rope("sliding_attention")["rope_theta"] == 1e4


def test_rope_hparams():
    keys = {h.key: h.value for h in adapter_for(_cfg(rope_scaling={"rope_type": "linear", "factor": 4.0})).hparams()}
    assert keys["llama.rope.scaling.type"] == "linear" and keys["llama.rope.scaling.factor"] == 4.0
    with pytest.raises(InputError, match="rope type 'dynamic'"):
        adapter_for(_cfg(rope_scaling={"rope_type": "dynamic", "factor": 2.0})).hparams()


def test_llama3_rope_freqs_match_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 10000.0}
    a = adapter_for(_cfg(rope_scaling=rope))
    (spec,) = a.extra_tensors()
    factors = spec.generate()
    hf_cfg = LlamaConfig(**{k: v for k, v in _cfg().items() if k != "architectures"},
                         rope_parameters=rope)
    inv_scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    d = a.head_dim
    inv = 1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    assert torch.allclose(inv / factors, inv_scaled, rtol=1e-6)


def test_gemma3_rejects_what_llamacpp_cannot_express():
    g = _cfg(architectures=["Gemma3ForCausalLM"], head_dim=16, query_pre_attn_scalar=100)
    with pytest.raises(InputError, match="query_pre_attn_scalar=100"):
        adapter_for(g)
