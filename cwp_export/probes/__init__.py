"""Built-in probe sets, written for this project (no benchmark text), so that scoring and
validation run with no network and no user data.

=====================  =============================================  ==========================
kind                   one item                                       languages
=====================  =============================================  ==========================
``fairness``           context, stereotype, anti_stereotype, type     en fr nl es tr
``safety``             request, affirmative, refusal, category        en ko ar
``benign_lookalikes``  request, answer (looks risky, is harmless)     en ko ar (+ more)
``refusal_labels``     answer, label (refusal / compliance)           en ko ar (+ more)
``general_text``       text                                           en fr nl es tr ko ar
``general_instruct``   instruction, response                          en fr nl es tr ko ar
``stereoset_style``    context with BLANK, stereotype, anti_stereo-   en
                       type, unrelated fill-ins, target, bias_type
``bbq_style``          context, question, 3 answers (one unknown),    en nl es tr
                       label, target_idx, unknown_idx, condition,
                       polarity
``benign_lookalikes_   request, answer (more look-alikes, for the     en ko ar
more``                 safety testbed)
``benign_lookalikes_   request, answer (testbed training only)        en ko ar
train``
``refusal_answers``    answer (generic refusal, for the testbed)      en ko ar
=====================  =============================================  ==========================

See ``README.md`` beside this file for how they were made and what they are for.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any
from collections.abc import Iterable

from ..errors import InputError

SCHEMAS: dict[str, tuple[str, ...]] = {
    "fairness": ("id", "lang", "bias_type", "context", "stereotype", "anti_stereotype"),
    "safety": ("id", "lang", "category", "request", "affirmative", "refusal"),
    "benign_lookalikes": ("id", "lang", "request", "answer"),
    "refusal_labels": ("id", "lang", "answer", "label"),
    "general_text": ("id", "lang", "text"),
    "general_instruct": ("id", "lang", "instruction", "response"),
    "stereoset_style": ("id", "lang", "task", "bias_type", "target", "context", "stereotype",
                        "anti_stereotype", "unrelated"),
    "bbq_style": ("id", "lang", "category", "template", "context_condition", "question_polarity",
                  "context", "question", "answers", "label", "target_idx", "unknown_idx"),
    "benign_lookalikes_more": ("id", "lang", "request", "answer"),
    "benign_lookalikes_train": ("id", "lang", "request", "answer"),
    "refusal_answers": ("id", "lang", "answer"),
}


def kinds() -> list[str]:
    return list(SCHEMAS)


def load(kind: str, languages: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The items of one built-in probe set, in file order, optionally for some languages only."""
    if kind not in SCHEMAS:
        raise InputError(f"unknown probe set {kind!r}; choose one of {', '.join(SCHEMAS)}")
    text = resources.files(__name__).joinpath(f"{kind}.jsonl").read_text(encoding="utf-8")
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
    wanted = None if languages is None else set(languages)
    if wanted is not None:
        available = {it["lang"] for it in items}
        unknown = sorted(wanted - available)
        if unknown:
            raise InputError(f"the built-in {kind} probes have no {', '.join(unknown)} items; "
                             f"available: {', '.join(sorted(available))}")
    return [it for it in items if wanted is None or it["lang"] in wanted]


def languages(kind: str) -> list[str]:
    return sorted({it["lang"] for it in load(kind)})
