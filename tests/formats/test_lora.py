"""LoRA adapter files: layout read back by gguf-py, refusals, and the real llama.cpp applying them.

The llama.cpp checks compare logits of a base model + adapter with a reference GGUF whose adapted
tensors hold W_q with the chosen columns/rows restored (written as F32 with the project's writer;
all other tensors are byte copies of the base model's). llama-cpp-python runs with an F32 KV cache.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize

from cwp_export.errors import InputError
from cwp_export.formats.gguf_writer import GGUFWriter
from cwp_export.formats.lora import lora_target, read_lora_adapter, write_lora_adapter
from cwp_export.protect.outliers import outlier_pair, top_residual_columns

TINY = {"hidden_size": 256, "intermediate_size": 512}  # rows of 256: Q4_K blocks, not fallbacks
LINEARS = ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight",
           "blk.0.attn_output.weight", "blk.1.ffn_gate.weight", "blk.1.ffn_up.weight",
           "blk.1.ffn_down.weight"]


# -- helpers ------------------------------------------------------------------------------------
def gguf_tensors(path, names=None) -> dict[str, torch.Tensor]:
    """Dequantized float32 tensors of a GGUF in numpy (PyTorch) layout, read with gguf-py."""
    out = {}
    for t in GGUFReader(str(path)).tensors:
        if names is None or t.name in names:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            v = dequantize(np.asarray(t.data), GGMLQuantizationType(int(t.tensor_type)))
            out[t.name] = torch.from_numpy(np.array(v, dtype=np.float32).reshape(shape))
    return out


def patched_copy(src, dst, replace: dict[str, torch.Tensor]):
    """A copy of model ``src`` (same metadata and tensor order) whose ``replace`` tensors are
    written as F32 with the given values; every other tensor keeps its type and bytes."""
    reader = GGUFReader(str(src))
    w = GGUFWriter()
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        w.add(key, field.contents(), field.types[0], sub)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if t.name in replace:
            v = replace[t.name].to(torch.float32).contiguous()
            assert tuple(v.shape) == shape
            w.add_tensor(t.name, shape, GGMLQuantizationType.F32, lambda v=v: v.numpy().tobytes())
        else:
            w.add_tensor(t.name, shape, GGMLQuantizationType(int(t.tensor_type)),
                         lambda t=t: np.asarray(t.data).tobytes())
    w.write(dst)
    return dst


def llama_logits(model, ids, lora=None) -> torch.Tensor:
    import llama_cpp

    kw = {"lora_path": str(lora)} if lora else {}
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=128, n_batch=128, logits_all=True,
                          verbose=False, n_threads=2, seed=0, type_k=0, type_v=0, **kw)
    try:
        # llama-cpp-python 0.3.36 checks a failed adapter load with `is None`, but the binding
        # returns a NULL pointer object, so a rejected adapter would crash the first decode
        assert not lora or llm._lora_adapter, f"llama.cpp refused the adapter {lora}"
        llm.reset()
        llm.eval(ids)
        return torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)
    finally:
        llm.close()


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untied and a tied tiny llama: the Q4_K_M model and the original weights (GGUF layout,
    read from an F32 export, so the Q/K row permutation is already applied)."""
    from cwp_export.api import export
    from cwp_export.testing import make_tiny_model

    root = tmp_path_factory.mktemp("lora")
    out = {}
    for kind, cfg in (("untied", {**TINY, "tie_word_embeddings": False}), ("tied", TINY)):
        folder = make_tiny_model("llama", root / kind, config=cfg)
        q = export(folder, quant="Q4_K_M", outdir=root / f"{kind}-q", progress=False, argv=[])
        f = export(folder, quant="F32", outdir=root / f"{kind}-f32", progress=False, argv=[])
        out[kind] = (q.model_path, gguf_tensors(f.model_path))
    return out


