"""CrowS-Pairs loader: original English file and the parallel en/fr/nl set."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from cwp_export import data
from cwp_export.errors import InputError


def _by_id(items, lang, subset):
    return {it["pair_id"]: it for it in items if it["lang"] == lang and it["subset"] == subset}


def test_original_file(loaded):
    orig = _by_id(loaded("crows-pairs"), "en", "original")
    assert len(orig) == 1055
    first = orig[1]  # first data row; its id column has an empty header
    assert first["sent_more"].startswith("The poor are really ignorant")
    assert first["direction"] == first["direction_own"] == "stereo"
    assert first["annotations"] == [["socioeconomic"]] * 5  # a Python literal, not JSON
    assert Counter(it["direction"] for it in orig.values()) == {"stereo": 897, "antistereo": 158}
    # the upstream file has one pair twice under two ids; both are kept (the metric counts both)
    assert orig[1459]["sent_more"] == orig[1502]["sent_more"]
    assert orig[1459]["id"] != orig[1502]["id"]


def test_multilingual_set_is_parallel(loaded):
    items = loaded("crows-pairs")
    en, fr, nl = (_by_id(items, lang, "multilingual") for lang in ("en", "fr", "nl"))
    assert len(en) == len(nl) == 1023
    assert set(fr) == set(en) - {129, 379}  # empty / identical French pairs are skipped
    assert set(en) <= set(_by_id(items, "en", "original"))
    assert fr[1]["parallel_id"] == en[1]["parallel_id"] == nl[1]["parallel_id"]
    assert nl[1]["sent_more"].startswith("De armen weten")
    for it in items:
        assert it["sent_more"] != it["sent_less"] and it["sent_more"].strip() and it["sent_less"].strip()
        assert "\r" not in it["sent_more"] + it["sent_less"]  # CRLF files


def test_dutch_direction_comes_from_english(loaded):
    items = loaded("crows-pairs")
    en, fr, nl = (_by_id(items, lang, "multilingual") for lang in ("en", "fr", "nl"))
    assert nl[218]["direction_own"] == "antistereo" and nl[218]["direction"] == "stereo"  # README example
    assert all(nl[i]["direction"] == en[i]["direction"] for i in nl)
    assert all(fr[i]["direction"] == fr[i]["direction_own"] == en[i]["direction"] for i in fr)
    assert sum(nl[i]["direction_own"] != en[i]["direction"] for i in nl) == 226
    # bias_type is each language's own (re-assigned in some French and Dutch pairs)
    assert any(fr[i]["bias_type"] != en[i]["bias_type"] for i in fr)


def test_text_is_kept_as_is(loaded):
    items = loaded("crows-pairs")
    fr = [it for it in items if it["lang"] == "fr"]
    assert any("\u00a0" in it["sent_more"] for it in fr)  # no-break spaces before ':;?!' stay
    nl = [it for it in items if it["lang"] == "nl"]
    text = "".join(it["sent_more"] + it["sent_less"] for it in nl)
    assert "\ufffd" not in text and "√" not in text  # transcoded from Mac-Roman upstream
    assert "é" in text or "ë" in text


def test_single_dutch_file_uses_sibling_english(data_root, tmp_path):
    folder = data_root / "crows_pairs_multilingual"
    items = data.load("crows-pairs", folder / "crows_dutch.csv")
    assert {it["lang"] for it in items} == {"nl"}
    assert next(it for it in items if it["pair_id"] == 218)["direction"] == "stereo"
    shutil.copy(folder / "crows_dutch.csv", tmp_path / "crows_dutch.csv")
    alone = data.load("crows-pairs", tmp_path / "crows_dutch.csv")
    assert all(it["direction"] == it["direction_own"] for it in alone)


def test_language_from_file_name_or_column(tmp_path):
    (tmp_path / "crows_es.csv").write_text(
        "id,sent_more,sent_less,stereo_antistereo,bias_type\n1,Los pobres x.,Los ricos x.,stereo,socioeconomic\n",
        encoding="utf-8")
    assert data.load("crows-pairs", tmp_path / "crows_es.csv")[0]["id"] == "crows-pairs:es:multilingual:1"
    (tmp_path / "mine.csv").write_text(
        "id,lang,sent_more,sent_less,stereo_antistereo,bias_type\n3,tr,A x.,A y.,antistereo,age\n", encoding="utf-8")
    assert data.load("crows-pairs", tmp_path / "mine.csv")[0]["lang"] == "tr"
    (tmp_path / "other.csv").write_text("id,sent_more,sent_less,stereo_antistereo,bias_type\n", encoding="utf-8")
    with pytest.raises(InputError, match="cannot tell the language of .*other.csv: name it like crows_<lang>.csv"):
        data.load("crows-pairs", tmp_path / "other.csv")


def test_broken_files(tmp_path):
    f = tmp_path / "crows_fr.csv"
    f.write_text("id,more,less,stereo_antistereo,bias_type\n1,a,b,stereo,age\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"lacks column\(s\) sent_more, sent_less: expected id, sent_more, "
                                         r"sent_less, stereo_antistereo, bias_type, found 'bias_type', 'id', 'less'"):
        data.load("crows-pairs", f)
    f.write_text("id,sent_more,sent_less,stereo_antistereo,bias_type\n1,a x,a y,stereotype,age\n", encoding="utf-8")
    with pytest.raises(InputError, match="stereo_antistereo 'stereotype' is not one of stereo, antistereo"):
        data.load("crows-pairs", f)
    f.write_text("id,sent_more,sent_less,stereo_antistereo,bias_type\nx,a x,a y,stereo,age\n", encoding="utf-8")
    with pytest.raises(InputError, match="id 'x' is not an integer"):
        data.load("crows-pairs", f)
    f.write_text("id,sent_more,sent_less,stereo_antistereo,bias_type\n1,a x,a y,stereo,age\n1,b x,b y,stereo,age\n",
                 encoding="utf-8")
    with pytest.raises(InputError, match="id 1 occurs twice"):
        data.load("crows-pairs", f)


def test_holdout_rule_on_a_full_copy(tmp_path):
    rows = "".join(f"{i},A{i} x.,A{i} y.,stereo,age\n" for i in range(20))
    (tmp_path / "crows_eng.csv").write_text("id,sent_more,sent_less,stereo_antistereo,bias_type\n" + rows,
                                            encoding="utf-8")
    held = data.load("crows-pairs", tmp_path, split="holdout")
    assert [it["pair_id"] for it in held] == [0, 3, 7, 10, 13, 17]
    assert len(data.load("crows-pairs", tmp_path, split="calibration")) == 14
