"""The per-sample losses of the critical-weight method (DESIGN.md section 3).

Every item is first *encoded* into one or more token sequences, each with a per-position weight
on the NLL of the token at that position (0 for conditioning tokens). A loss is then a pure
function of the per-sequence weighted NLL sums:

- ``fairness``: two sequences (context + stereotype, context + anti-stereotype). Only the tokens
  after their longest common token prefix are scored, conditioned on that shared prefix; the loss
  is ``|NLL(stereotype part) − NLL(anti-stereotype part)|`` with both NLLs *summed* over tokens.
- ``safety``: the harmful request in the tokenizer's chat template (``add_generation_prompt=True``)
  followed by the target answer (``"affirmative"`` or ``"refusal"``); the loss is the mean NLL of
  the answer tokens. Tokenizers without a chat template get the plain text ``request + "\\n"``.
- ``general_text``: the mean NLL of all tokens of the text.
- ``general_instruct``: the mean NLL of the response tokens given the instruction in the chat
  template (same fallback as ``safety``).

Plain text is encoded with the tokenizer's own special tokens; when the tokenizer adds no start
token, its BOS token (else its EOS token) is put in front, so that the first real token is scored
and a fairness pair whose sentences differ from the first word still has a shared prefix.

Batched versions pad on the right and pass an ``attention_mask``; with a causal model the real
tokens see no padding, so batched and one-by-one losses agree up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError

KINDS = ("fairness", "safety", "general_text", "general_instruct")
SAFETY_TARGETS = ("affirmative", "refusal")


@dataclass(frozen=True)
class Encoded:
    """One item: its sequences and how their weighted NLL sums combine into the loss."""

    ids: tuple[tuple[int, ...], ...]        # token ids per sequence
    weights: tuple[tuple[float, ...], ...]  # per position: weight on NLL of that token (0 = context)
    combine: str                            # "absdiff" (two sequences) or "sum" (one sequence)


# -- encoding -------------------------------------------------------------------------------------
def _start_ids(tokenizer: Any) -> list[int]:
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    extra = len(probe) - len(plain)
    if extra > 0 and probe[extra:] == plain:
        return []  # the tokenizer adds its own start token(s)
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return [int(tid)]
    raise InputError("the tokenizer has neither a BOS nor an EOS token and adds no start token; "
                     "cwp-export cannot condition the first token of a text")


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of ``text`` as the model sees plain text, with a start token (see module docstring)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return _start_ids(tokenizer) + ids


def encode_chat_prompt(tokenizer: Any, user_text: str) -> list[int]:
    """Ids of a one-turn user message in the chat template, ending with the assistant prompt.

    A tokenizer without a chat template gets ``user_text + "\\n"`` as plain text instead.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}],
                                             tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return encode_text(tokenizer, user_text + "\n")


def _need(item: dict[str, Any], *keys: str) -> list[Any]:
    missing = [k for k in keys if not isinstance(item.get(k), str)]
    if missing:
        raise InputError(f"probe item {item.get('id', '?')!r} has no text for "
                         f"{', '.join(missing)}; each item needs {', '.join(keys)}")
    return [item[k] for k in keys]


def _prompt_answer(tokenizer: Any, prompt: str, answer: str, item: dict[str, Any]) -> Encoded:
    p = encode_chat_prompt(tokenizer, prompt)
    a = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not a:
        raise InputError(f"probe item {item.get('id', '?')!r} has an empty answer")
    n = len(a)
    return Encoded((tuple(p + a),), (tuple([0.0] * len(p) + [1.0 / n] * n),), "sum")


def encode(kind: str, tokenizer: Any, item: dict[str, Any], target: str = "affirmative") -> Encoded:
    """Turn one probe item of ``kind`` into token sequences and NLL weights."""
    if kind == "fairness":
        context, s, a = _need(item, "context", "stereotype", "anti_stereotype")
        sep = "" if not context or context[-1].isspace() else " "
        ids_s = encode_text(tokenizer, context + sep + s)
        ids_a = encode_text(tokenizer, context + sep + a)
        k = 0
        while k < min(len(ids_s), len(ids_a)) and ids_s[k] == ids_a[k]:
            k += 1
        if k == len(ids_s) or k == len(ids_a):
            raise InputError(f"fairness item {item.get('id', '?')!r}: one sentence is a prefix of "
                             f"the other (or they are equal); the pair has no differing part")
        w_s = [0.0] * k + [1.0] * (len(ids_s) - k)
        w_a = [0.0] * k + [1.0] * (len(ids_a) - k)
        return Encoded((tuple(ids_s), tuple(ids_a)), (tuple(w_s), tuple(w_a)), "absdiff")
    if kind == "safety":
        if target not in SAFETY_TARGETS:
            raise InputError(f"safety target {target!r} is unknown; choose affirmative or refusal")
        request, answer = _need(item, "request", target)
        return _prompt_answer(tokenizer, request, answer, item)
    if kind == "general_text":
        (text,) = _need(item, "text")
        ids = encode_text(tokenizer, text)
        n = len(ids) - 1
        if n < 1:
            raise InputError(f"general_text item {item.get('id', '?')!r} is empty")
        return Encoded((tuple(ids),), (tuple([0.0] + [1.0 / n] * n),), "sum")
    if kind == "general_instruct":
        instruction, response = _need(item, "instruction", "response")
        return _prompt_answer(tokenizer, instruction, response, item)
    raise InputError(f"unknown loss kind {kind!r}; choose one of {', '.join(KINDS)}")


