"""Tiny random checkpoints for tests and tools: one per supported architecture.

Each is a real Hugging Face folder written with ``save_pretrained`` (safetensors), with a small
tokenizer trained here on self-written multilingual text, so every code path a real checkpoint takes
(byte-level BPE with several pre-tokenizers, SentencePiece-style BPE with byte fallback, tied and
untied heads, biases, QK norms, sliding-window layers) is exercised in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Self-written sentences in the seven languages the project cares about, used to train tokenizers
# and as test prompts.
PROMPTS = {
    "en": "The nurse said that the doctor would arrive at 10:30, but nobody believed her.",
    "fr": "L'infirmière a dit que le médecin arriverait à 10h30, mais personne ne l'a crue.",
    "nl": "De verpleegster zei dat de dokter om half elf zou komen, maar niemand geloofde haar.",
    "es": "La enfermera dijo que el médico llegaría a las 10:30, pero nadie le creyó.",
    "tr": "Hemşire doktorun 10.30'da geleceğini söyledi ama kimse ona inanmadı.",
    "ko": "간호사는 의사가 10시 30분에 도착할 것이라고 말했지만 아무도 믿지 않았다.",
    "ar": "قالت الممرضة إن الطبيب سيصل في الساعة العاشرة والنصف، لكن لم يصدقها أحد.",
}

_EXTRA_TEXT = [
    "How do I stop a Python process that hangs? Use kill with the process id, or Ctrl+C.",
    "Les enfants jouent dans le jardin pendant que leurs parents préparent le dîner.",
    "Het weer in Amsterdam is vandaag koud en winderig, met af en toe een regenbui.",
    "El tren sale de Madrid a las ocho y llega a Barcelona antes del mediodía.",
    "İstanbul'da yaşayan öğrenciler her sabah vapurla okula gidiyorlar.",
    "서울의 봄은 짧지만 벚꽃이 피면 많은 사람들이 공원으로 나간다.",
    "يذهب الطلاب إلى المكتبة كل يوم لقراءة الكتب ودراسة العلوم.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 12 345 6789 3.14 -42 1,000,000",
    "Code: def f(x):\n    return x * 2  # doubles\n\tif x > 0: print('ok')",
]


def training_text() -> list[str]:
    return list(PROMPTS.values()) + _EXTRA_TEXT


_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_tokenizer(style: str, specials: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if style == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif style == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        raise ValueError(style)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    return tok


def _spm_style_tokenizer(specials: list[str], vocab_size: int):
    """A SentencePiece-style BPE (▁ for spaces, <0xXX> byte fallback), like Gemma's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    # SentencePiece keeps its 256 byte pieces in the model vocabulary, right after the specials
    tj = json.loads(tok.to_str())
    learned = sorted(((i, t) for t, i in tj["model"]["vocab"].items() if t not in specials))
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    vocab.update({t: len(vocab) + k for k, (_, t) in enumerate(learned)})
    tj["model"]["vocab"] = vocab
    return Tokenizer.from_str(json.dumps(tj))


def _config(arch: str, vocab: int, overrides: dict[str, Any] | None = None) -> Any:
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5)
    extra = dict(overrides or {})
    common.update({k: extra.pop(k) for k in list(extra) if k in common})
    if arch == "llama":
        return tf.LlamaConfig(**{**common, "tie_word_embeddings": True, "bos_token_id": 1,
                                 "eos_token_id": 2, **extra})
    if arch == "mistral":
        return tf.MistralConfig(**{**common, "tie_word_embeddings": False,
                                   "sliding_window": None, "bos_token_id": 1, "eos_token_id": 2,
                                   **extra})
    if arch == "qwen2":
        return tf.Qwen2Config(**{**common, "tie_word_embeddings": False, "bos_token_id": None,
                                 "eos_token_id": 0, **extra})
    if arch == "qwen3":
        return tf.Qwen3Config(**{**common, "head_dim": 32, "tie_word_embeddings": True,
                                 "eos_token_id": 0, **extra})
    if arch == "gemma3":
        n_layer = common["num_hidden_layers"] if overrides else 3
        head_dim = extra.get("head_dim", 32)
        # every third layer attends globally, the others through the sliding window
        layer_types = ["full_attention" if i % 3 == 2 else "sliding_attention"
                       for i in range(n_layer)]
        return tf.Gemma3TextConfig(**{**common, "num_hidden_layers": n_layer, "head_dim": 32,
                                      "query_pre_attn_scalar": head_dim, "sliding_window": 8,
                                      "layer_types": layer_types,
                                      "final_logit_softcapping": None, "bos_token_id": 2,
                                      "eos_token_id": 1, "pad_token_id": 0, **extra})
    raise ValueError(arch)


ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")

