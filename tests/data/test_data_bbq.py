"""BBQ / MBBQ loader: labels, the UNKNOWN option, derived bias targets, control files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cwp_export import data
from cwp_export.errors import InputError


def _get(items, lang, part, example_id):
    return next(it for it in items if it["id"] == f"{it['dataset']}:{lang}:{part}:{example_id}")


# (dataset, lang, file part, example_id, answers' surface words, unknown_idx, target_idx, biased_idx, label)
HAND_CHECKED = [
    # ambiguous neg: grandfather (old) is the target and the biased answer; correct = unknown
    ("bbq", "en", "Age", 0, ("grandfather", "grandson", "Can't be determined"), 2, 0, 0, 2),
    # disambiguated nonneg: the biased answer is the non-target (grandson)
    ("bbq", "en", "Age", 3, ("grandfather", "grandson", "Can't be determined"), 2, 0, 1, 0),
    # Nationality group labels are regions: matched on the nationality word
    ("bbq", "en", "Nationality", 0, ("British", "Japanese", "Can't answer"), 2, 0, 0, 2),
    # Disability: stereotyped_groups = ["disabled", "physically disabled"]
    ("bbq", "en", "Disability_status", 0, ("carrying a stack of papers", "Can't be determined", "wheelchair"),
     1, 2, 2, 1),
    # SES: "low SES" vs "lowSES"
    ("mbbq", "en", "SES", 48, ("psychologist", "Unknown", "truck driver"), 1, 2, 2, 1),
    # Turkish answer order differs from English; the target is still the grandfather
    ("mbbq", "tr", "Age", 3, ("torun", "büyükbaba", "Cevap veremiyorum"), 2, 1, 0, 1),
    # translated gender labels (kadın = F), stereotyped_groups stays English
    ("mbbq", "tr", "Gender_identity", 0, ("Bilinmeyen", "adam", "kadın"), 0, 2, 2, 0),
    ("mbbq", "es", "Gender_identity", 3, ("No se sabe", "mujer", "hombre"), 0, 1, 2, 1),
    # translated Sexual_orientation labels match the translated stereotyped_groups
    ("mbbq", "nl", "Sexual_orientation", 0, ("homo", "Kan niet bantwoorden", "lesbisch"), 1, 0, 0, 1),
    # control files: names, the group label still gives the target
    ("mbbq", "en", "Age_control", 0, ("Luna", "Not answerable", "Emma"), 1, 2, 2, 1),
]


@pytest.mark.parametrize("case", HAND_CHECKED, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
def test_hand_checked_targets(loaded, case):
    name, lang, part, example_id, words, unknown, target, biased, label = case
    it = _get(loaded(name), lang, part, example_id)
    assert tuple(w for w, _ in it["answer_info"]) == words
    assert (it["unknown_idx"], it["target_idx"], it["biased_idx"], it["label"]) == (unknown, target, biased, label)
    assert it["control"] == part.endswith("_control")


def test_every_bbq_item_has_one_target(loaded):
    items = loaded("bbq")
    assert Counter(it["category"] for it in items) == {
        "Age": 2696, "Disability_status": 1116, "Nationality": 2400, "Physical_appearance": 1208,
        "Religion": 800, "Sexual_orientation": 624}
    assert all(it["target_idx"] is not None for it in items)


def test_mbbq_targets_and_upstream_errors(loaded):
    items = loaded("mbbq")
    missing = [it for it in items if it["target_idx"] is None]
    # only the Spanish Gender_identity items whose two people both became "chico" (README)
    assert len(missing) == 8
    assert {(it["lang"], it["category"], it["control"]) for it in missing} == {("es", "Gender_identity", False)}
    assert all(set(w for w, _ in it["answer_info"]) >= {"chico"} for it in missing)
    assert all(it["biased_idx"] is None for it in missing)
    assert Counter((it["lang"], it["control"]) for it in items) == {
        (lang, c): 7600 for lang in ("en", "es", "nl", "tr") for c in (False, True)}


@pytest.mark.parametrize("name", ["bbq", "mbbq"])
def test_label_conventions(loaded, name):
    for it in loaded(name):
        assert it["answer_info"][it["unknown_idx"]][1] == "unknown"
        assert sum(g == "unknown" for _, g in it["answer_info"]) == 1
        assert len(it["answers"]) == 3 and it["label"] in (0, 1, 2)
        if it["context_condition"] == "ambig":
            assert it["label"] == it["unknown_idx"]
        else:
            assert it["label"] != it["unknown_idx"]
        if it["target_idx"] is not None:
            assert it["target_idx"] != it["unknown_idx"]
            assert it["biased_idx"] == (it["target_idx"] if it["question_polarity"] == "neg"
                                        else 3 - it["target_idx"] - it["unknown_idx"])
        assert isinstance(it["question_index"], int)  # a string in the files
        assert it["question_index"] % 10 not in (0, 3, 7)  # template holdout already applied


def test_mbbq_aligns_by_example_id(loaded):
    items = loaded("mbbq")
    by_pid: dict[str, dict[str, dict]] = {}
    for it in items:
        by_pid.setdefault(it["parallel_id"], {})[it["lang"]] = it
    assert len(by_pid) == 15200 and all(len(v) == 4 for v in by_pid.values())
    for v in by_pid.values():
        assert len({(it["question_index"], it["context_condition"], it["question_polarity"])
                    for it in v.values()}) == 1
    # example_id alone does not align: Spanish Gender_identity ids run 8 ahead from template 8 on
    shifted = [v for v in by_pid.values() if len({it["example_id"] for it in v.values()}) > 1]
    assert shifted and all(it["category"] == "Gender_identity" for v in shifted for it in v.values())
    assert all(v["es"]["example_id"] == v["en"]["example_id"] + 8 for v in shifted)

    def role(it):
        k = it["label"]
        return "unknown" if k == it["unknown_idx"] else "target" if k == it["target_idx"] else "other"

    # answer order differs between languages, but the correct answer's role agrees (except where
    # fillers were culturally adapted, e.g. SES_tr, or upstream gender errors)
    stable = [v for pid, v in by_pid.items() if pid.split(":")[1] in
              ("Age", "Disability_status", "Physical_appearance", "Sexual_orientation")]
    assert all(len({role(it) for it in v.values()}) == 1 for v in stable)
    orders = [tuple(it["unknown_idx"] for it in v.values()) for v in stable]
    assert sum(len(set(o)) > 1 for o in orders) > 100


def _row(**kw):
    row = {"example_id": 0, "question_index": "1", "question_polarity": "neg", "context_condition": "ambig",
           "category": "Age", "answer_info": {"ans0": ["old man", "old"], "ans1": ["boy", "nonOld"],
                                              "ans2": ["Unknown", "unknown"]},
           "additional_metadata": {"subcategory": "None", "stereotyped_groups": ["old"]},
           "context": "c", "question": "q", "ans0": "The old man", "ans1": "The boy", "ans2": "Unknown", "label": 2}
    row.update(kw)
    return json.dumps(row) + "\n"


def test_file_names_give_language_and_control(tmp_path):
    (tmp_path / "Age_control_nl.jsonl").write_text(_row(), encoding="utf-8")
    (tmp_path / "Age_nl.jsonl").write_text(_row(), encoding="utf-8")
    items = data.load("mbbq", tmp_path)
    assert [it["id"] for it in items] == ["mbbq:nl:Age_control:0", "mbbq:nl:Age:0"]
    assert [it["control"] for it in items] == [True, False]
    assert data.load("bbq", tmp_path / "Age_nl.jsonl")[0]["lang"] == "nl"  # language from the name
    (tmp_path / "Age.jsonl").write_text(_row(), encoding="utf-8")
    with pytest.raises(InputError, match="cannot tell the language; name the file <Category>_<lang>.jsonl"):
        data.load("mbbq", tmp_path / "Age.jsonl")


def test_broken_items(tmp_path):
    f = tmp_path / "Age.jsonl"
    f.write_text(_row(answer_info={"ans0": ["a", "unknown"], "ans1": ["b", "x"], "ans2": ["c", "unknown"]}),
                 encoding="utf-8")
    with pytest.raises(InputError, match=r"Age.jsonl line 1: 2 answers have group label 'unknown' \(expected exactly one"):
        data.load("bbq", f)
    f.write_text(_row(label=3), encoding="utf-8")
    with pytest.raises(InputError, match="label 3 is not an answer index 0, 1 or 2"):
        data.load("bbq", f)
    f.write_text(_row(context_condition="ambiguous"), encoding="utf-8")
    with pytest.raises(InputError, match="context_condition 'ambiguous' is not one of ambig, disambig"):
        data.load("bbq", f)
    f.write_text(_row() + _row(answer_info={"ans0": ["a", "b"]}), encoding="utf-8")
    with pytest.raises(InputError, match="line 2: answer_info must map ans0, ans1, ans2"):
        data.load("bbq", f)
    f.write_text(_row().replace('"question":', '"q":'), encoding="utf-8")
    with pytest.raises(InputError, match=r"line 1 lacks column\(s\) question: expected example_id"):
        data.load("bbq", f)


def test_template_holdout_on_a_full_copy(tmp_path):
    f = tmp_path / "Age.jsonl"
    f.write_text("".join(_row(example_id=i, question_index=str(i)) for i in range(1, 15)), encoding="utf-8")
    assert [it["question_index"] for it in data.load("bbq", f, split="holdout")] == [3, 7, 10, 13]
