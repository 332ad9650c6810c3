"""Tokenizer → GGUF vocabulary metadata.

Reads a checkpoint's tokenizer files (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``, ``chat_template.jinja``, or a SentencePiece ``tokenizer.model``) and
produces the ``tokenizer.*`` metadata llama.cpp needs:

* byte-level BPE (``tokenizer.ggml.model = gpt2``): tokens, token types, merges, and the name of the
  pre-tokenizer llama.cpp implements for this tokenizer's split rules (``tokenizer.ggml.pre``);
* SentencePiece (``tokenizer.ggml.model = llama``): tokens, scores and types, either from a
  ``tokenizer.model`` file or from a ``tokenizer.json`` holding a SentencePiece-style BPE with byte
  fallback (scores then follow the merge ranks, which is the order SentencePiece merges in);
* special token ids, whether BOS/EOS are added, and the chat template.

The pre-tokenizer name is derived from the split rules written in ``tokenizer.json`` (regexes,
digit splitting), matched against the rule sets llama.cpp implements, instead of guessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from .errors import InputError


class TokenType:
    NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# Split rules as tokenizer.json writes them. GPT-2's ByteLevel(use_regex=True) uses this one.
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
              r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}"
              r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGITS = "<digits>"

# split-rule sequence → llama.cpp pre-tokenizer name (see llama.cpp's llama-vocab.cpp)
PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    (_GPT2_RE,): "gpt-2",
    (_DIGITS, _GPT2_RE): "smollm",
    (_LLAMA3_RE,): "llama-bpe",
    (_QWEN2_RE,): "qwen2",
    (_QWEN35_RE,): "qwen35",
}


@dataclass
class Vocab:
    """Everything llama.cpp needs to tokenize like the source tokenizer."""

    model: str                       # "gpt2" or "llama"
    pre: str                         # llama.cpp pre-tokenizer name
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    special: dict[str, int]          # bos/eos/unk/pad/... → id
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None
    chat_template: str | None

    def metadata(self) -> list[tuple[str, Any, GGUFValueType, GGUFValueType | None]]:
        """(key, value, type, element type) entries, in a fixed order."""
        V = GGUFValueType
        out: list[tuple[str, Any, GGUFValueType, GGUFValueType | None]] = [
            ("tokenizer.ggml.model", self.model, V.STRING, None),
            ("tokenizer.ggml.pre", self.pre, V.STRING, None),
            ("tokenizer.ggml.tokens", self.tokens, V.ARRAY, V.STRING),
        ]
        if self.scores is not None:
            out.append(("tokenizer.ggml.scores", self.scores, V.ARRAY, V.FLOAT32))
        out.append(("tokenizer.ggml.token_type", self.types, V.ARRAY, V.INT32))
        if self.merges is not None:
            out.append(("tokenizer.ggml.merges", self.merges, V.ARRAY, V.STRING))
        for key in ("bos", "eos", "unknown", "padding", "eot", "eom"):
            if key in self.special:
                out.append((f"tokenizer.ggml.{key}_token_id", self.special[key], V.UINT32, None))
        out.append(("tokenizer.ggml.add_bos_token", self.add_bos, V.BOOL, None))
        out.append(("tokenizer.ggml.add_eos_token", self.add_eos, V.BOOL, None))
        if self.add_space_prefix is not None:
            out.append(("tokenizer.ggml.add_space_prefix", self.add_space_prefix, V.BOOL, None))
        if self.chat_template:
            out.append(("tokenizer.chat_template", self.chat_template, V.STRING, None))
        return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e.__class__.__name__}); fix or re-download it") from e


def _token_text(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _split_rules(pre: dict[str, Any] | None) -> tuple[str, ...]:
    """Flatten a tokenizer.json pre_tokenizer into the sequence of split rules it applies."""
    if not pre:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        return tuple(r for p in pre.get("pretokenizers", []) for r in _split_rules(p))
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            raise InputError("tokenizer.json's ByteLevel pre-tokenizer adds a prefix space, which "
                             "llama.cpp's BPE tokenizer does not do")
        return (_GPT2_RE,) if pre.get("use_regex", True) else ()
    if kind == "Digits":
        if not pre.get("individual_digits"):
            raise InputError("tokenizer.json splits digit runs as groups, which no llama.cpp "
                             "pre-tokenizer reproduces")
        return (_DIGITS,)
    if kind == "Split":
        pattern = pre.get("pattern", {})
        rule = pattern.get("Regex") if isinstance(pattern, dict) else None
        if rule is None or pre.get("behavior") != "Isolated" or pre.get("invert"):
            raise InputError(f"tokenizer.json uses a Split pre-tokenizer ({pattern}) that "
                             f"llama.cpp does not implement")
        return (rule,)
    raise InputError(f"tokenizer.json uses a {kind} pre-tokenizer, which cwp-export cannot map to "
                     f"a llama.cpp tokenizer")


def bpe_pre_name(tokenizer_json: dict[str, Any]) -> str:
    rules = _split_rules(tokenizer_json.get("pre_tokenizer"))
    try:
        return PRE_TOKENIZERS[rules]
    except KeyError:
        raise InputError(
            "tokenizer.json's pre-tokenizer split rules match none that llama.cpp implements "
            f"({', '.join(sorted(set(PRE_TOKENIZERS.values())))}); the model cannot be tokenized "
            "correctly by llama.cpp") from None


def _merges(model: dict[str, Any]) -> list[str]:
    out = []
    for m in model.get("merges", []):
        out.append(m if isinstance(m, str) else " ".join(m))
    return out


def _looks_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<pad>", "<mask>")


def _uses_spm_normalizer(tj: dict[str, Any]) -> tuple[bool, bool]:
    """(is SentencePiece-style, prepends a space) from tokenizer.json's normalizer/pre-tokenizer."""
    def walk(node: Any):
        if isinstance(node, dict):
            yield node
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    nodes = list(walk(tj.get("normalizer"))) + list(walk(tj.get("pre_tokenizer")))
    spm = any(n.get("type") == "Replace" and n.get("content") == "\u2581" for n in nodes) \
        or any(n.get("type") == "Metaspace" for n in nodes)
    prefix = any(n.get("type") == "Prepend" and n.get("prepend") == "\u2581" for n in nodes) \
        or any(n.get("type") == "Metaspace" and n.get("prepend_scheme", "always") != "never"
               for n in nodes)
    return spm, prefix