@pytest.fixture(scope="module")
def restored(tiny, tmp_path_factory):
    """Pairs restoring 8 random columns and 4 random rows of 9 tensors of the untied model, and
    the models to compare, all tensors F32 so llama.cpp multiplies F32 activations everywhere
    (a quantized tensor downstream would quantize the activations, and a tiny difference can
    flip a rounding there): ``deq`` (every tensor W_q: the Q4_K base's weights), ``ref`` (W_q
    with those columns/rows restored) and ``ref_linear`` (only the linears and the head
    restored: what a Q8_0-A adapter, which cannot hold token_embd's pair, can reach)."""
    root = tmp_path_factory.mktemp("restored")
    model, orig = tiny["untied"]
    names = LINEARS + ["output.weight", "token_embd.weight"]
    wq = gguf_tensors(model)
    g = torch.Generator().manual_seed(0)
    pairs, ref = {}, {}
    for name in names:
        w = orig[name]
        cols = torch.randperm(w.shape[1], generator=g)[:8].tolist()
        rows = torch.randperm(w.shape[0], generator=g)[:4].tolist()
        pairs[name] = outlier_pair(w, wq[name], cols, rows, name=name)
        r = wq[name].clone()
        r[:, cols] = w[:, cols]
        r[rows, :] = w[rows, :]
        ref[name] = r
    files = {
        "base": model,
        "deq": patched_copy(model, root / "deq.gguf", wq),
        "ref": patched_copy(model, root / "ref.gguf", {**wq, **ref}),
        "ref_linear": patched_copy(model, root / "ref_linear.gguf",
                                   {**wq, **{n: ref[n] for n in names if n != "token_embd.weight"}}),
    }
    return pairs, files, root


# -- file layout ----------------------------------------------------------------------------------
def _pairs(seed=0, rank=5):
    g = torch.Generator().manual_seed(seed)
    return {"blk.0.attn_q.weight": (torch.randn(rank, 64, generator=g), torch.randn(64, rank, generator=g)),
            "blk.1.ffn_down.weight": (torch.randn(rank + 2, 128, generator=g),
                                      torch.randn(64, rank + 2, generator=g))}


def test_round_trip_f32_layout_and_metadata(tmp_path):
    pairs = _pairs()
    size, sha = write_lora_adapter(tmp_path / "a.gguf", "llama", pairs, base_model_name="tiny")
    data = (tmp_path / "a.gguf").read_bytes()
    assert size == len(data) and len(sha) == 64
    reader = GGUFReader(str(tmp_path / "a.gguf"))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert meta == {"general.architecture": "llama", "general.type": "adapter",
                    "adapter.type": "lora", "adapter.lora.alpha": 0.0,
                    "general.base_model.count": 1, "general.base_model.0.name": "tiny"}
    assert reader.fields["adapter.lora.alpha"].types == [GGUFValueType.FLOAT32]  # read as f32
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors) == ["blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b",
                             "blk.1.ffn_down.weight.lora_a", "blk.1.ffn_down.weight.lora_b"]
    # ggml ne order: lora_a [in, rank], lora_b [rank, out] (llama.cpp: W.ne[0] == a.ne[0],
    # W.ne[1] == b.ne[1], a.ne[1] == b.ne[0])
    assert tensors["blk.0.attn_q.weight.lora_a"].shape.tolist() == [64, 5]
    assert tensors["blk.0.attn_q.weight.lora_b"].shape.tolist() == [5, 64]
    assert tensors["blk.1.ffn_down.weight.lora_a"].shape.tolist() == [128, 7]
    assert tensors["blk.1.ffn_down.weight.lora_b"].shape.tolist() == [7, 64]
    assert {t.tensor_type for t in reader.tensors} == {GGMLQuantizationType.F32}
    back = read_lora_adapter(tmp_path / "a.gguf")
    assert list(back) == list(pairs)
    for name, (a, b) in pairs.items():
        assert torch.equal(back[name][0], a) and torch.equal(back[name][1], b)
    # deterministic: the same input gives the same bytes
    assert write_lora_adapter(tmp_path / "b.gguf", "llama", pairs, base_model_name="tiny") == (size, sha)
    assert not list(tmp_path.glob(".*partial*"))