_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                  "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                  "{% endif %}")


def make_tiny_model(arch: str, folder: str | Path, seed: int = 0,
                    config: dict[str, Any] | None = None) -> Path:
    """Write a tiny random ``arch`` checkpoint with its tokenizer into ``folder``.

    ``config`` overrides entries of the model config (e.g. ``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_key_value_heads``, ``head_dim``); without it the model is the
    default tiny one.
    """
    import torch
    import transformers as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if arch == "gemma3":
        specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
        tok = _spm_style_tokenizer(specials, 600)
        bos, eos, pad, unk = "<bos>", "<eos>", "<pad>", "<unk>"
        from tokenizers import processors
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
    elif arch in ("qwen2", "qwen3"):
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = _byte_level_tokenizer("qwen2", specials, 600)
        bos, eos, pad, unk = None, "<|endoftext|>", "<|endoftext|>", None
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = _byte_level_tokenizer("smollm", specials, 600)
        bos, eos, pad, unk = "<|im_start|>", "<|im_end|>", None, None
    vocab = tok.get_vocab_size() + 8  # padded like many real checkpoints
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                      pad_token=pad, unk_token=unk)
    fast.chat_template = _CHAT_TEMPLATE

    cfg = _config(arch, vocab, config)
    cls = {"llama": tf.LlamaForCausalLM, "mistral": tf.MistralForCausalLM,
           "qwen2": tf.Qwen2ForCausalLM, "qwen3": tf.Qwen3ForCausalLM,
           "gemma3": tf.Gemma3ForCausalLM}[arch]
    torch.manual_seed(seed)
    model = cls(cfg)
    with torch.no_grad():  # random norms and biases, so a wrong transform cannot hide
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (0.0 if arch == "gemma3" else 1.0))
            else:
                p.normal_(0.0, 0.08)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


def read_config(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "config.json").read_text())


def _ggml_gelu_tanh(x):
    """GELU (tanh form) as ggml's CPU backend computes it: a table indexed by the float16 input,
    holding float16 outputs, with x <= -10 → 0 and x >= 10 → x."""
    import torch

    h = x.to(torch.float16).to(torch.float32)
    y = torch.nn.functional.gelu(h, approximate="tanh").to(torch.float16).to(torch.float32)
    return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))


def _ggml_gelu_module():
    import torch

    class GgmlGelu(torch.nn.Module):
        def forward(self, x):
            return _ggml_gelu_tanh(x)

    return GgmlGelu


def _GgmlGelu():
    return _ggml_gelu_module()()