def _post_processor_adds(tj: dict[str, Any]) -> tuple[bool | None, bool | None]:
    """Whether tokenizer.json's post-processor adds a BOS / EOS token to a single sequence."""
    pp = tj.get("post_processor")
    if not pp:
        return False, False
    procs = pp.get("processors", []) if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            single = p.get("single", [])
            idx = [i for i, s in enumerate(single) if "Sequence" in s]
            if not idx:
                return None, None
            specials = [i for i, s in enumerate(single) if "SpecialToken" in s]
            return any(i < idx[0] for i in specials), any(i > idx[0] for i in specials)
    return False, False


def load_vocab(folder: Path, n_vocab: int, config: dict[str, Any]) -> Vocab:
    """Build the vocabulary for a checkpoint folder whose embedding has ``n_vocab`` rows."""
    tok_json = folder / "tokenizer.json"
    tcfg_path = folder / "tokenizer_config.json"
    tcfg = _read_json(tcfg_path) if tcfg_path.is_file() else {}
    stm_path = folder / "special_tokens_map.json"
    stm = _read_json(stm_path) if stm_path.is_file() else {}
    if (folder / "tokenizer.model").is_file():
        vocab = _sentencepiece_vocab(folder / "tokenizer.model", tok_json if tok_json.is_file() else None,
                                     n_vocab)
    elif tok_json.is_file():
        vocab = _tokenizer_json_vocab(_read_json(tok_json), n_vocab)
    else:
        raise InputError(f"{folder} has no tokenizer.json or tokenizer.model; save the tokenizer "
                         f"with the model (tokenizer.save_pretrained)")

    ids = {t: i for i, t in enumerate(vocab.tokens)}
    for key, names in (("bos", ("bos_token",)), ("eos", ("eos_token",)),
                       ("unknown", ("unk_token",)), ("padding", ("pad_token",))):
        for name in names:
            text = _token_text(tcfg.get(name)) or _token_text(stm.get(name))
            if text is not None and text in ids:
                vocab.special[key] = ids[text]
    for key, cfg_key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        v = config.get(cfg_key)
        if isinstance(v, list):
            v = v[0] if v else None
        if key not in vocab.special and isinstance(v, int) and 0 <= v < len(vocab.tokens):
            vocab.special[key] = v

    if isinstance(tcfg.get("add_bos_token"), bool):
        vocab.add_bos = tcfg["add_bos_token"]
    if isinstance(tcfg.get("add_eos_token"), bool):
        vocab.add_eos = tcfg["add_eos_token"]

    template = None
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    elif isinstance(tcfg.get("chat_template"), str):
        template = tcfg["chat_template"]
    elif (folder / "chat_template.json").is_file():
        template = _read_json(folder / "chat_template.json").get("chat_template")
    vocab.chat_template = template
    return vocab