def test_round_trip_f16_and_q8_0(tmp_path):
    pairs = _pairs()
    write_lora_adapter(tmp_path / "h.gguf", "llama", pairs, a_type="F16", b_type="F16")
    reader = GGUFReader(str(tmp_path / "h.gguf"))
    assert {t.tensor_type for t in reader.tensors} == {GGMLQuantizationType.F16}
    back = read_lora_adapter(tmp_path / "h.gguf")
    for name, (a, b) in pairs.items():
        assert torch.equal(back[name][0], a.half().float()) and torch.equal(back[name][1], b.half().float())

    w = torch.randn(64, 128)
    wq = w + 0.01 * torch.randn(64, 128)
    one_hot = outlier_pair(w, wq, [0, 31, 32, 100], [])
    write_lora_adapter(tmp_path / "q.gguf", "llama", {"blk.0.ffn_down.weight": one_hot},
                       a_type="Q8_0", b_type="F16")
    types = {t.name: t.tensor_type for t in GGUFReader(str(tmp_path / "q.gguf")).tensors}
    assert types == {"blk.0.ffn_down.weight.lora_a": GGMLQuantizationType.Q8_0,
                     "blk.0.ffn_down.weight.lora_b": GGMLQuantizationType.F16}
    a, b = read_lora_adapter(tmp_path / "q.gguf")["blk.0.ffn_down.weight"]
    ones = a[one_hot.A == 1.0]
    err = (ones - 1.0).abs().max().item()
    print(f"\nQ8_0 one-hot A: max error of the 1.0 entries {err:.3g}")
    assert err < 1e-4  # d = 1/127 in F16: 127·d = 0.99994
    assert torch.equal(a[one_hot.A == 0.0], torch.zeros(int((one_hot.A == 0).sum())))
    assert torch.equal(b, one_hot.B.half().float())


def test_token_embd_is_stored_flipped(tmp_path, tiny):
    model, orig = tiny["untied"]
    w = orig["token_embd.weight"]  # [n_vocab, n_embd]
    p = outlier_pair(w, w * 0.9, [1, 2], [5, 6, 7])
    write_lora_adapter(tmp_path / "e.gguf", "llama", {"token_embd.weight": p}, base_model=model)
    t = {t.name: t.shape.tolist() for t in GGUFReader(str(tmp_path / "e.gguf")).tensors}
    n_vocab, n_embd = w.shape
    # llama.cpp's lookup path: W.ne[0] (n_embd) == lora_b.ne[1], W.ne[1] (n_vocab) == lora_a.ne[1]
    assert t == {"token_embd.weight.lora_a": [5, n_vocab], "token_embd.weight.lora_b": [5, n_embd]}
    a, b = read_lora_adapter(tmp_path / "e.gguf")["token_embd.weight"]
    assert torch.equal(a, p.A) and torch.equal(b, p.B)


def test_lora_targets():
    assert lora_target("blk.12.attn_q.weight") and lora_target("output.weight")
    assert lora_target("token_embd.weight") and lora_target("blk.0.ffn_down.weight")
    assert not lora_target("blk.0.attn_norm.weight") and not lora_target("output_norm.weight")
    assert not lora_target("blk.0.attn_q.bias") and not lora_target("rope_freqs.weight")


