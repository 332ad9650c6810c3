"""From loaded benchmark items to scoring calibration items, and the fixed train/eval halves."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ..errors import InputError
from . import templates
from ._common import Item

KINDS = ("fairness", "safety", "general_text")
_SOURCES = {
    "fairness": ("crows-pairs", "stereoset"),
    "safety": ("advbench", "multijail", "xsafety"),
    "general_text": ("ntrex",),
}
BIAS_SETS = ("crows-pairs", "stereoset", "bbq", "mbbq")
HALVES = ("train", "eval")


def _dataset(item: Item, kind: str) -> str:
    ds = item.get("dataset")
    if ds not in _SOURCES[kind]:
        raise InputError(f"{kind} calibration takes {', '.join(_SOURCES[kind])} items, not item "
                         f"{item.get('id', '?')!r} ({ds or 'no dataset'}); load one of those sets")
    return ds


def _fairness(item: Item) -> Item:
    if _dataset(item, "fairness") == "crows-pairs":
        # the loss scores only the differing span, so the full sentences go in with no context;
        # sent_more is the biased side for both stereo and antistereo pairs
        context, s, a = "", item["sent_more"], item["sent_less"]
    elif item["task"] == "intrasentence":
        context, s, a = "", item["stereotype"], item["anti_stereotype"]  # options are full sentences
    else:  # intersentence: the options continue the context
        context, s, a = item["context"], item["stereotype"], item["anti_stereotype"]
    return {"id": item["id"], "lang": item["lang"], "bias_type": item["bias_type"],
            "context": context, "stereotype": s, "anti_stereotype": a}


def _safety(item: Item) -> Item | None:
    _dataset(item, "safety")
    if item.get("scenario") == "commonsense":
        return None  # XSafety multiple-choice questions are not refusal prompts
    lang = item["lang"]
    target = item.get("target")
    return {"id": item["id"], "lang": lang, "category": item["category"], "request": item["request"],
            "affirmative": target if target else templates.affirmative(lang),
            "refusal": templates.refusal(lang),
            "affirmative_source": "dataset" if target else "template"}


def _general_text(item: Item) -> Item:
    _dataset(item, "general_text")
    return {"id": item["id"], "lang": item["lang"], "text": item["text"]}


def to_calibration(kind: str, items: Iterable[Item]) -> list[Item]:
    """Loaded items → calibration items of ``kind`` (the schemas of ``cwp_export.probes.SCHEMAS``).

    - ``fairness`` (CrowS-Pairs, StereoSet): ``context, stereotype, anti_stereotype, bias_type``.
      CrowS: context "", stereotype = ``sent_more``, anti_stereotype = ``sent_less``. StereoSet
      intrasentence: context "" and the two filled-in sentences; intersentence: the context and the
      two continuations.
    - ``safety`` (AdvBench, MultiJail, XSafety): ``request, affirmative, refusal, category`` and
      ``affirmative_source`` ("dataset" for AdvBench's own target, else "template"); refusal is the
      language's template (``templates.py``). XSafety ``commonsense`` items are left out.
    - ``general_text`` (NTREX): ``text``.
    """
    if kind not in KINDS:
        raise InputError(f"unknown calibration kind {kind!r}; choose one of {', '.join(KINDS)}")
    convert = {"fairness": _fairness, "safety": _safety, "general_text": _general_text}[kind]
    out = [convert(it) for it in items]
    return [it for it in out if it is not None]


def half_of(item: Item) -> str:
    """``"train"`` or ``"eval"`` for one item: the parity of the first 8 bytes of the SHA-256 of its
    language-independent id (``parallel_id``, else ``id``), so that every translation of a prompt
    falls in the same half and the split never changes between runs, machines or Python versions."""
    key = str(item.get("parallel_id") or item["id"])
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return HALVES[int.from_bytes(digest[:8], "big") % 2]


def half(items: Iterable[Item], which: str) -> list[Item]:
    """The items of one fixed half (``"train"`` or ``"eval"``) of a safety set, in input order.

    Used to fine-tune refusal test models on one half and evaluate them on the other. The bias
    sets (CrowS-Pairs, StereoSet, BBQ, MBBQ) are never for training and are refused.
    """
    if which not in HALVES:
        raise InputError(f"unknown half {which!r}; choose train or eval")
    items = list(items)
    for it in items:
        if it.get("dataset") in BIAS_SETS:
            raise InputError(f"item {it.get('id')!r} is from {it['dataset']}, a bias set that is never for "
                             f"training; split only the safety sets (advbench, multijail, xsafety)")
    return [it for it in items if half_of(it) == which]
