"""CrowS-Pairs: the original English file and the parallel English/French/Dutch set.

Files (shared layout): ``crows_pairs/crows_pairs_anonymized.csv`` (subset ``original``; the id
column has an empty header; ``annotations`` is a Python-literal list) and
``crows_pairs_multilingual/crows_{eng,french,dutch}.csv`` (subset ``multilingual``, parallel by
``id``). Other file names need a ``_xx`` language suffix (``crows_es.csv``) or a ``lang`` column.

Pairs whose two sentences are equal or where one is empty are skipped (French ids 129 and 379
in the shared copy): they have no differing span to score. The Dutch ``stereo_antistereo`` label
is unreliable (README), so ``direction`` is the English label of the same id whenever the
multilingual English file is read too (or lies beside the file given); ``direction_own`` always
keeps the row's own label.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ..errors import InputError
from ._common import Format, Item, as_int, check_columns, choice, csv_dicts, find_files, is_holdout

NAME = "crows-pairs"
LANGUAGES = ("en", "fr", "nl")
HINT = "crows_pairs/ and crows_pairs_multilingual/"
REQUIRED = ("id", "sent_more", "sent_less", "stereo_antistereo", "bias_type")
DIRECTIONS = ("stereo", "antistereo")
FILES = {
    "crows_pairs_anonymized": ("original", "en"),
    "crows_eng": ("multilingual", "en"),
    "crows_french": ("multilingual", "fr"),
    "crows_dutch": ("multilingual", "nl"),
}
_ENGLISH_PARALLEL = "crows_eng.csv"


def _classify(path: Path, header: list[str]) -> tuple[str, str | None]:
    """(subset, language or None when each row has a ``lang`` column)."""
    if path.stem in FILES:
        return FILES[path.stem]
    m = re.search(r"[_.-]([a-z]{2})$", path.stem)
    if m:
        return "multilingual", m.group(1)
    if "lang" in header:
        return "multilingual", None
    raise InputError(f"cannot tell the language of {path}: name it like crows_<lang>.csv "
                     f"(e.g. crows_fr.csv), use an upstream file name, or add a lang column")


def _annotations(value: object, where: str) -> list | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return value
    try:
        parsed = ast.literal_eval(str(value))  # Python-literal, not JSON (single quotes)
    except (ValueError, SyntaxError):
        raise InputError(f"{where}: annotations {str(value)[:40]!r} is not a Python list literal; "
                         f"fix or empty the field") from None
    return parsed if isinstance(parsed, list) else None


def normalise(rows: list[Item], *, subset: str, lang: str | None, where: str,
              english: dict[int, str] | None = None) -> list[Item]:
    """CrowS rows (dicts with the upstream column names) → items."""
    for alias in ("", "Unnamed: 0"):  # the original file's id column has an empty header
        if rows and "id" not in rows[0] and alias in rows[0]:
            rows = [dict(r, id=r[alias]) for r in rows]
    if rows:
        check_columns(set().union(*rows), REQUIRED, where)
    out: list[Item] = []
    seen: set[int] = set()
    for n, row in enumerate(rows):
        at = f"{where} row {n + 1}"
        pid = as_int(row["id"], "id", at)
        if pid in seen:
            raise InputError(f"{where}: id {pid} occurs twice; every pair needs its own id")
        seen.add(pid)
        more, less = str(row["sent_more"]), str(row["sent_less"])
        if not more.strip() or not less.strip() or more == less:
            continue  # no differing span (upstream translation slips)
        own = choice(row["stereo_antistereo"], DIRECTIONS, "stereo_antistereo", at)
        row_lang = lang or str(row.get("lang", "")).strip()
        if not row_lang:
            raise InputError(f"{at}: empty lang; give every row a language code")
        direction = english.get(pid, own) if english is not None and row_lang != "en" else own
        out.append({
            "id": f"{NAME}:{row_lang}:{subset}:{pid}",
            "lang": row_lang,
            "dataset": NAME,
            "parallel_id": f"{NAME}:{subset}:{pid}",
            "subset": subset,
            "pair_id": pid,
            "bias_type": str(row["bias_type"]),
            "sent_more": more,
            "sent_less": less,
            "direction": direction,
            "direction_own": own,
            "annotations": _annotations(row.get("annotations"), at),
            "holdout": is_holdout(pid),
        })
    return out


def _english_labels(path: Path) -> dict[int, str]:
    rows = csv_dicts(path, REQUIRED)
    return {as_int(r["id"], "id", str(path)): r["stereo_antistereo"] for r in rows}


def read_path(source: Path, want: frozenset[str] | None) -> tuple[list[Item], set[str]]:
    files = find_files(source, NAME, HINT, ("crows_pairs", "crows_pairs_multilingual"), ("*.csv",))
    tables = []
    for f in files:
        rows = csv_dicts(f, REQUIRED, aliases={"": "id"})
        subset, lang = _classify(f, list(rows[0]) if rows else [])
        tables.append((f, subset, lang, rows))
    present = {lang or r.get("lang", "") for _, _, lang, rows in tables for r in rows} - {""}
    english: dict[int, str] | None = None
    for f, subset, lang, rows in tables:
        if f.name == _ENGLISH_PARALLEL:
            english = {as_int(r["id"], "id", str(f)): r["stereo_antistereo"] for r in rows}
    if english is None:
        siblings = {f.parent / _ENGLISH_PARALLEL for f, subset, *_ in tables if subset == "multilingual"}
        for s in sorted(siblings):
            if s.is_file():
                english = _english_labels(s)
                break
    items: list[Item] = []
    for f, subset, lang, rows in tables:
        if want is not None and lang is not None and lang not in want:
            continue
        items += normalise(rows, subset=subset, lang=lang, where=str(f),
                           english=english if subset == "multilingual" else None)
    return items, present


def read_hf(rows: list[Item], config: str | None, where: str) -> list[Item]:
    """Rows of e.g. ``nyu-mll/crows_pairs`` (class labels already turned into their names)."""
    lang = None if rows and "lang" in rows[0] else (config if config in LANGUAGES else "en")
    subset = "original" if lang == "en" else "multilingual"
    return normalise(rows, subset=subset, lang=lang, where=where)


FORMAT = Format(NAME, LANGUAGES, read_path, read_hf, HINT)
