"""Our preset plans give every tensor the type llama.cpp's own quantizer gives it.

Each model is exported to F16 by cwp-export, quantized with llama.cpp (llama-cpp-python's
``llama_model_quantize``) for every preset, and the result's tensor types are compared with
``plan_types`` computed from our conversion plan.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader, LlamaFileType

from cwp_export.errors import InputError
from cwp_export.testing import llamacpp_quantize
from cwp_export.quant.presets import (
    FILE_TYPES,
    PRESETS,
    TensorInfo,
    apply_overrides,
    file_type,
    plan_types,
)

# Tiny models whose rows are 256-multiples (K-quants fit), with enough layers for the layer-position
# rules (16 layers: n/16 = 1, n/8 = 2), plus the default 64-wide model where every K-quant falls
# back.
TINY = {
    "llama-256": ("llama", {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 16}),
    "qwen2-256": ("qwen2", {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4}),
    # 4 query heads on 1 KV head: n_gqa = 4 takes the other Q2_K attn_v branch
    "qwen3-256": ("qwen3", {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 9,
                                "num_key_value_heads": 1, "head_dim": 64}),
    "gemma3-256": ("gemma3", {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6,
                                  "head_dim": 64}),
    "llama-64": ("llama", None),
}


def _compare(folder: Path, tmp: Path) -> dict[str, list[str]]:
    """Export ``folder`` to F16, quantize it with llama.cpp for every preset and return, per
    preset, the tensors whose type differs from our plan (with both types)."""
    from cwp_export.api import export
    from cwp_export.convert import plan

    conv = plan(folder, "F16")
    a = conv.adapter
    tensors = [TensorInfo(t.spec.name, t.spec.shape) for t in conv.tensors]
    f16 = export(folder, quant="F16", outdir=tmp, progress=False, argv=[]).model_path
    diffs: dict[str, list[str]] = {}
    for preset in PRESETS:
        out = tmp / f"{preset}.gguf"
        llamacpp_quantize(f16, out, preset)
        reader = GGUFReader(out)
        theirs = {t.name: t.tensor_type.name for t in reader.tensors}
        ft = reader.fields["general.file_type"]
        assert int(ft.parts[ft.data[0]][0]) == file_type(preset)
        ours = plan_types(preset, tensors, arch=a.gguf_arch, n_layer=a.n_layer, n_head=a.n_head,
                          n_head_kv=a.n_head_kv)
        assert ours.keys() == theirs.keys()
        diffs[preset] = [f"{n}: ours {ours[n]}, llama.cpp {theirs[n]}" for n in ours
                         if ours[n] != theirs[n]]
        out.unlink()
    return diffs


@pytest.mark.parametrize("model", list(TINY))
def test_tiny_models_match_llama_cpp(model: str, tmp_path: Path) -> None:
    from cwp_export.testing import make_tiny_model

    arch, config = TINY[model]
    folder = make_tiny_model(arch, tmp_path / "hf" / model, config=config)
    diffs = _compare(folder, tmp_path / "out")
    assert diffs == {p: [] for p in PRESETS}


@pytest.mark.slow
def test_smollm2_matches_llama_cpp(tmp_path: Path) -> None:
    """576-wide rows: token_embd, attn_* and ffn_gate/up fall back to legacy types."""
    from cwp_export.builtin import builtin_model_path

    diffs = _compare(builtin_model_path("smollm2"), tmp_path)
    assert diffs == {p: [] for p in PRESETS}


# -- rules checked directly --------------------------------------------------------------------

def _dense(n_layer: int, n_embd: int = 256, n_ff: int = 512, tied: bool = True,
           kv: int = 128) -> list[TensorInfo]:
    ts = [TensorInfo("token_embd.weight", (1000, n_embd)),
          TensorInfo("output_norm.weight", (n_embd,))]
    if not tied:
        ts.append(TensorInfo("output.weight", (1000, n_embd)))
    for i in range(n_layer):
        ts += [TensorInfo(f"blk.{i}.attn_norm.weight", (n_embd,)),
               TensorInfo(f"blk.{i}.attn_q.weight", (n_embd, n_embd)),
               TensorInfo(f"blk.{i}.attn_k.weight", (kv, n_embd)),
               TensorInfo(f"blk.{i}.attn_v.weight", (kv, n_embd)),
               TensorInfo(f"blk.{i}.attn_output.weight", (n_embd, n_embd)),
               TensorInfo(f"blk.{i}.ffn_norm.weight", (n_embd,)),
               TensorInfo(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd)),
               TensorInfo(f"blk.{i}.ffn_up.weight", (n_ff, n_embd)),
               TensorInfo(f"blk.{i}.ffn_down.weight", (n_embd, n_ff))]
    return ts


def _plan(preset: str, ts, n_layer: int, **kw):
    args = {"arch": "llama", "n_layer": n_layer, "n_head": 8, "n_head_kv": 4}
    args.update(kw)
    return plan_types(preset, ts, **args)


def test_q4_k_m_layer_positions() -> None:
    n = 32  # n/8 = 4, 7n/8 = 28: first 4, last 4 and every third layer in between
    p = _plan("Q4_K_M", _dense(n), n)
    more = [i for i in range(n) if p[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(n) if p[f"blk.{i}.attn_v.weight"] == "Q6_K"] == more
    assert p["token_embd.weight"] == "Q6_K"  # tied: treated as the output head
    assert p["blk.5.attn_q.weight"] == "Q4_K" and p["blk.5.ffn_gate.weight"] == "Q4_K"
    assert p["blk.5.attn_norm.weight"] == "F32"


def test_untied_embedding_takes_the_default_type() -> None:
    p = _plan("Q4_K_M", _dense(4, tied=False), 4)
    assert p["token_embd.weight"] == "Q4_K" and p["output.weight"] == "Q6_K"
    p = _plan("Q8_0", _dense(4, tied=False), 4)
    assert p["token_embd.weight"] == "Q8_0" and p["output.weight"] == "Q8_0"


def test_fallbacks_for_rows_not_multiple_of_256() -> None:
    ts = _dense(8, n_embd=576, n_ff=1536, kv=192)
    p = _plan("Q4_K_M", ts, 8)
    assert p["token_embd.weight"] == "Q8_0"        # output head: Q8_0 when rows do not fit Q6_K
    assert p["blk.4.attn_q.weight"] == "Q5_0"      # Q4_K → Q5_0
    assert p["blk.0.attn_v.weight"] == "Q8_0"      # Q6_K → Q8_0
    assert p["blk.0.ffn_down.weight"] == "Q6_K"    # 1536-long rows fit
    assert _plan("Q5_K_S", ts, 8)["blk.4.attn_q.weight"] == "Q5_1"
    assert _plan("Q3_K_M", ts, 8)["blk.4.attn_q.weight"] == "Q4_0"
    assert _plan("Q2_K", ts, 8)["blk.4.attn_q.weight"] == "Q4_0"
    odd = [TensorInfo("blk.0.attn_q.weight", (8, 100))]
    assert _plan("Q4_K_M", odd, 1)["blk.0.attn_q.weight"] == "F16"


def test_q2_k_attn_v_by_gqa_and_70b() -> None:
    ts = _dense(2)
    assert _plan("Q2_K", ts, 2, n_head=8, n_head_kv=4)["blk.0.attn_v.weight"] == "Q3_K"
    assert _plan("Q2_K", ts, 2, n_head=8, n_head_kv=2)["blk.0.attn_v.weight"] == "Q4_K"
    big = _dense(80, n_embd=256, n_ff=256)
    p = _plan("Q4_K_S", big, 80, n_head=64, n_head_kv=8)
    assert p["blk.10.attn_v.weight"] == "Q5_K"     # 70B: Q4_K → Q5_K
    p = _plan("Q4_K_S", big, 80, n_head=64, n_head_kv=64)
    assert p["blk.10.attn_v.weight"] == "Q4_K"     # 65B (no GQA) keeps Q4_K


def test_file_types() -> None:
    assert file_type("q4_k_m") == int(LlamaFileType.MOSTLY_Q4_K_M)
    assert set(FILE_TYPES) == set(PRESETS)


def test_refusals() -> None:
    ts = _dense(2)
    with pytest.raises(InputError, match="preset"):
        _plan("Q4_K_X", ts, 2)
    with pytest.raises(InputError, match="experts"):
        _plan("Q4_K_M", ts, 2, n_expert=8)
    with pytest.raises(InputError, match="falcon"):
        _plan("Q4_K_M", ts, 2, arch="falcon")


def test_overrides() -> None:
    ts = _dense(2)
    p = _plan("Q4_K_M", ts, 2)
    q = apply_overrides(p, {"blk.1.attn_q.weight": "q8_0"}, tensors=ts)
    assert q["blk.1.attn_q.weight"] == "Q8_0" and p["blk.1.attn_q.weight"] == "Q4_K"
    with pytest.raises(InputError, match="did you mean 'blk.1.attn_q.weight'"):
        apply_overrides(p, {"blk.1.attn_q.weights": "Q8_0"})
    with pytest.raises(InputError, match="unknown type"):
        apply_overrides(p, {"blk.1.attn_q.weight": "Q7_K"})
    with pytest.raises(InputError, match="vector"):
        apply_overrides(p, {"blk.1.attn_norm.weight": "Q8_0"}, tensors=ts)
    odd = [TensorInfo("blk.0.attn_q.weight", (8, 96))]
    with pytest.raises(InputError, match="whole Q4_K blocks"):
        apply_overrides({"blk.0.attn_q.weight": "Q8_0"}, {"blk.0.attn_q.weight": "Q4_K"},
                        tensors=odd)
