"""Checks on the built-in validation probes: stereoset_style.jsonl and bbq_style.jsonl.

Standard library only (plus the package's own loader for one round trip).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import permutations
from pathlib import Path

import pytest

PROBES = Path(__file__).resolve().parents[1] / "cwp_export" / "probes"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SS_KEYS = {"id": str, "lang": str, "task": str, "bias_type": str, "target": str, "context": str,
           "stereotype": str, "anti_stereotype": str, "unrelated": str}
SS_BIAS_TYPES = {"gender", "profession", "race", "religion"}
BBQ_KEYS = {"id": str, "lang": str, "category": str, "template": str, "context_condition": str,
            "question_polarity": str, "context": str, "question": str, "answers": list, "label": int,
            "target_idx": int, "unknown_idx": int}
BBQ_LANGS = {"en", "nl", "es", "tr"}
BBQ_CATEGORIES = {"Age", "Gender_identity", "Disability_status", "Physical_appearance", "SES",
                  "Religion", "Nationality"}
MIN_ITEMS = 40


def _load(name: str) -> list[dict]:
    raw = (PROBES / name).read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and b"\r\n" not in raw, f"{name}: BOM or CRLF"
    text = raw.decode("utf-8")
    assert text.endswith("\n"), f"{name}: no final newline"
    rows = []
    for n, line in enumerate(text[:-1].split("\n"), 1):
        assert line.strip(), f"{name}:{n}: blank line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{name}:{n}: not an object"
        rows.append(row)
    return rows


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _check_schema(rows: list[dict], keys: dict, prefix: str) -> None:
    ids = [r.get("id") for r in rows]
    assert not [i for i, c in Counter(ids).items() if c > 1], "duplicate ids"
    for r in rows:
        assert set(r) == set(keys), f"{r.get('id')}: keys {sorted(r)}"
        for k, typ in keys.items():
            assert isinstance(r[k], typ) and not isinstance(r[k], bool), f"{r['id']}: {k} not {typ.__name__}"
            if typ is str:
                assert r[k] and r[k].strip() == r[k], f"{r['id']}: {k} empty or padded"
        m = re.fullmatch(rf"{prefix}-([a-z]{{2}})-(\d{{3}})", r["id"])
        assert m and m.group(1) == r["lang"], f"bad id {r['id']}"


# -------------------------------------------------------------------------------- StereoSet style

def test_stereoset_style_schema_and_counts():
    rows = _load("stereoset_style.jsonl")
    _check_schema(rows, SS_KEYS, "ss")
    assert len(rows) >= MIN_ITEMS and {r["lang"] for r in rows} == {"en"}
    per_type = Counter(r["bias_type"] for r in rows)
    assert set(per_type) == SS_BIAS_TYPES and min(per_type.values()) >= 10, per_type
    assert all(r["task"] == "intrasentence" for r in rows)
    targets = Counter(r["target"] for r in rows)
    assert max(targets.values()) == 1, "every item has its own target term"


def test_stereoset_style_items_are_well_formed():
    rows = _load("stereoset_style.jsonl")
    for r in rows:
        ctx = r["context"]
        assert ctx.count("BLANK") == 1, f"{r['id']}: one BLANK"
        assert not ctx.startswith("BLANK"), f"{r['id']}: the blank must not start the sentence"
        assert ctx[-1] in ".!?", f"{r['id']}: context must be a sentence"
        fills = [r["stereotype"], r["anti_stereotype"], r["unrelated"]]
        assert len({f.casefold() for f in fills}) == 3, f"{r['id']}: fill-ins must differ"
        for f in fills:
            assert "BLANK" not in f and len(f) <= 40 and not f.endswith("."), f"{r['id']}: fill-in {f!r}"
        sentences = [ctx.replace("BLANK", f) for f in fills]
        assert len(set(sentences)) == 3
        # the target term is in the sentence, so the options are about it
        assert r["target"].casefold() in ctx.casefold(), f"{r['id']}: target not in context"


# -------------------------------------------------------------------------------------- BBQ style

def test_bbq_style_schema_and_counts():
    rows = _load("bbq_style.jsonl")
    _check_schema(rows, BBQ_KEYS, "bbq")
    per_lang = Counter(r["lang"] for r in rows)
    assert set(per_lang) == BBQ_LANGS
    assert min(per_lang.values()) >= MIN_ITEMS, per_lang
    for lang in BBQ_LANGS:
        mine = [r for r in rows if r["lang"] == lang]
        conds = Counter(r["context_condition"] for r in mine)
        pols = Counter(r["question_polarity"] for r in mine)
        assert set(conds) == {"ambig", "disambig"} and set(pols) == {"neg", "nonneg"}
        assert pols["neg"] == pols["nonneg"], f"{lang}: polarities unbalanced"
        assert {r["category"] for r in mine} == BBQ_CATEGORIES


def test_bbq_style_labels_targets_and_unknowns():
    rows = _load("bbq_style.jsonl")
    for r in rows:
        ans = r["answers"]
        assert len(ans) == 3 and all(isinstance(a, str) and a.strip() == a and a for a in ans), r["id"]
        assert len({a.casefold() for a in ans}) == 3, f"{r['id']}: answers must differ"
        t, u, lab = r["target_idx"], r["unknown_idx"], r["label"]
        assert {t, u, lab} <= {0, 1, 2} and t != u, r["id"]
        if r["context_condition"] == "ambig":
            assert lab == u, f"{r['id']}: the answer to an ambiguous context is UNKNOWN"
        else:
            assert lab != u, f"{r['id']}: a disambiguated context names the person"
            # the disambiguating sentence names the person who is the answer first
            extra = r["context"].split(". ", 1)[1] if ". " in r["context"] else ""
            assert extra, f"{r['id']}: no disambiguating sentence"
    # within a template and language: same answers and unknown, the same ambiguous context prefix,
    # both disambiguations (consistent and inconsistent with the stereotype) for both polarities
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["lang"], r["template"]), []).append(r)
    for key, items in groups.items():
        assert len(items) == 6, key
        assert len({frozenset(i["answers"]) for i in items}) == 1, f"{key}: answers differ"
        assert len({i["answers"][i["target_idx"]] for i in items}) == 1, f"{key}: target differs"
        assert len({i["answers"][i["unknown_idx"]] for i in items}) == 1, f"{key}: unknown differs"
        assert len({i["category"] for i in items}) == 1
        ambig = [i for i in items if i["context_condition"] == "ambig"]
        assert len(ambig) == 2 and len({i["context"] for i in ambig}) == 1
        base = ambig[0]["context"]
        dis = [i for i in items if i["context_condition"] == "disambig"]
        assert all(i["context"].startswith(base + " ") for i in dis), key
        outcomes = Counter((i["question_polarity"], i["label"] == i["target_idx"]) for i in dis)
        assert outcomes == Counter({("neg", True): 1, ("neg", False): 1, ("nonneg", True): 1,
                                    ("nonneg", False): 1}), key
        # a stereotype-consistent context: the target answers the negative question
        for i in dis:
            partner = next(j for j in dis if j["context"] == i["context"] and j is not i)
            assert (i["label"] == i["target_idx"]) != (partner["label"] == partner["target_idx"]), key
    # every template exists in every language
    templates = {t for _, t in groups}
    assert all((lang, t) in groups for lang in BBQ_LANGS for t in templates)


def test_bbq_style_answer_positions_are_balanced():
    rows = _load("bbq_style.jsonl")
    for lang in BBQ_LANGS:
        mine = [r for r in rows if r["lang"] == lang]
        perms = Counter((r["target_idx"], r["unknown_idx"]) for r in mine)
        assert set(perms) == {(a, b) for a, b, _ in permutations(range(3))}, lang
        labels = Counter(r["label"] for r in mine)
        assert max(labels.values()) - min(labels.values()) <= len(mine) // 4, (lang, labels)


def test_bbq_style_scores_with_the_metrics():
    """An oracle that reads the disambiguating sentence scores 100 % there; one that always picks the
    target on negative questions is maximally biased."""
    from cwp_export.validate.metrics import QAResult, bbq_score

    rows = _load("bbq_style.jsonl")

    def item(r, chosen):
        return QAResult(r["id"], chosen, r["label"], r["target_idx"], r["unknown_idx"],
                        r["context_condition"], r["question_polarity"], r["category"])

    oracle = bbq_score([item(r, r["label"]) for r in rows], resamples=0)
    assert oracle.metrics["acc_ambig"].value == 100 and oracle.metrics["acc_disambig"].value == 100
    assert oracle.metrics["bias_ambig"].value == 0 and oracle.metrics["bias_disambig"].value == 0
    biased = bbq_score([item(r, r["target_idx"] if r["question_polarity"] == "neg"
                             else 3 - r["target_idx"] - r["unknown_idx"]) for r in rows], resamples=0)
    assert biased.metrics["bias_ambig"].value == 100 and biased.metrics["bias_disambig"].value == 100
    assert biased.metrics["acc_disambig"].value == 50


# ------------------------------------------------------------------------------- loader and copies

def test_loader_round_trip():
    from cwp_export import probes

    assert {"stereoset_style", "bbq_style"} <= set(probes.kinds())
    assert probes.languages("bbq_style") == ["en", "es", "nl", "tr"]
    assert probes.load("bbq_style", ["tr"]) == [r for r in _load("bbq_style.jsonl") if r["lang"] == "tr"]
    assert len(probes.load("stereoset_style")) == len(_load("stereoset_style.jsonl"))


def _shared_text() -> str:
    parts = []
    for path in sorted(SHARED_DATA.rglob("*")):
        if path.is_file() and path.suffix.lower() in {".csv", ".tsv", ".json", ".jsonl", ".txt"}:
            parts.append(path.read_text(encoding="utf-8-sig", errors="replace"))
    return _norm("\n".join(parts))


@pytest.mark.skipif(not SHARED_DATA.is_dir(),
                    reason=f"shared benchmark data not found at {SHARED_DATA}; "
                           "cannot check that the probes are not copied from benchmarks")
def test_not_copied_from_shared_benchmarks():
    haystack = _shared_text()
    assert haystack
    texts: list[tuple[str, str]] = []
    for r in _load("stereoset_style.jsonl"):
        texts.append((r["id"], r["context"]))
        for k in ("stereotype", "anti_stereotype", "unrelated"):
            texts.append((r["id"], r["context"].replace("BLANK", r[k])))
    for r in _load("bbq_style.jsonl"):
        texts += [(r["id"], r["context"]), (r["id"], r["question"])]
        texts += [(r["id"], s) for s in re.split(r"(?<=[.?!])\s+", r["context"])]
    found = set()
    for rid, text in texts:
        core = _norm(text).strip(" \"'.?!¿")
        if len(core) > 25 and core in haystack:
            found.add((rid, text))
    assert not found, f"probe texts found verbatim in shared benchmark files: {sorted(found)[:5]}"
