"""Tokenizer export: pre-tokenizer recognition, token types, special tokens, SentencePiece."""

import json

import pytest

from cwp_export.errors import InputError
from cwp_export.tokenizer import TokenType, bpe_pre_name, load_vocab


def _bytelevel(regex=True):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": regex}


def _split(rx):
    return {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False}


QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
          r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.mark.parametrize("pre,name", [
    (_bytelevel(), "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _bytelevel()]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [_split(QWEN2), _bytelevel(False)]}, "qwen2"),
    ({"type": "Sequence", "pretokenizers": [_split(LLAMA3), _bytelevel(False)]}, "llama-bpe"),
])
def test_pre_tokenizer_recognised_from_split_rules(pre, name):
    assert bpe_pre_name({"pre_tokenizer": pre}) == name


@pytest.mark.parametrize("pre,msg", [
    ({"type": "Sequence", "pretokenizers": [_split(r"\w+"), _bytelevel(False)]}, "match none"),
    ({"type": "Whitespace"}, "Whitespace pre-tokenizer"),
    ({"type": "Digits", "individual_digits": False}, "digit runs"),
    ({**_bytelevel(), "add_prefix_space": True}, "prefix space"),
])
def test_unrecognised_pre_tokenizers_are_refused(pre, msg):
    with pytest.raises(InputError, match=msg):
        bpe_pre_name({"pre_tokenizer": pre})


def test_byte_level_vocab(tiny_models):
    folder = tiny_models["llama"]
    cfg = json.loads((folder / "config.json").read_text())
    v = load_vocab(folder, cfg["vocab_size"], cfg)
    tj = json.loads((folder / "tokenizer.json").read_text())
    assert v.model == "gpt2" and v.pre == "smollm"
    assert len(v.tokens) == cfg["vocab_size"]
    n_real = len(tj["model"]["vocab"])
    assert v.tokens[-1] == f"[PAD{cfg['vocab_size'] - 1}]" and v.types[-1] == TokenType.UNUSED
    ids = {t: i for i, t in enumerate(v.tokens)}
    assert v.types[ids["<|im_start|>"]] == TokenType.CONTROL
    assert sum(t == TokenType.NORMAL for t in v.types) == n_real - 3
    assert v.special["bos"] == ids["<|im_start|>"] and v.special["eos"] == ids["<|im_end|>"]
    assert v.merges[0].count(" ") == 1
    assert v.add_bos is False and v.chat_template.startswith("{% for m in messages %}")


def test_spm_style_vocab(tiny_models):
    folder = tiny_models["gemma3"]
    cfg = json.loads((folder / "config.json").read_text())
    v = load_vocab(folder, cfg["vocab_size"], cfg)
    ids = {t: i for i, t in enumerate(v.tokens)}
    assert v.model == "llama" and v.add_bos is True and v.add_space_prefix is False
    assert v.types[ids["<0x41>"]] == TokenType.BYTE
    assert v.types[ids["<unk>"]] == TokenType.CONTROL  # a special added token in this tokenizer
    assert v.special == {"bos": ids["<bos>"], "eos": ids["<eos>"], "unknown": ids["<unk>"],
                         "padding": ids["<pad>"]}
    # scores follow merge order: a token made by an earlier merge scores higher
    tj = json.loads((folder / "tokenizer.json").read_text())
    first, later = ("".join(m.split(" ") if isinstance(m, str) else m)
                    for m in (tj["model"]["merges"][0], tj["model"]["merges"][50]))
    assert v.scores[ids[first]] > v.scores[ids[later]]


def test_sentencepiece_model_file(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from cwp_export.testing import training_text

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(training_text() * 3), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"),
                                   vocab_size=700, model_type="bpe", byte_fallback=True,
                                   character_coverage=1.0, num_threads=1, minloglevel=2)
    v = load_vocab(tmp_path, 710, {})
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert v.model == "llama" and v.tokens[:700] == [sp.id_to_piece(i) for i in range(700)]
    assert v.scores[5] == sp.get_score(5)
    assert v.types[sp.unk_id()] == TokenType.UNKNOWN and v.types[sp.bos_id()] == TokenType.CONTROL
    assert v.types[700:] == [TokenType.UNUSED] * 10
    assert v.add_space_prefix is True


def test_missing_tokenizer_is_refused(tmp_path):
    with pytest.raises(InputError, match="no tokenizer.json or tokenizer.model"):
        load_vocab(tmp_path, 10, {})
