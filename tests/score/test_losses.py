"""The four losses against hand computations, and batched == one-by-one."""

from __future__ import annotations

import copy

import pytest
import torch

from cwp_export import probes
from cwp_export.errors import InputError
from cwp_export.score import losses as L

ARCHS = ("llama", "qwen3")


def _nll(model, ids: list[int]) -> torch.Tensor:
    """NLL of every token after the first, by hand."""
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(input_ids=x).logits.float()[0], dim=-1)
    return -logp[torch.arange(len(ids) - 1), x[0, 1:]]


def _start(tok) -> list[int]:
    return [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]


def _items(kind: str, n: int = 3):
    langs = {"fairness": ["en", "tr"], "safety": ["en", "ko", "ar"]}.get(kind)
    data = probes.load(kind, langs)
    step = max(1, len(data) // n)
    return data[::step][:n]


@pytest.mark.parametrize("arch", ARCHS)
def test_general_text_is_mean_token_nll(tiny_lm, arch):
    model, tok, _ = tiny_lm(arch)
    item = _items("general_text")[0]
    ids = _start(tok) + tok(item["text"])["input_ids"]  # the tiny tokenizers add no BOS
    expected = _nll(model, ids).mean()
    got = L.general_text_loss(model, tok, item)
    assert got.ndim == 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_fairness_is_abs_difference_over_differing_tokens(tiny_lm, arch):
    model, tok, _ = tiny_lm(arch)
    item = _items("fairness")[0]
    a = _start(tok) + tok(item["stereotype"])["input_ids"]
    b = _start(tok) + tok(item["anti_stereotype"])["input_ids"]
    k = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
    assert k >= 1
    # token i is predicted by position i-1: the differing tokens are a[k:], b[k:]
    expected = (_nll(model, a)[k - 1:].sum() - _nll(model, b)[k - 1:].sum()).abs()
    torch.testing.assert_close(L.fairness_loss(model, tok, item), expected, rtol=1e-5, atol=1e-5)


def test_fairness_conditions_on_shared_context(tiny_lm):
    _, tok, _ = tiny_lm("llama")
    item = {"id": "x", "context": "The nurse said", "stereotype": "she was tired.",
            "anti_stereotype": "he was tired."}
    enc = L.encode("fairness", tok, item)
    s, a = enc.ids
    k = enc.weights[0].index(1.0)
    assert s[:k] == a[:k] and s[k] != a[k]
    assert enc.weights[1].index(1.0) == k and sum(enc.weights[0]) == len(s) - k
    assert s == tuple(_start(tok) + tok("The nurse said she was tired.")["input_ids"])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("target", ["affirmative", "refusal"])
def test_safety_is_answer_nll_in_chat_template(tiny_lm, arch, target):
    model, tok, _ = tiny_lm(arch)
    item = _items("safety")[1]
    prompt = f"<|im_start|>user\n{item['request']}<|im_end|>\n<|im_start|>assistant\n"
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    t = tok(item[target], add_special_tokens=False)["input_ids"]
    expected = _nll(model, p + t)[len(p) - 1:].mean()
    torch.testing.assert_close(L.safety_loss(model, tok, item, target), expected, rtol=1e-5,
                               atol=1e-5)


def test_no_chat_template_falls_back_to_plain_text(tiny_lm):
    model, tok, _ = tiny_lm("qwen3")
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    item = _items("general_instruct")[0]
    p = _start(tok) + tok(item["instruction"] + "\n")["input_ids"]
    t = tok(item["response"], add_special_tokens=False)["input_ids"]
    expected = _nll(model, p + t)[len(p) - 1:].mean()
    torch.testing.assert_close(L.general_instruct_loss(model, plain, item), expected, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_general_instruct_scores_response_only(tiny_lm, arch):
    model, tok, _ = tiny_lm(arch)
    item = _items("general_instruct")[2]
    prompt = f"<|im_start|>user\n{item['instruction']}<|im_end|>\n<|im_start|>assistant\n"
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    t = tok(item["response"], add_special_tokens=False)["input_ids"]
    expected = _nll(model, p + t)[len(p) - 1:].mean()
    torch.testing.assert_close(L.general_instruct_loss(model, tok, item), expected, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", L.KINDS)
def test_batched_equals_one_by_one(tiny_lm, arch, kind):
    model, tok, _ = tiny_lm(arch)
    items = _items(kind, 3)  # different lengths, so the batch is padded
    with torch.no_grad():
        batched = L.batch_loss(model, tok, kind, items)
        single = torch.stack([L.batch_loss(model, tok, kind, [it])[0] for it in items])
    assert batched.shape == (len(items),)
    # the means agree to ~1e-6; fairness sums NLL over tokens (sums ~10-100), so float32
    # agrees to ~1e-6 relative there, and to 1e-5 absolute in float64 (next test)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_batched_equals_one_by_one_float64_fairness(tiny_lm):
    model, tok, _ = tiny_lm("llama")
    items = _items("fairness", 3)
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        b64 = L.batch_loss(m64, tok, "fairness", items)
        s64 = torch.stack([L.batch_loss(m64, tok, "fairness", [it])[0] for it in items])
    assert b64.dtype == torch.float64
    assert (b64 - s64).abs().max() < 1e-5


def test_bad_items(tiny_lm):
    model, tok, _ = tiny_lm("llama")
    with pytest.raises(InputError, match="unknown loss kind"):
        L.make_loss("toxicity", tok)
    with pytest.raises(InputError, match="target"):
        L.make_loss("safety", tok, target="maybe")
    with pytest.raises(InputError, match="no text for"):
        L.fairness_loss(model, tok, {"id": "x", "context": "", "stereotype": "a b"})
    with pytest.raises(InputError, match="no differing part"):
        L.fairness_loss(model, tok, {"id": "x", "context": "", "stereotype": "same words",
                                     "anti_stereotype": "same words"})
    with pytest.raises(InputError, match="empty answer"):
        L.safety_loss(model, tok, {"id": "x", "request": "hi", "affirmative": "", "refusal": "no"})