def compare_with_transformers(gguf_path: str | Path, hf_folder: str | Path,
                              prompts: dict[str, str] | None = None,
                              f32_cache: bool = True,
                              ggml_gelu: bool = False) -> dict[str, dict[str, Any]]:
    """Per-language agreement of llama-cpp-python and transformers on the same prompts.

    For each prompt: whether llama.cpp's tokenization equals the HF tokenizer's (with special
    tokens added the way each side's config says), the largest absolute difference of per-position
    log-probabilities over the whole vocabulary, the same restricted to the prompt's actual next
    tokens (what likelihood scoring uses), the mean KL divergence (transformers ‖ llama.cpp) and
    the share of positions with the same top-1 token. transformers runs in float32.

    ``ggml_gelu=True`` makes transformers compute GELU the way llama.cpp's CPU backend does (through
    a float16 lookup table: input and output rounded to float16), which isolates conversion
    error from that runtime approximation for GELU models such as Gemma 3.
    """
    import llama_cpp
    import numpy as np
    import torch
    import transformers as tf

    prompts = prompts or PROMPTS
    tok = tf.AutoTokenizer.from_pretrained(str(hf_folder))
    model = tf.AutoModelForCausalLM.from_pretrained(str(hf_folder), dtype=torch.float32).eval()
    if ggml_gelu:
        for module in model.modules():
            if hasattr(module, "act_fn") and "gelu" in str(getattr(model.config, "hidden_activation", "")):
                module.act_fn = _GgmlGelu()
    cache = dict(type_k=0, type_v=0) if f32_cache else {}
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=512, n_batch=512, logits_all=True,
                          verbose=False, n_threads=2, seed=0, **cache)
    out: dict[str, dict[str, Any]] = {}
    try:
        for lang, text in prompts.items():
            hf_ids = tok(text)["input_ids"]
            lc_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            llm.reset()
            llm.eval(hf_ids)
            lc = torch.tensor(np.array(llm.scores[: len(hf_ids)]), dtype=torch.float32)
            with torch.no_grad():
                ref = model(torch.tensor([hf_ids])).logits[0].float()
            lp_lc, lp_ref = torch.log_softmax(lc, -1), torch.log_softmax(ref, -1)
            d = (lp_lc - lp_ref).abs().max().item()
            nxt = torch.tensor(hf_ids[1:])[:, None]
            d_next = (lp_lc[:-1].gather(1, nxt) - lp_ref[:-1].gather(1, nxt)).abs().max().item()
            kld = (lp_ref.exp() * (lp_ref - lp_lc)).sum(-1).mean().item()
            top1 = (lc.argmax(-1) == ref.argmax(-1)).float().mean().item()
            out[lang] = {"tokens_equal": hf_ids == lc_ids, "n_tokens": len(hf_ids),
                         "max_abs_dlogprob": d, "max_abs_dlogprob_next_token": d_next,
                         "mean_kld": kld, "top1_agreement": top1}
    finally:
        llm.close()
    return out


def ntrex_text(shared_data: Path, lang: str = "eng", lines: int = 200, holdout: bool = True) -> str:
    """Lines of the NTREX news text in ``shared_data/ntrex_general_text`` (a shared benchmark file,
    never shipped with the project): by default from the held-out documents (index mod 10 in
    {0, 3, 7}), which calibration never uses."""
    folder = Path(shared_data) / "ntrex_general_text"
    name = "newstest2019-src.eng.txt" if lang == "eng" else f"newstest2019-ref.{lang}.txt"
    text = (folder / name).read_text(encoding="utf-8").splitlines()
    docs = (folder / "DOCUMENT_IDS.tsv").read_text(encoding="utf-8").splitlines()
    order: dict[str, int] = {}
    for d in docs:
        order.setdefault(d.strip(), len(order))
    keep = [t.strip() for t, d in zip(text, docs)
            if t.strip() and (order[d.strip()] % 10 in (0, 3, 7)) == holdout]
    return "\n".join(keep[:lines])


def kl_divergence(reference: str | Path, candidate: str | Path, text: str, n_ctx: int = 256,
                  max_chunks: int = 8, lora: str | Path | None = None) -> dict[str, float]:
    """Mean KL(reference ‖ candidate) per token over chunks of ``text``, through llama-cpp-python
    (F32 KV cache), the way llama-perplexity --kl-divergence scores a quantized model: both models
    see the same token chunks; the second half of each chunk is scored."""
    return kl_divergences(reference, {"candidate": (candidate, lora)}, text, n_ctx,
                          max_chunks)["candidate"]