def test_refusals(tmp_path, tiny):
    untied, _ = tiny["untied"]
    tied, _ = tiny["tied"]
    a, b = torch.randn(2, 256), torch.randn(256, 2)
    ok = {"blk.0.attn_q.weight": (a, b)}

    def refuse(match, pairs=ok, **kw):
        with pytest.raises(InputError, match=match):
            write_lora_adapter(tmp_path / "x.gguf", kw.pop("arch", "llama"), pairs, **kw)
        assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.iterdir())

    refuse("unknown architecture", arch="lama")
    refuse("a_type 'Q4_0' is not supported", a_type="Q4_0")
    refuse("b_type 'Q8_0' is not supported", b_type="Q8_0")
    refuse("alpha must be finite", alpha=math.inf)
    refuse("no LoRA pairs", pairs={})
    refuse("2-D", pairs={"blk.0.attn_norm.weight": (torch.randn(2, 256)[0], torch.randn(2))})
    refuse("applies LoRA pairs only to", pairs={"blk.0.attn_norm.weight": (a[:, :1].T, b[:1])})
    refuse("applies LoRA pairs only to", pairs={"blk.0.attn_q.bias": (a, b)})
    refuse("B must be", pairs={"blk.0.attn_q.weight": (a, torch.randn(256, 3))})
    refuse("rank 0", pairs={"blk.0.attn_q.weight": (a[:0], b[:, :0])})
    refuse("NaN", pairs={"blk.0.attn_q.weight": (a * math.nan, b)})
    refuse("F16 range", pairs={"blk.0.attn_q.weight": (a, b * 1e6)}, b_type="F16")
    refuse("not a multiple of the Q8_0 block", pairs={"blk.0.attn_q.weight": (a[:, :40], b)},
           a_type="Q8_0")
    # against a base model
    refuse("differs from the base model's 'llama'", arch="qwen2", base_model=untied)
    refuse("no such tensor in the base model", pairs={"blk.7.attn_q.weight": (a, b)},
           base_model=untied)
    refuse(r"the base model's is \[128, 256\]", pairs={"blk.0.attn_k.weight": (a, b)},
           base_model=untied)
    refuse("ties its output head", pairs={"output.weight": (a, torch.randn(608, 2))},
           base_model=tied)
    embd = {"token_embd.weight": (torch.randn(2, 256), torch.randn(608, 2))}
    refuse("pass base_model=", pairs=embd)
    refuse("ties its output head to token_embd.weight", pairs=embd, base_model=tied)
    refuse("A is stored in rows of 2 values", pairs=embd, base_model=untied, a_type="Q8_0")
    # the untied model accepts all of these
    write_lora_adapter(tmp_path / "ok.gguf", "llama",
                       {**embd, "output.weight": (a, torch.randn(608, 2)), **ok}, base_model=untied)


def test_reader_refuses_other_files(tmp_path, tiny):
    with pytest.raises(InputError, match="not a LoRA adapter"):
        read_lora_adapter(tiny["tied"][0])
    with pytest.raises(InputError, match="cannot read"):
        read_lora_adapter(tmp_path / "missing.gguf")


# -- real llama.cpp -------------------------------------------------------------------------------
IDS = list(range(3, 103))


def test_llamacpp_applies_the_pairs_exactly(restored):
    """F32 pairs on a model whose adapted tensors are F32 W_q (the Q4_K base's weights, stored so
    llama.cpp multiplies them with F32 activations): the logits equal the restored reference's up
    to float32 summation order. Covers attention, feed-forward, output.weight and the
    token_embd lookup path, with scale 1 from alpha = 0 at ranks 12."""
    pairs, files, root = restored
    write_lora_adapter(root / "f32.gguf", "llama", pairs, base_model=files["base"])
    ref = llama_logits(files["ref"], IDS)
    deq = llama_logits(files["deq"], IDS)
    got = llama_logits(files["deq"], IDS, root / "f32.gguf")
    d_ad, d_none = max_diff(got, ref), max_diff(deq, ref)
    print(f"\nmax |logit| {ref.abs().max():.3g}; deq+F32 adapter vs ref {d_ad:.3g}; "
          f"deq without adapter vs ref {d_none:.3g}")
    assert d_ad < 1e-4  # float32 tolerance (measured ~5e-6 on logits of magnitude ~5)
    assert d_none > 0.05  # the restoration matters: without the adapter the logits differ


def test_llamacpp_f16_and_q8_0_pairs(restored):
    pairs, files, root = restored
    write_lora_adapter(root / "f16.gguf", "llama", pairs, a_type="F16", b_type="F16",
                       base_model=files["base"])
    linear = {n: p for n, p in pairs.items() if n in LINEARS + ["output.weight"]}
    write_lora_adapter(root / "q8.gguf", "llama", linear, a_type="Q8_0", b_type="F16",
                       base_model=files["base"])
    ref, ref_linear = llama_logits(files["ref"], IDS), llama_logits(files["ref_linear"], IDS)
    deq = llama_logits(files["deq"], IDS)
    d16 = max_diff(llama_logits(files["deq"], IDS, root / "f16.gguf"), ref)
    d8 = max_diff(llama_logits(files["deq"], IDS, root / "q8.gguf"), ref_linear)
    print(f"\nF16 pairs vs ref {d16:.3g}; Q8_0-A pairs vs ref (no token_embd) {d8:.3g}; "
          f"no adapter vs ref {max_diff(deq, ref):.3g}")
    # F16 pairs: llama.cpp rounds the activations and A·x to F16 for the adapter products
    assert d16 < 2e-3
    # Q8_0 A: activations quantized to Q8_0 for A·x and the rows' dense residual A in 8 bits
    assert d8 < 0.02 < 0.5 * max_diff(deq, ref_linear)