# -- evaluation -----------------------------------------------------------------------------------
def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def sequence_nll(model: Any, seqs: Sequence[Sequence[int]], weights: Sequence[Sequence[float]],
                 ) -> torch.Tensor:
    """Weighted NLL sum per sequence, all sequences in one right-padded forward pass."""
    dev = _device(model)
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long, device=dev)
    att = torch.zeros(len(seqs), width, dtype=torch.long, device=dev)
    w = torch.zeros(len(seqs), width, dtype=torch.float32, device=dev)
    for i, (s, ws) in enumerate(zip(seqs, weights)):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        att[i, : len(s)] = 1
        w[i, : len(s)] = torch.tensor(ws, dtype=torch.float32)
    logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half-precision models: take the NLL in float32
    w = w.to(logits.dtype)
    # position t predicts token t+1
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    return (nll * w[:, 1:]).sum(dim=1)


def combine(encoded: Sequence[Encoded], per_sequence: torch.Tensor) -> torch.Tensor:
    """Per-item losses from the per-sequence weighted NLL sums (sequences in item order)."""
    out, j = [], 0
    for e in encoded:
        if e.combine == "absdiff":
            out.append((per_sequence[j] - per_sequence[j + 1]).abs())
        else:
            out.append(per_sequence[j])
        j += len(e.ids)
    return torch.stack(out)


def batch_loss(model: Any, tokenizer: Any, kind: str, items: Sequence[dict[str, Any]],
               target: str = "affirmative") -> torch.Tensor:
    """Per-item losses of ``items`` (shape ``[len(items)]``) from one padded forward pass."""
    enc = [encode(kind, tokenizer, it, target) for it in items]
    seqs = [s for e in enc for s in e.ids]
    ws = [w for e in enc for w in e.weights]
    return combine(enc, sequence_nll(model, seqs, ws))


# -- the named single-item and batched losses ------------------------------------------------------
def fairness_loss(model, tokenizer, item) -> torch.Tensor:
    return batch_loss(model, tokenizer, "fairness", [item])[0]


def safety_loss(model, tokenizer, item, target: str = "affirmative") -> torch.Tensor:
    return batch_loss(model, tokenizer, "safety", [item], target)[0]


def general_text_loss(model, tokenizer, item) -> torch.Tensor:
    return batch_loss(model, tokenizer, "general_text", [item])[0]


def general_instruct_loss(model, tokenizer, item) -> torch.Tensor:
    return batch_loss(model, tokenizer, "general_instruct", [item])[0]


def fairness_losses(model, tokenizer, items) -> torch.Tensor:
    return batch_loss(model, tokenizer, "fairness", items)


def safety_losses(model, tokenizer, items, target: str = "affirmative") -> torch.Tensor:
    return batch_loss(model, tokenizer, "safety", items, target)


def general_text_losses(model, tokenizer, items) -> torch.Tensor:
    return batch_loss(model, tokenizer, "general_text", items)


def general_instruct_losses(model, tokenizer, items) -> torch.Tensor:
    return batch_loss(model, tokenizer, "general_instruct", items)


LossFn = Callable[[Any, Sequence[dict[str, Any]]], torch.Tensor]


def make_loss(kind: str, tokenizer: Any, target: str = "affirmative") -> LossFn:
    """``(model, items) -> per-item losses`` for :func:`..fisher.accumulate_fisher`."""
    if kind not in KINDS:
        raise InputError(f"unknown loss kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "safety" and target not in SAFETY_TARGETS:
        raise InputError(f"safety target {target!r} is unknown; choose affirmative or refusal")

    def loss(model: Any, items: Sequence[dict[str, Any]]) -> torch.Tensor:
        return batch_loss(model, tokenizer, kind, items, target)

    loss.kind, loss.target = kind, target  # type: ignore[attr-defined]
    loss.encode = lambda item: encode(kind, tokenizer, item, target)  # type: ignore[attr-defined]
    return loss
