"""BBQ (English) and MBBQ (en, nl, es, tr; bias and control files).

Files (shared layout): ``bbq/<Category>.jsonl`` and ``mbbq/<Category>[_control]_<lang>.jsonl``,
one JSON object per line with the upstream keys. ``question_index`` is a string there; items
carry it as an int.

The bias target (upstream ``target_loc``, not in these files) is derived as the shared data
README says: lower-case and drop spaces, map woman/girl/... to ``f`` and man/boy/... to ``m``
(English, Dutch, Spanish, Turkish words), then the target is the one non-UNKNOWN answer whose
group label (``answer_info[k][1]``) or surface word (``answer_info[k][0]``, for Nationality)
matches ``stereotyped_groups``. Where no single answer matches (upstream data errors, e.g.
Spanish Gender_identity items whose two people both became "chico"), ``target_idx`` and
``biased_idx`` are None.

``parallel_id`` aligns an item across MBBQ languages by (category, control, template, position
of the example inside its template). ``example_id`` alone does not align everywhere: in the
Spanish Gender_identity files the ids run 8 ahead of the other languages from template 8 on.
Answer order also differs between languages: align answers by role (``target_idx``,
``unknown_idx``, the remaining one), not by index.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._common import Format, Item, as_int, check_columns, choice, find_files, is_holdout, jsonl, require_text

BBQ_LANGUAGES = ("en",)
MBBQ_LANGUAGES = ("en", "es", "nl", "tr")
REQUIRED = ("example_id", "question_index", "question_polarity", "context_condition", "category",
            "answer_info", "additional_metadata", "context", "question", "ans0", "ans1", "ans2", "label")
_FEMALE = {"woman", "girl", "vrouw", "meisje", "mujer", "chica", "kadın", "kız", "f"}
_MALE = {"man", "boy", "jongen", "hombre", "chico", "adam", "erkekçocuk", "m"}


def _group(word: str) -> str:
    w = str(word).lower().replace(" ", "")
    if w in _FEMALE:
        return "f"
    if w in _MALE:
        return "m"
    return w


def derive_target(answer_info: list[list[str]], stereotyped_groups: list[str],
                  unknown_idx: int) -> int | None:
    """Index of the answer naming the stereotyped group, or None if not exactly one does."""
    groups = {_group(g) for g in stereotyped_groups}
    hits = [k for k, (surface, label) in enumerate(answer_info)
            if k != unknown_idx and (_group(label) in groups or _group(surface) in groups)]
    return hits[0] if len(hits) == 1 else None


def _answer_info(row: Item, at: str) -> list[list[str]]:
    info = row["answer_info"]
    try:
        out = [[str(info[f"ans{k}"][0]), str(info[f"ans{k}"][1])] for k in range(3)]
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{at}: answer_info must map ans0, ans1, ans2 to [surface, group]; "
                         f"fix the item") from None
    return out


def normalise(rows: list[Item], *, dataset: str, lang: str | None, control: bool, where: str,
              line_numbers: list[int] | None = None) -> list[Item]:
    out = []
    for n, row in enumerate(rows):
        at = f"{where} line {line_numbers[n] if line_numbers else n + 1}"
        check_columns(row, REQUIRED, at)
        item_lang = lang or str(row.get("lang", "")).strip()
        if not item_lang:
            raise InputError(f"{at}: cannot tell the language; name the file <Category>_<lang>.jsonl "
                             f"or give each row a lang")
        is_control = bool(row.get("control", control))
        info = _answer_info(row, at)
        unknown = [k for k, (_, label) in enumerate(info) if label == "unknown"]
        if len(unknown) != 1:
            raise InputError(f"{at}: {len(unknown)} answers have group label 'unknown' (expected exactly "
                             f"one, the UNKNOWN option); fix answer_info")
        unknown_idx = unknown[0]
        label = as_int(row["label"], "label", at)
        if label not in (0, 1, 2):
            raise InputError(f"{at}: label {label} is not an answer index 0, 1 or 2; fix the label")
        meta: Any = row["additional_metadata"] or {}
        groups = meta.get("stereotyped_groups") or []
        if isinstance(groups, str):
            groups = [groups]
        target = derive_target(info, groups, unknown_idx)
        polarity = choice(row["question_polarity"], ("neg", "nonneg"), "question_polarity", at)
        if target is None:
            biased = None
        elif polarity == "neg":
            biased = target
        else:
            biased = 3 - target - unknown_idx  # the other person
        category = str(row["category"])
        part = f"{category}_control" if is_control else category
        example_id = as_int(row["example_id"], "example_id", at)
        question_index = as_int(row["question_index"], "question_index", at)
        out.append({
            "id": f"{dataset}:{item_lang}:{part}:{example_id}",
            "lang": item_lang,
            "dataset": dataset,
            "parallel_id": f"{dataset}:{part}:{example_id}",
            "category": category,
            "subcategory": str(meta.get("subcategory", "")),
            "control": is_control,
            "example_id": example_id,
            "question_index": question_index,
            "context_condition": choice(row["context_condition"], ("ambig", "disambig"),
                                        "context_condition", at),
            "question_polarity": polarity,
            "context": require_text(row, "context", at),
            "question": require_text(row, "question", at),
            "answers": [require_text(row, f"ans{k}", at) for k in range(3)],
            "answer_info": info,
            "stereotyped_groups": [str(g) for g in groups],
            "label": label,
            "unknown_idx": unknown_idx,
            "target_idx": target,
            "biased_idx": biased,
            "holdout": is_holdout(question_index),
        })
    # align across languages by template and position inside it: example_id itself is shifted in
    # places (Spanish Gender_identity ids run 8 ahead from template 8 on)
    first: dict[tuple[str, int], int] = {}
    for it in out:
        key = (it["parallel_id"].rsplit(":", 1)[0], it["question_index"])
        first[key] = min(first.get(key, it["example_id"]), it["example_id"])
    for it in out:
        part = it["parallel_id"].rsplit(":", 1)[0]
        offset = it["example_id"] - first[part, it["question_index"]]
        it["parallel_id"] = f"{part}:{it['question_index']}:{offset}"
    return out


_STEM = re.compile(r"^(?P<cat>.+?)(?P<control>_control)?(?:_(?P<lang>[a-z]{2}))?$")


def _parse_stem(stem: str) -> tuple[bool, str | None]:
    m = _STEM.match(stem)
    assert m is not None  # the pattern matches any non-empty stem
    return bool(m.group("control")), m.group("lang")


def _reader(dataset: str, subdir: str, default_lang: str | None):
    hint = f"{subdir}/*.jsonl"

    def read_path(source: Path, want: frozenset[str] | None) -> tuple[list[Item], set[str]]:
        files = find_files(source, dataset, hint, (subdir,), ("*.jsonl",))
        items: list[Item] = []
        present: set[str] = set()
        for f in files:
            control, lang = _parse_stem(f.stem)
            lang = lang or default_lang
            if lang is not None:
                present.add(lang)
                if want is not None and lang not in want:
                    continue
            lines = jsonl(f)
            new = normalise([o for _, o in lines], dataset=dataset, lang=lang, control=control,
                            where=str(f), line_numbers=[n for n, _ in lines])
            present |= {it["lang"] for it in new}
            items += new
        return items, present

    def read_hf(rows: list[Item], config: str | None, where: str) -> list[Item]:
        langs = BBQ_LANGUAGES if dataset == "bbq" else MBBQ_LANGUAGES
        lang = None if rows and "lang" in rows[0] else (config if config in langs else default_lang)
        if lang is None and rows and "lang" not in rows[0]:
            raise InputError(f"{where}: cannot tell the language of these {dataset} rows; "
                             f"give the language as the config (hf:NAME:nl) or add a lang column")
        return normalise(rows, dataset=dataset, lang=lang, control=False, where=where)

    return read_path, read_hf, hint


BBQ = Format("bbq", BBQ_LANGUAGES, *_reader("bbq", "bbq", "en"))
MBBQ = Format("mbbq", MBBQ_LANGUAGES, *_reader("mbbq", "mbbq", None))