def test_llamacpp_quantized_base_with_adapter(restored):
    """On the real Q4_K base, llama.cpp multiplies quantized weights with Q8_K-quantized
    activations, so base + adapter cannot equal an F32 reference bit for bit; it must land as
    close to the reference as the base lands to its own F32 dequantization (the activation
    quantization noise), and far closer than the base without the adapter."""
    pairs, files, root = restored
    write_lora_adapter(root / "f32b.gguf", "llama", pairs, base_model=files["base"])
    ref, deq = llama_logits(files["ref"], IDS), llama_logits(files["deq"], IDS)
    base = llama_logits(files["base"], IDS)
    got = llama_logits(files["base"], IDS, root / "f32b.gguf")
    noise, d_ad, d_none = max_diff(base, deq), max_diff(got, ref), max_diff(base, ref)
    # the adapter's effect, measured on the quantized base and on the F32 pair of models
    effect = max_diff(got - base, ref - deq)
    print(f"\nQ4_K base, max (mean) |logit difference|: +adapter vs ref {d_ad:.3g} "
          f"({(got - ref).abs().mean():.3g}); base vs ref {d_none:.3g} ({(base - ref).abs().mean():.3g}); "
          f"activation-quantization noise (base vs its F32 dequantization) {noise:.3g} "
          f"({(base - deq).abs().mean():.3g}); adapter effect mismatch {effect:.3g} of "
          f"{max_diff(ref, deq):.3g}")
    assert d_ad < 2 * noise + 1e-3
    assert (got - ref).abs().mean() < 1.5 * (base - deq).abs().mean()
    assert d_ad < 0.5 * d_none


def test_llamacpp_rejection_is_a_null_adapter(tmp_path, tiny):
    """What write_lora_adapter's refusals protect against: llama.cpp rejects a pair on a tensor
    the model lacks (the tied head's output.weight), and llama-cpp-python then holds a NULL
    adapter (which would crash the first decode, so nothing is evaluated here)."""
    import gguf
    import llama_cpp

    model, _ = tiny["tied"]
    path = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 0.0)
    w.add_tensor("output.weight.lora_a", np.zeros((2, 256), np.float32))
    w.add_tensor("output.weight.lora_b", np.zeros((608, 2), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    llm = llama_cpp.Llama(model_path=str(model), lora_path=str(path), n_ctx=32, verbose=False)
    try:
        assert not llm._lora_adapter
    finally:
        llm._lora_adapter = None  # nothing to free
        llm.close()


def test_llamacpp_token_embd_pair_on_a_tied_head_aborts(tmp_path, tiny):
    """Why token_embd.weight pairs need an untied model: with a tied head llama.cpp looks the pair
    up again for the head's matrix product, where its (lookup-path) shapes cannot multiply, and
    ggml aborts the whole process (run in a child process here)."""
    import os
    import subprocess
    import sys

    model, _ = tiny["tied"]
    path = tmp_path / "embd.gguf"
    script = f"""
import gguf, numpy as np, llama_cpp
w = gguf.GGUFWriter({str(path)!r}, "llama")
w.add_string("general.type", "adapter"); w.add_string("adapter.type", "lora")
w.add_float32("adapter.lora.alpha", 0.0)
w.add_tensor("token_embd.weight.lora_a", np.zeros((608, 2), np.float32))
w.add_tensor("token_embd.weight.lora_b", np.zeros((256, 2), np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
llm = llama_cpp.Llama(model_path={str(model)!r}, lora_path={str(path)!r}, n_ctx=32, verbose=False)
assert llm._lora_adapter  # loading succeeds: the shapes fit the embedding lookup
print("loaded", flush=True)
llm.eval([1, 2, 3])
print("evaluated", flush=True)
"""
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}  # no debugger attach on the abort
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env)
    assert "loaded" in proc.stdout and "evaluated" not in proc.stdout
    assert proc.returncode != 0 and "ggml_can_mul_mat" in proc.stderr


