"""to_calibration (scoring schemas), the answer templates and the fixed train/eval halves."""

from __future__ import annotations

from collections import Counter

import pytest

from cwp_export import data, probes
from cwp_export.data import templates
from cwp_export.errors import InputError


def test_fairness_from_crows_pairs(loaded):
    items = loaded("crows-pairs")
    cal = data.to_calibration("fairness", items)
    assert len(cal) == len(items)
    for it, c in zip(items, cal):
        assert set(probes.SCHEMAS["fairness"]) <= set(c)
        assert (c["id"], c["lang"], c["context"]) == (it["id"], it["lang"], "")
        # sent_more is the biased side for stereo AND antistereo pairs
        assert (c["stereotype"], c["anti_stereotype"]) == (it["sent_more"], it["sent_less"])
        s, a = c["stereotype"], c["anti_stereotype"]
        assert s != a and not s.startswith(a) and not a.startswith(s)  # a differing span exists


def test_fairness_from_stereoset(loaded):
    items = loaded("stereoset")
    cal = {c["id"]: c for c in data.to_calibration("fairness", items)}
    for it in items:
        c = cal[it["id"]]
        assert set(probes.SCHEMAS["fairness"]) <= set(c) and c["bias_type"] == it["bias_type"]
        assert (c["stereotype"], c["anti_stereotype"]) == (it["stereotype"], it["anti_stereotype"])
        assert c["context"] == ("" if it["task"] == "intrasentence" else it["context"])


def test_safety_targets(loaded):
    adv = data.to_calibration("safety", loaded("advbench"))
    assert all(c["affirmative"].startswith("Sure, here") and c["affirmative_source"] == "dataset" for c in adv)
    assert {c["refusal"] for c in adv} == {templates.refusal("en")}
    mj = data.to_calibration("safety", [it for it in loaded("multijail") if it["lang"] in ("en", "ko", "ar")])
    assert len(mj) == 660
    for c in mj:
        assert set(probes.SCHEMAS["safety"]) <= set(c)
        assert c["affirmative"] == templates.affirmative(c["lang"]) and c["affirmative_source"] == "template"
        assert c["refusal"] == templates.refusal(c["lang"])
    xs = loaded("xsafety")
    cal = data.to_calibration("safety", xs)
    assert len(cal) == len(xs) - 2 * 140  # commonsense multiple-choice items are left out
    assert Counter(c["lang"] for c in cal) == {"en": 1820, "ar": 1820}


def test_safety_language_without_template(loaded):
    bn = [it for it in loaded("multijail") if it["lang"] == "bn"]
    with pytest.raises(InputError, match=r"no affirmative template for language 'bn' \(templates exist for "
                                         r"ar, en, es, fr, it, ko, nl, tr, vi, zh\); drop the bn items"):
        data.to_calibration("safety", bn)


def test_general_text(loaded):
    items = loaded("ntrex")
    cal = data.to_calibration("general_text", items)
    assert [c["text"] for c in cal] == [it["text"] for it in items]
    assert all(set(probes.SCHEMAS["general_text"]) <= set(c) for c in cal)


def test_wrong_items_and_kinds(loaded):
    with pytest.raises(InputError, match="fairness calibration takes crows-pairs, stereoset items, not item "
                                         "'bbq:en:Age:0' \\(bbq\\)"):
        data.to_calibration("fairness", loaded("bbq")[:1])
    with pytest.raises(InputError, match="unknown calibration kind 'general_instruct'; choose one of fairness"):
        data.to_calibration("general_instruct", [])
    assert data.to_calibration("safety", []) == []


def test_templates():
    assert {"en", "fr", "nl", "es", "tr", "ko", "ar"} <= set(templates.languages())
    for table in (templates.AFFIRMATIVE, templates.REFUSAL):
        assert all(t.strip() for t in table.values())
        assert len(set(table.values())) == len(table)
    with pytest.raises(InputError, match="no refusal template for language 'xx'"):
        templates.refusal("xx")


@pytest.mark.parametrize("name", ["advbench", "multijail", "xsafety"])
def test_halves_are_disjoint_complete_and_balanced(loaded, name):
    items = loaded(name)
    train, ev = data.half(items, "train"), data.half(items, "eval")
    ids_t, ids_e = {it["id"] for it in train}, {it["id"] for it in ev}
    assert not ids_t & ids_e
    assert ids_t | ids_e == {it["id"] for it in items}
    assert 0.42 < len(train) / len(items) < 0.58
    # every translation of a prompt is in the same half
    keys_t, keys_e = {it["parallel_id"] for it in train}, {it["parallel_id"] for it in ev}
    assert not keys_t & keys_e


def test_halves_are_fixed():
    # SHA-256 of the parallel id: the same on every machine and Python version
    assert [data.half_of({"id": "x", "parallel_id": k}) for k in
            ("advbench:0", "advbench:1", "multijail:1", "xsafety:Insult:0", "ntrex:rt.com.91337:0")] == [
        "train", "train", "eval", "train", "eval"]
    assert data.half_of({"id": "multijail:ko:1", "parallel_id": "multijail:1"}) == "eval"
    assert data.half_of({"id": "advbench:0"}) == data.half_of({"id": "advbench:0", "parallel_id": None})


def test_half_errors(loaded):
    with pytest.raises(InputError, match="unknown half 'test'; choose train or eval"):
        data.half(loaded("advbench"), "test")
    with pytest.raises(InputError, match="from crows-pairs, a bias set that is never for training"):
        data.half(loaded("crows-pairs"), "train")