def _added_tokens(tj: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(t["id"]): t for t in tj.get("added_tokens", [])}


def _tokenizer_json_vocab(tj: dict[str, Any], n_vocab: int) -> Vocab:
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise InputError(f"tokenizer.json holds a {model.get('type')} model; cwp-export supports "
                         f"BPE tokenizers (byte-level or SentencePiece-style) and tokenizer.model")
    base: dict[str, int] = model.get("vocab", {})
    added = _added_tokens(tj)
    by_id: dict[int, str] = {i: t for t, i in base.items()}
    for i, t in added.items():
        by_id[i] = t["content"]
    if by_id and max(by_id) >= n_vocab:
        raise InputError(f"the tokenizer has token id {max(by_id)} but the embedding has only "
                         f"{n_vocab} rows; tokenizer and weights do not belong together")
    spm, prefix = _uses_spm_normalizer(tj)
    add_bos, add_eos = _post_processor_adds(tj)
    merges = _merges(model)

    tokens: list[str] = []
    types: list[int] = []
    unk = model.get("unk_token")
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        text = by_id[i]
        if i in added:
            special = added[i].get("special") or _looks_special(text)
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
            if not special and spm:
                text = text.replace("\u2581", " ")
        elif spm and text == unk:
            types.append(TokenType.UNKNOWN)
        elif spm and model.get("byte_fallback") and len(text) == 6 and text.startswith("<0x") \
                and text.endswith(">"):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(text)

    if spm:
        if not model.get("byte_fallback") and not model.get("unk_token"):
            raise InputError("tokenizer.json is a SentencePiece-style BPE without byte fallback or "
                             "an unknown token; llama.cpp cannot tokenize unseen characters with it")
        # SentencePiece BPE merges the adjacent pair whose result scores highest; a merge's rank
        # in tokenizer.json is that order. Tokens no merge produces keep the lowest score.
        rank_of: dict[str, int] = {}
        for r, m in enumerate(merges):
            a, _, b = m.partition(" ")
            rank_of.setdefault(a + b, r)
        floor = -float(len(merges) + 1)
        scores = [(-float(rank_of[t]) if t in rank_of and types[i] == TokenType.NORMAL else floor)
                  if types[i] != TokenType.UNUSED else floor for i, t in enumerate(tokens)]
        return Vocab("llama", "default", tokens, types, scores, None, {}, add_bos is not False,
                     bool(add_eos), prefix, None)
    pre = bpe_pre_name(tj)
    return Vocab("gpt2", pre, tokens, types, None, merges, {}, bool(add_bos), bool(add_eos),
                 None, None)


def _sentencepiece_vocab(path: Path, tok_json: Path | None, n_vocab: int) -> Vocab:
    try:
        from sentencepiece import SentencePieceProcessor
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError as e:
        raise InputError("this checkpoint has a SentencePiece tokenizer.model: pip install "
                         "sentencepiece protobuf") from e
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
        proto = pb.ModelProto()
        proto.ParseFromString(path.read_bytes())
    except Exception as e:
        raise InputError(f"{path} is not a valid SentencePiece model ({e.__class__.__name__}); "
                         f"re-download it") from e
    n_sp = sp.vocab_size()
    if n_sp > n_vocab:
        raise InputError(f"tokenizer.model has {n_sp} pieces but the embedding has only {n_vocab} "
                         f"rows; tokenizer and weights do not belong together")
    tokens, scores, types = [], [], []
    for i in range(n_sp):
        tokens.append(sp.IdToPiece(i))
        scores.append(float(sp.GetScore(i)))
        types.append(TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i)
                     else TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i)
                     else TokenType.NORMAL)
    added = _added_tokens(_read_json(tok_json)) if tok_json else {}
    for i in range(n_sp, n_vocab):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        scores.append(-1000.0)
    for i, t in added.items():  # added tokens that overwrite pieces inside the model's range
        if i < n_sp and t.get("special"):
            types[i] = TokenType.CONTROL
    special = {}
    for key, pid in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unknown", sp.unk_id()),
                     ("padding", sp.pad_id())):
        if 0 <= pid < n_vocab:
            special[key] = pid
    prefix = bool(proto.normalizer_spec.add_dummy_prefix)
    return Vocab("llama", "default", tokens, types, scores, None, special, True, False, prefix, None)