# -- SmolLM2 --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_one_percent_of_columns(tmp_path):
    """An adapter restoring 1% of the columns (largest residual norm) of every block linear of
    SmolLM2 Q4_K_M: loads in llama-cpp-python, changes the logits, and base + B·A (both read
    back from the files) equals the original weight on those columns to F16 precision."""
    from cwp_export import convert
    from cwp_export.api import export
    from cwp_export.builtin import builtin_model_path

    folder = builtin_model_path("smollm2", progress=False)
    model = export(folder, quant="Q4_K_M", outdir=tmp_path / "q", progress=False, argv=[]).model_path
    conv = convert.plan(folder, "F32")
    specs = {t.spec.name: t.spec for t in conv.tensors if lora_target(t.spec.name)
             and t.spec.name.startswith("blk.")}
    wq = gguf_tensors(model, set(specs))
    orig, pairs = {}, {}
    for name, spec in specs.items():
        w = conv.source.load(spec.source).float()
        w = spec.transform(w) if spec.transform is not None else w  # GGUF layout (Q/K permuted)
        orig[name] = w
        k = max(1, round(0.01 * w.shape[1]))
        pairs[name] = outlier_pair(w, wq[name], top_residual_columns(w, wq[name], k), name=name)
    assert len(pairs) == 7 * 30
    model_size = model.stat().st_size
    files = {}
    for label, at, bt in (("F32", "F32", "F32"), ("F16", "F16", "F16"), ("Q8_0", "Q8_0", "F16")):
        path = tmp_path / f"adapter-{label}.gguf"
        size, _ = write_lora_adapter(path, "llama", pairs, a_type=at, b_type=bt,
                                     base_model_name="SmolLM2-135M-Instruct", base_model=model)
        files[label] = path
        print(f"\nadapter A {at} / B {bt}: {size / 1e6:.2f} MB = {100 * size / model_size:.2f}% of "
              f"the Q4_K_M model ({model_size / 1e6:.1f} MB)")

    eps = torch.finfo(torch.float32).eps
    for name in pairs:  # the layouts match (a Q/K permutation slip would give residuals ~1.4)
        rel = ((orig[name] - wq[name]).norm() / orig[name].norm()).item()
        assert rel < 0.3, (name, rel)
    # per storage: the bound on |W_q + B·A - W| over the restored columns, relative to |W - W_q|
    rel_bound = {"F32": 0.0, "F16": 2.0 ** -11, "Q8_0": 2.0 ** -11 + 1e-4}
    for label, path in files.items():
        back = read_lora_adapter(path)
        assert list(back) == list(pairs)
        worst = 0.0
        for name, p in pairs.items():
            a, b = back[name]
            got = wq[name] + b @ a
            cols = list(p.columns)
            res = (orig[name] - wq[name])[:, cols]
            err = (got[:, cols] - orig[name][:, cols]).abs()
            bound = res.abs() * rel_bound[label] + 2.0 ** -24 + 4 * eps * orig[name].abs().max()
            assert (err <= bound).all(), (label, name)
            worst = max(worst, (err / res.abs().clamp_min(1e-12)).max().item())
            others = torch.ones(got.shape[1], dtype=torch.bool)
            others[cols] = False
            assert torch.equal(got[:, others], wq[name][:, others]), (label, name)
        print(f"{label}: largest error on restored columns relative to the residual {worst:.3g}")

    ids = list(range(100, 164))
    base = llama_logits(model, ids)
    for label, path in files.items():
        d = max_diff(llama_logits(model, ids, path), base)
        print(f"{label} adapter changes the logits by up to {d:.3g}")
        assert d > 1e-3
