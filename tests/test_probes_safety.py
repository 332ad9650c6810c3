"""Checks for the built-in safety probe data in cwp_export/probes/ (standard library only).

Files checked: safety.jsonl (harmful requests + affirmative target + refusal),
benign_lookalikes.jsonl (risky-looking but benign requests + answer) and
refusal_labels.jsonl (hand-labelled answers for a refusal detector).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

PROBES = Path(__file__).resolve().parents[1] / "cwp_export" / "probes"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

REQUIRED_LANGS = ("en", "ko", "ar")
OPTIONAL_LANGS = ("fr", "nl", "es", "tr")
ALL_LANGS = REQUIRED_LANGS + OPTIONAL_LANGS
CATEGORIES = {
    "weapons", "violence", "cybercrime", "fraud", "drugs", "self-harm",
    "harassment", "privacy", "dangerous-chemistry", "theft",
}
MIN_SAFETY = 60
MIN_BENIGN = 30
MIN_LABEL = 20  # per label, per language
AFFIRMATIVE_MAX = 120
# an affirmative target only restates compliance and ends where the content would start
AFFIRMATIVE_ENDINGS = (":", "：", "...", "…")

SCHEMAS = {
    "safety.jsonl": {"id": str, "lang": str, "category": str, "request": str,
                     "affirmative": str, "refusal": str},
    "benign_lookalikes.jsonl": {"id": str, "lang": str, "request": str, "answer": str},
    "refusal_labels.jsonl": {"id": str, "lang": str, "answer": str, "label": str},
}
ID_PREFIX = {"safety.jsonl": "safe", "benign_lookalikes.jsonl": "benign",
             "refusal_labels.jsonl": "lab"}


def load(name: str) -> list[dict]:
    path = PROBES / name
    assert path.is_file(), f"missing probe file {path}"
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            assert line.strip(), f"{name}:{n}: blank line"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:  # pragma: no cover - failure path
                pytest.fail(f"{name}:{n}: invalid JSON: {e}")
            assert isinstance(row, dict), f"{name}:{n}: not a JSON object"
            rows.append(row)
    assert rows, f"{name} is empty"
    return rows


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


@pytest.fixture(scope="module", params=sorted(SCHEMAS))
def probe_file(request):
    return request.param, load(request.param)


def test_no_bom_and_utf8():
    for name in SCHEMAS:
        raw = (PROBES / name).read_bytes()
        assert not raw.startswith(b"\xef\xbb\xbf"), f"{name} starts with a BOM"
        raw.decode("utf-8")
        assert b"\r\n" not in raw, f"{name} uses CRLF line endings"


def test_schema_and_types(probe_file):
    name, rows = probe_file
    schema = SCHEMAS[name]
    for row in rows:
        assert set(row) == set(schema), f"{name} {row.get('id')}: fields {sorted(row)}"
        for key, typ in schema.items():
            assert isinstance(row[key], typ), f"{name} {row['id']}: {key} not {typ.__name__}"
            assert row[key].strip() == row[key] and row[key], f"{name} {row['id']}: {key} empty/padded"


def test_ids_unique_and_well_formed(probe_file):
    name, rows = probe_file
    ids = [r["id"] for r in rows]
    dup = [i for i, c in Counter(ids).items() if c > 1]
    assert not dup, f"{name}: duplicated ids {dup}"
    for r in rows:
        m = re.fullmatch(rf"{ID_PREFIX[name]}-([a-z]{{2}})-(\d{{3}})", r["id"])
        assert m, f"{name}: bad id {r['id']}"
        assert m.group(1) == r["lang"], f"{name}: id {r['id']} vs lang {r['lang']}"


def test_languages(probe_file):
    name, rows = probe_file
    langs = {r["lang"] for r in rows}
    assert langs <= set(ALL_LANGS), f"{name}: unexpected languages {langs - set(ALL_LANGS)}"
    assert set(REQUIRED_LANGS) <= langs, f"{name}: missing {set(REQUIRED_LANGS) - langs}"


SCRIPT_CHECK = {"ko": re.compile(r"[\uac00-\ud7a3]"), "ar": re.compile(r"[\u0600-\u06ff]")}


def test_text_is_in_the_stated_script(probe_file):
    name, rows = probe_file
    for r in rows:
        pat = SCRIPT_CHECK.get(r["lang"])
        for key, val in r.items():
            if key in ("id", "lang", "category", "label"):
                continue
            if pat is not None:
                assert pat.search(val), f"{name} {r['id']}: {key} not in {r['lang']} script"
            else:
                assert not re.search(r"[\uac00-\ud7a3\u0600-\u06ff]", val), \
                    f"{name} {r['id']}: {key} contains Korean/Arabic text"


def test_safety_counts_and_categories():
    rows = load("safety.jsonl")
    per_lang = Counter(r["lang"] for r in rows)
    for lang in REQUIRED_LANGS:
        assert per_lang[lang] >= MIN_SAFETY, f"safety {lang}: {per_lang[lang]} < {MIN_SAFETY}"
    for r in rows:
        assert r["category"] in CATEGORIES, f"{r['id']}: unknown category {r['category']}"
    for lang in per_lang:
        cats = {r["category"] for r in rows if r["lang"] == lang}
        assert cats == CATEGORIES, f"safety {lang}: categories missing {CATEGORIES - cats}"


def test_safety_affirmative_targets():
    for r in load("safety.jsonl"):
        aff = r["affirmative"]
        assert len(aff) < AFFIRMATIVE_MAX, f"{r['id']}: affirmative too long ({len(aff)})"
        assert aff.endswith(AFFIRMATIVE_ENDINGS), f"{r['id']}: affirmative must end with ':'"
        assert aff.count("\n") == 0, f"{r['id']}: affirmative spans lines"
        # only a restatement: nothing after the colon, no list or code markers
        assert not re.search(r"```|^\s*(\d+\.|-|\*)\s", aff, re.M), f"{r['id']}: content in target"


def test_safety_refusals_are_short():
    for r in load("safety.jsonl"):
        ref = r["refusal"]
        assert len(ref) < 300, f"{r['id']}: refusal too long"
        sentences = [s for s in re.split(r"(?<=[.!?؟。])\s+", ref) if s]
        assert 1 <= len(sentences) <= 2, f"{r['id']}: refusal should be 1-2 sentences"
        assert ref.rstrip()[-1] in ".!?؟。", f"{r['id']}: refusal lacks final punctuation"


def test_benign_counts():
    rows = load("benign_lookalikes.jsonl")
    per_lang = Counter(r["lang"] for r in rows)
    for lang in REQUIRED_LANGS:
        assert per_lang[lang] >= MIN_BENIGN, f"benign {lang}: {per_lang[lang]} < {MIN_BENIGN}"
    for lang in OPTIONAL_LANGS:
        if per_lang[lang]:
            assert per_lang[lang] >= 10, f"benign {lang}: optional language with < 10 items"


def test_refusal_labels_balanced():
    rows = load("refusal_labels.jsonl")
    for r in rows:
        assert r["label"] in ("refusal", "compliance"), f"{r['id']}: bad label {r['label']}"
    counts = Counter((r["lang"], r["label"]) for r in rows)
    langs = {r["lang"] for r in rows}
    for lang in langs:
        ref, comp = counts[lang, "refusal"], counts[lang, "compliance"]
        if lang in REQUIRED_LANGS:
            assert ref >= MIN_LABEL and comp >= MIN_LABEL, f"labels {lang}: {ref}/{comp}"
        assert ref and comp, f"labels {lang}: only one label present"
        assert 0.4 <= ref / (ref + comp) <= 0.6, f"labels {lang}: unbalanced {ref}/{comp}"


def test_no_duplicated_texts():
    for name, key in (("safety.jsonl", "request"), ("benign_lookalikes.jsonl", "request"),
                      ("refusal_labels.jsonl", "answer")):
        texts = Counter(norm(r[key]) for r in load(name))
        dup = [t for t, c in texts.items() if c > 1]
        assert not dup, f"{name}: duplicated {key}s {dup[:5]}"
    # a request must not be both "refuse" and "answer"
    harmful = {norm(r["request"]) for r in load("safety.jsonl")}
    benign = {norm(r["request"]) for r in load("benign_lookalikes.jsonl")}
    assert not harmful & benign, f"requests in both files: {sorted(harmful & benign)[:5]}"


def test_requests_carry_no_operational_detail():
    """Requests are plain asks: no code blocks, numbered steps, quantities or URLs."""
    for r in load("safety.jsonl"):
        req = r["request"]
        assert len(req) < 200, f"{r['id']}: request too long"
        assert not re.search(r"```|https?://|\n|\b\d+\s?(g|mg|ml|kg|%)\b", req), \
            f"{r['id']}: request contains operational detail"


def _shared_text() -> str:
    parts = []
    for path in sorted(SHARED_DATA.rglob("*")):
        if path.is_file() and path.suffix.lower() in {".csv", ".tsv", ".json", ".jsonl", ".txt"}:
            parts.append(path.read_text(encoding="utf-8-sig", errors="replace"))
    return norm("\n".join(parts))


@pytest.mark.skipif(not SHARED_DATA.is_dir(),
                    reason=f"shared benchmark data not found at {SHARED_DATA}; "
                           "cannot check that probes are not copied from benchmarks")
def test_probes_not_copied_from_shared_benchmarks():
    haystack = _shared_text()
    assert haystack, "no text/CSV/JSON files read from shared data"
    found = []
    for name, key in (("safety.jsonl", "request"), ("benign_lookalikes.jsonl", "request"),
                      ("refusal_labels.jsonl", "answer")):
        for r in load(name):
            text = norm(r[key])
            # the stored form may escape quotes (JSON/CSV); check the unquoted core too
            core = text.strip(" \"'.?!؟。")
            if text in haystack or (len(core) > 25 and core in haystack):
                found.append(r["id"])
    assert not found, f"probe texts found verbatim in shared benchmark files: {found}"
