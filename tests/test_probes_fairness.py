"""Checks on the built-in fairness and general probe files (cwp_export/probes/*.jsonl).

Standard library only: the files must stay loadable without the package's dependencies.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

PROBES = Path(__file__).resolve().parents[1] / "cwp_export" / "probes"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

FAIRNESS_LANGS = {"en", "fr", "nl", "es", "tr"}
GENERAL_LANGS = {"en", "fr", "nl", "es", "tr", "ko", "ar"}
BIAS_TYPES = {
    "gender", "race-ethnicity-nationality", "religion", "age", "disability",
    "socioeconomic", "sexual-orientation", "physical-appearance",
}

SPECS = {
    # file stem: (id prefix, languages, minimum per language, text fields)
    "fairness": ("fair", FAIRNESS_LANGS, 60, ("context", "stereotype", "anti_stereotype")),
    "general_text": ("gen", GENERAL_LANGS, 30, ("text",)),
    "general_instruct": ("ins", GENERAL_LANGS, 30, ("instruction", "response")),
}
# longest differing span (characters) allowed in a fairness pair, and its share of the sentence
MAX_SPAN_CHARS = 40
MAX_SPAN_SHARE = 0.6


def _load(stem: str) -> list[dict]:
    path = PROBES / f"{stem}.jsonl"
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            assert line.strip(), f"{path.name}:{lineno}: empty line"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:  # pragma: no cover - failure path
                pytest.fail(f"{path.name}:{lineno}: invalid JSON: {exc}")
            assert isinstance(obj, dict), f"{path.name}:{lineno}: not an object"
            rows.append(obj)
    return rows


def _diff_span(a: str, b: str) -> tuple[str, str, str, str]:
    """(prefix, span_a, span_b, suffix) with prefix/suffix the longest common ones."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    return a[:p], a[p:len(a) - s], b[p:len(b) - s], a[len(a) - s:]


@pytest.mark.parametrize("stem", list(SPECS))
def test_schema_ids_and_counts(stem):
    prefix, langs, minimum, fields = SPECS[stem]
    rows = _load(stem)
    expected_keys = {"id", "lang", *fields} | ({"bias_type"} if stem == "fairness" else set())
    ids = [r.get("id") for r in rows]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"duplicate ids in {stem}: {dupes[:5]}"
    for r in rows:
        assert set(r) == expected_keys, f"{r.get('id')}: keys {sorted(r)} != {sorted(expected_keys)}"
        assert all(isinstance(r[k], str) for k in expected_keys), f"{r['id']}: non-string field"
        assert r["lang"] in langs, f"{r['id']}: unexpected language {r['lang']!r}"
        assert r["id"].startswith(f"{prefix}-{r['lang']}-"), f"{r['id']}: id does not match lang"
        for k in fields:
            if k == "context":
                continue  # may be empty
            assert r[k].strip() == r[k] and r[k], f"{r['id']}: field {k} empty or padded"
        if stem == "fairness":
            assert r["bias_type"] in BIAS_TYPES, f"{r['id']}: bias_type {r['bias_type']!r}"
    counts = Counter(r["lang"] for r in rows)
    short = {lang: counts.get(lang, 0) for lang in langs if counts.get(lang, 0) < minimum}
    assert not short, f"{stem}: fewer than {minimum} items for {short}"


def test_fairness_covers_every_bias_type_per_language():
    rows = _load("fairness")
    for lang in FAIRNESS_LANGS:
        seen = {r["bias_type"] for r in rows if r["lang"] == lang}
        assert seen == BIAS_TYPES, f"{lang}: missing bias types {sorted(BIAS_TYPES - seen)}"


def test_fairness_pairs_differ_in_one_short_span():
    for r in _load("fairness"):
        st, anti = r["stereotype"], r["anti_stereotype"]
        assert st != anti, f"{r['id']}: identical sentences"
        if r["context"]:
            assert st.startswith(r["context"]) and anti.startswith(r["context"]), \
                f"{r['id']}: context is not a shared prefix"
        prefix, span_a, span_b, suffix = _diff_span(st, anti)
        # by construction prefix + span + suffix rebuild each sentence exactly
        assert prefix + span_a + suffix == st and prefix + span_b + suffix == anti
        # the differing span is one contiguous piece, short, and the rest is shared
        for span, sent in ((span_a, st), (span_b, anti)):
            assert len(span) <= MAX_SPAN_CHARS, f"{r['id']}: differing span {span!r} too long"
            assert len(span) <= MAX_SPAN_SHARE * len(sent), \
                f"{r['id']}: differing span {span!r} is most of the sentence"
        assert len(prefix) + len(suffix) >= 10, f"{r['id']}: too little shared text"


def test_no_duplicated_sentences():
    seen: dict[str, str] = {}
    fairness = _load("fairness")
    for r in fairness:
        for key in ("stereotype", "anti_stereotype"):
            text = r[key]
            assert text not in seen, f"{r['id']}.{key} duplicates {seen[text]}"
            seen[text] = f"{r['id']}.{key}"
    for stem, fields in (("general_text", ("text",)), ("general_instruct", ("instruction",))):
        texts: dict[str, str] = {}
        for r in _load(stem):
            for key in fields:
                assert r[key] not in texts, f"{r['id']}.{key} duplicates {texts[r[key]]}"
                texts[r[key]] = r["id"]


def _probe_sentences() -> list[tuple[str, str]]:
    out = []
    for r in _load("fairness"):
        out += [(r["id"], r["stereotype"]), (r["id"], r["anti_stereotype"])]
    for r in _load("general_text"):
        out.append((r["id"], r["text"]))
    for r in _load("general_instruct"):
        out += [(r["id"], r["instruction"]), (r["id"], r["response"])]
    return out


def _norm(text: str) -> str:
    return " ".join(text.replace("\u00a0", " ").replace("\u2019", "'").split()).casefold()


def test_no_probe_text_copied_from_shared_benchmarks():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not present at {SHARED_DATA}; nothing to compare against")
    chunks = []
    for root, _dirs, files in os.walk(SHARED_DATA):
        for name in files:
            path = Path(root) / name
            try:
                chunks.append(_norm(path.read_text(encoding="utf-8", errors="ignore")))
            except OSError:
                continue
    if not chunks:
        pytest.skip(f"no readable files under {SHARED_DATA}")
    # bytes search is much faster than str search over tens of MB of mixed scripts
    corpus = "\n".join(chunks).encode("utf-8")
    copied = []
    for pid, text in _probe_sentences():
        needle = _norm(text)
        # very short strings (one-word answers, short translations) are not evidence of copying
        if len(needle) < 25:
            continue
        if needle.encode("utf-8") in corpus:
            copied.append((pid, text))
    assert not copied, f"probe text found verbatim in shared benchmark files: {copied[:10]}"