def kl_divergences(reference: str | Path, candidates: dict[str, tuple[str | Path, str | Path | None]],
                   text: str, n_ctx: int = 256, max_chunks: int = 8) -> dict[str, dict[str, float]]:
    """:func:`kl_divergence` for several ``{name: (model, lora or None)}`` candidates against one
    reference, whose logits are computed once."""
    import llama_cpp
    import numpy as np
    import torch

    def logits(path, ids_chunks, lora_path=None):
        kw = dict(lora_path=str(lora_path)) if lora_path else {}
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                              verbose=False, n_threads=2, type_k=0, type_v=0, **kw)
        try:
            if lora_path and not llm._lora_adapter:  # llama.cpp refused it; decoding would crash
                raise RuntimeError(f"llama.cpp did not load the adapter {lora_path}")
            out = []
            for ids in ids_chunks:
                llm.reset()
                llm.eval(ids)
                out.append(torch.tensor(np.array(llm.scores[n_ctx // 2: len(ids)]),
                                        dtype=torch.float32))
            return out
        finally:
            llm.close()

    tok = llama_cpp.Llama(model_path=str(reference), vocab_only=True, verbose=False)
    ids = tok.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    tok.close()
    chunks = [ids[i:i + n_ctx] for i in range(0, len(ids) - n_ctx + 1, n_ctx)][:max_chunks]
    if not chunks:
        raise ValueError(f"text too short: {len(ids)} tokens for one chunk of {n_ctx}")
    ref = [torch.log_softmax(r, -1) for r in logits(reference, chunks)]
    results = {}
    for name, (path, lora) in candidates.items():
        kls, same_top = [], []
        for lr, c in zip(ref, logits(path, chunks, lora)):
            lc = torch.log_softmax(c, -1)
            kls.append((lr.exp() * (lr - lc)).sum(-1))
            same_top.append((lr.argmax(-1) == c.argmax(-1)).float())
        kl = torch.cat(kls)
        results[name] = {"mean_kld": kl.mean().item(), "max_kld": kl.max().item(),
                         "same_top1": torch.cat(same_top).mean().item(),
                         "n_tokens": int(kl.numel())}
    return results


def llamacpp_quantize(src: str | Path, dst: str | Path, preset: str, nthread: int = 2) -> Path:
    """Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``): the reference
    our presets and encoders are compared against."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset}")
    params.nthread = nthread
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp failed to quantize {src} to {preset} (rc={rc})")
    return Path(dst)


def llamacpp_tool(name: str) -> Path | None:
    """Path of a llama.cpp tool built by tools/build_llamacpp_tools.py for the installed
    llama-cpp-python version, or None when it has not been built here."""
    from importlib import metadata

    from .cache import cache_dir

    try:
        version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return None
    exe = cache_dir() / f"llama.cpp-bin-{version}" / name
    return exe if exe.is_file() else None


def run_llamacpp_tool(exe: Path, *args: str | Path, timeout: float = 1800):
    """Run a cached llama.cpp tool with its shared libraries; raise with its output on failure."""
    import os
    import subprocess

    env = {**os.environ, "LD_LIBRARY_PATH": str(exe.parent)}
    proc = subprocess.run([str(exe), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{exe.name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def importance_effect(qtype, x, chosen, weight: float = 1000.0) -> tuple[float, float]:
    """Give the ``chosen`` elements of ``x`` ``weight``× importance (others 1) and return how the
    squared error of the chosen elements, and of the whole tensor, change against encoding with
    no importance: (chosen ratio, total ratio)."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    def errors(blob: bytes) -> tuple[float, float]:
        deq = torch.from_numpy(dequantize(np.frombuffer(blob, np.uint8).reshape(x.shape[0], -1),
                                          qtype.ggml_type).copy())
        se = (x - deq).double() ** 2
        return float(se[chosen].sum()), float(se.sum())

    base_chosen, base_total = errors(qtype.encode(x))
    w_chosen, w_total = errors(qtype.encode(x, torch.where(chosen, weight, 1.0)))
    return w_chosen / base_chosen, w_total / base_total


def read_gguf_tensors(path: str | Path, names=None) -> dict[str, tuple[str, Any]]:
    """{name: (GGML type name, float32 numpy array in PyTorch layout)} for the tensors of a GGUF
    file (only ``names`` when given), read and dequantized with gguf-py, independently of our
    writer and encoders."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    want = None if names is None else set(names)
    out = {}
    for t in GGUFReader(str(path)).tensors:
        if want is not None and t.name not in want:
            continue
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        vals = dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        out[t.name] = (t.tensor_type.name, np.asarray(vals, dtype=np.float32))
    return out


def source_weights(folder: str | Path, names=None) -> dict[str, Any]:
    """{GGUF name: float32 torch tensor} of a Hugging Face checkpoint, with the architecture's
    transforms applied (e.g. Q/K row order, Gemma's norm + 1): the values a GGUF should hold."""
    from .arch import adapter_for
    from .source import open_source

    src = open_source(folder)
    specs = adapter_for(src.config).tensor_specs({n: r.shape for n, r in src.tensors.items()})
    want = None if names is None else set(names)
    out = {}
    for s in specs:
        if s.source is None or (want is not None and s.name not in want):
            continue
        x = src.load(s.source)
        out[s.name] = (s.transform(x) if s.transform is not None else x).float()
    return out
