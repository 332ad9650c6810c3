"""Every tensor written equals the source weight in the layout llama.cpp expects.

The expected layout is computed here, independently of the adapters: LLaMA Q/K rows reordered from
rotate-half to interleaved pairs, Gemma 3 norms shifted by one, vectors kept in F32.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import load_file

from cwp_export.ggml_ref import quantize as ggml_quantize
from cwp_export.testing import ARCHITECTURES

HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _gguf_name(arch: str, hf: str) -> str | None:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)
    mod, kind = rest.rsplit(".", 1)
    if mod == "post_attention_layernorm":
        mod_g = "post_attention_norm" if arch == "gemma3" else "ffn_norm"
    elif mod == "pre_feedforward_layernorm":
        mod_g = "ffn_norm"
    elif mod == "post_feedforward_layernorm":
        mod_g = "post_ffw_norm"
    else:
        mod_g = HF_TO_GGUF[mod]
    return f"blk.{i}.{mod_g}.{kind}"


def _expected(arch: str, hf: str, w: torch.Tensor, cfg: dict) -> torch.Tensor:
    w = w.float()
    if arch in ("llama", "mistral") and (".q_proj." in hf or ".k_proj." in hf):
        heads = cfg["num_attention_heads"] if ".q_proj." in hf else cfg["num_key_value_heads"]
        d = w.shape[0] // heads
        # row r of head h in HF = pair member (r // (d/2)) of pair (r % (d/2)); llama.cpp wants
        # pairs adjacent: new row 2*p + m  <-  old row m*(d/2) + p
        idx = torch.tensor([m * (d // 2) + p for p in range(d // 2) for m in range(2)])
        w = torch.cat([w[h * d:(h + 1) * d][idx] for h in range(heads)])
    if arch == "gemma3" and hf.endswith("norm.weight"):
        w = w + 1.0
    return w


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("q", ["F32", "F16", "BF16", "Q8_0"])
def test_tensors_match_source(arch, q, tiny_models, converted):
    folder = tiny_models[arch]
    cfg = json.loads((folder / "config.json").read_text())
    src = load_file(folder / "model.safetensors")
    reader = GGUFReader(converted(arch, q))
    got = {t.name: t for t in reader.tensors}
    tied = cfg.get("tie_word_embeddings", arch == "gemma3")
    want = {_gguf_name(arch, n): n for n in src if not (tied and n == "lm_head.weight")}
    assert set(got) == set(want)
    qtype = {"F32": T.F32, "F16": T.F16, "BF16": T.BF16, "Q8_0": T.Q8_0}[q]
    for name, hf in want.items():
        t = got[name]
        exp = _expected(arch, hf, src[hf], cfg)
        assert tuple(int(d) for d in reversed(t.shape)) == tuple(exp.shape), name
        if exp.ndim == 1:
            assert t.tensor_type == T.F32, name
            assert np.array_equal(np.asarray(t.data), exp.numpy()), name
            continue
        assert t.tensor_type == qtype, name
        raw = np.asarray(t.data).tobytes()
        if q == "F32":
            assert raw == exp.numpy().tobytes(), name
        elif q == "F16":
            assert raw == exp.to(torch.float16).numpy().tobytes(), name
        elif q == "BF16":
            assert raw == exp.to(torch.bfloat16).view(torch.int16).numpy().tobytes(), name
        else:
            assert raw == ggml_quantize(exp.numpy(), T.Q8_0), name
            back = dequantize(np.asarray(t.data), T.Q8_0).reshape(exp.shape)
            assert np.abs(back - exp.numpy()).max() <= np.abs(exp.numpy()).max() / 127, name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_metadata(arch, tiny_models, converted):
    cfg = json.loads((tiny_models[arch] / "config.json").read_text())
    r = GGUFReader(converted(arch, "F16"))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    a = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
         "gemma3": "gemma3"}[arch]
    assert f["general.architecture"] == a
    assert f["general.type"] == "model"
    assert f["general.file_type"] == 1
    assert f[f"{a}.block_count"] == cfg["num_hidden_layers"]
    assert f[f"{a}.embedding_length"] == cfg["hidden_size"]
    assert f[f"{a}.feed_forward_length"] == cfg["intermediate_size"]
    assert f[f"{a}.attention.head_count"] == cfg["num_attention_heads"]
    assert f[f"{a}.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert f[f"{a}.context_length"] == cfg["max_position_embeddings"]
    assert f[f"{a}.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    assert len(f["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    assert len(f["tokenizer.ggml.token_type"]) == cfg["vocab_size"]
    assert "{% for m in messages %}" in f["tokenizer.chat_template"]
    if arch == "gemma3":
        assert f["tokenizer.ggml.model"] == "llama"
        assert len(f["tokenizer.ggml.scores"]) == cfg["vocab_size"]
        assert f["gemma3.attention.sliding_window"] == cfg["sliding_window"]
        assert f["gemma3.attention.sliding_window_pattern"] == [True, True, False]
    else:
        assert f["tokenizer.ggml.model"] == "gpt2"
        assert f["tokenizer.ggml.pre"] == ("qwen2" if arch.startswith("qwen") else "smollm")
        assert len(f["tokenizer.ggml.merges"]) > 100


def test_same_input_same_bytes(tiny_models, tmp_path):
    from cwp_export.api import export

    a = export(tiny_models["qwen2"], quant="Q8_0", outdir=tmp_path / "a", progress=False, argv=["x"])
    b = export(tiny_models["qwen2"], quant="Q8_0", outdir=tmp_path / "b", progress=False, argv=["x"])
    assert a.model_path.read_bytes() == b.model_path.read_bytes()
    assert a.manifest.read_bytes() == b.manifest.read_bytes()
