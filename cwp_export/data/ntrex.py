"""NTREX-128 general text (WMT19 news, line-aligned translations).

Files (shared layout): ``ntrex_general_text/newstest2019-{src,ref}.<code>.txt`` (CRLF, one
sentence per line) and ``DOCUMENT_IDS.tsv`` (one document id per line, line-aligned). NTREX
codes are mapped to two-letter codes where the table below has them (``arb`` → ``ar``); other
files keep their NTREX code as ``lang``. A folder holding an ``NTREX-128`` subfolder (the
upstream repository) works too.

``doc`` is the document index: the order of first appearance in the upstream DOCUMENT_IDS.tsv.
Holdout rule: documents whose index mod 10 is in {0, 3, 7} are held out in every language. The
shared copy (86 of the 123 documents) lacks them; its documents are mapped back to their upstream
indices, so all its items are calibration. A copy with any other document count gets the rule on
its own document order. Ids use the document id and the line's position inside the document, so
they are the same in any copy.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from ._common import Format, Item, find_files, is_holdout, kept_count, text_lines, upstream_index

NAME = "ntrex"
HINT = "ntrex_general_text/"
UPSTREAM_DOCS = 123
CODES = {
    "eng": "en", "fra": "fr", "nld": "nl", "spa": "es", "tur": "tr", "kor": "ko", "arb": "ar",
    "deu": "de", "ita": "it", "por": "pt", "rus": "ru", "jpn": "ja", "zho-CN": "zh", "hin": "hi",
    "ben": "bn", "vie": "vi", "tha": "th", "pol": "pl", "ukr": "uk", "swe": "sv", "ces": "cs",
}
LANGUAGES = tuple(sorted(set(CODES.values())))
_FILE = re.compile(r"^newstest2019-(?:src|ref)\.(?P<code>.+)\.txt$")


def _doc_ids(folder: Path) -> list[str]:
    for d in (folder, folder.parent):
        f = d / "DOCUMENT_IDS.tsv"
        if f.is_file():
            return [ln.split("\t")[0].strip() for ln in text_lines(f)]
    raise InputError(f"DOCUMENT_IDS.tsv is missing beside {folder}; it gives the document of every line "
                     f"(copy it from the NTREX repository next to the text files)")


def documents(doc_ids: list[str]) -> list[int]:
    """The document index of each line (see the module docstring)."""
    order: dict[str, int] = {}
    for d in doc_ids:
        order.setdefault(d, len(order))
    shared_copy = len(order) != UPSTREAM_DOCS and len(order) == kept_count(UPSTREAM_DOCS)
    return [upstream_index(order[d]) if shared_copy else order[d] for d in doc_ids]


def normalise(lines: list[str], doc_ids: list[str], *, lang: str, where: str) -> list[Item]:
    if len(lines) != len(doc_ids):
        raise InputError(f"{where} has {len(lines)} lines but DOCUMENT_IDS.tsv has {len(doc_ids)}; "
                         f"use files from the same NTREX copy")
    docs = documents(doc_ids)
    out = []
    position: dict[str, int] = {}
    for text, doc_id, doc in zip(lines, doc_ids, docs):
        k = position.get(doc_id, 0)
        position[doc_id] = k + 1
        text = text.strip()
        if not text:
            continue
        out.append({
            "id": f"{NAME}:{lang}:{doc_id}:{k}",
            "lang": lang,
            "dataset": NAME,
            "parallel_id": f"{NAME}:{doc_id}:{k}",
            "doc": doc,
            "doc_id": doc_id,
            "text": text,
            "holdout": is_holdout(doc),
        })
    return out


def read_path(source: Path, want: frozenset[str] | None) -> tuple[list[Item], set[str]]:
    files = [f for f in find_files(source, NAME, HINT, ("ntrex_general_text", "NTREX-128"),
                                   ("newstest2019-*.txt",))
             if _FILE.match(f.name)]
    if not files:
        raise InputError(f"{source} is not an NTREX text file; expected newstest2019-src.eng.txt or "
                         f"newstest2019-ref.<code>.txt")
    items: list[Item] = []
    present: set[str] = set()
    cache: dict[Path, list[str]] = {}
    for f in files:
        code = _FILE.match(f.name).group("code")  # type: ignore[union-attr]
        lang = CODES.get(code, code)
        present.add(lang)
        if want is not None and lang not in want:
            continue
        if f.parent not in cache:
            cache[f.parent] = _doc_ids(f.parent)
        items += normalise(text_lines(f), cache[f.parent], lang=lang, where=str(f))
    return items, present


def read_hf(rows: list[Item], config: str | None, where: str) -> list[Item]:
    """Rows with ``text`` and ``lang`` (or the language as the config), optional ``doc_id``."""
    if rows and "text" not in rows[0]:
        raise InputError(f"{where} lacks a text column: expected text, lang (or the language as the "
                         f"config) and optionally doc_id, found {', '.join(rows[0])}")
    by_lang: dict[str, list[Item]] = {}
    for row in rows:
        lang = str(row.get("lang") or config or "")
        if not lang:
            raise InputError(f"{where}: cannot tell the language; add a lang column or give it as the config")
        by_lang.setdefault(CODES.get(lang, lang), []).append(row)
    items: list[Item] = []
    for lang, rs in by_lang.items():
        ids = [str(r.get("doc_id") or r.get("document_id") or f"row{n}") for n, r in enumerate(rs)]
        items += normalise([str(r["text"]) for r in rs], ids, lang=lang, where=where)
    return items


FORMAT = Format(NAME, LANGUAGES, read_path, read_hf, HINT)
