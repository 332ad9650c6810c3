"""cwp_export.data: the registry, per-dataset counts and schemas, and the common error cases."""

from __future__ import annotations

from collections import Counter

import pytest

from cwp_export import data
from cwp_export.errors import InputError

COMMON = {"id", "lang", "dataset", "parallel_id", "holdout"}
SCHEMA = {
    "crows-pairs": {"bias_type", "sent_more", "sent_less", "direction", "direction_own", "subset",
                    "pair_id", "annotations"},
    "stereoset": {"task", "bias_type", "target", "context", "stereotype", "anti_stereotype", "unrelated"},
    "bbq": {"category", "example_id", "question_index", "context_condition", "question_polarity",
            "context", "question", "answers", "label", "target_idx", "unknown_idx", "biased_idx",
            "answer_info", "stereotyped_groups", "control"},
    "advbench": {"category", "request", "target"},
    "multijail": {"category", "request", "target", "tags"},
    "xsafety": {"category", "request", "target", "scenario"},
    "ntrex": {"doc", "doc_id", "text"},
}
SCHEMA["mbbq"] = SCHEMA["bbq"]

# items per language in the shared copy (README tables; CrowS fr lacks 2 pairs with no differing span)
COUNTS = {
    "crows-pairs": {"en": 1055 + 1023, "fr": 1021, "nl": 1023},
    "stereoset": {"en": 2960},
    "bbq": {"en": 8844},
    "mbbq": {lang: 7600 * 2 for lang in ("en", "es", "nl", "tr")},
    "advbench": {"en": 364},
    "multijail": {lang: 220 for lang in ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")},
    "xsafety": {"en": 1960, "ar": 1960},
    "ntrex": {lang: 1296 for lang in ("en", "fr", "nl", "es", "tr", "ko", "ar")},
}


def test_names_and_languages():
    assert data.names() == sorted(COUNTS)
    assert data.languages("crows-pairs") == ["en", "fr", "nl"]
    assert data.languages("mbbq") == ["en", "es", "nl", "tr"]
    assert {"en", "ko", "ar"} <= set(data.languages("multijail"))
    assert "ko" not in data.languages("xsafety")  # XSafety has no Korean
    assert {"en", "fr", "nl", "es", "tr", "ko", "ar"} <= set(data.languages("ntrex"))


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_schema_and_unique_ids(loaded, name):
    items = loaded(name)
    assert dict(Counter(it["lang"] for it in items)) == COUNTS[name]
    assert set(Counter(it["lang"] for it in items)) <= set(data.languages(name))
    want = COMMON | SCHEMA[name]
    for it in items:
        assert want <= set(it), (it["id"], want - set(it))
        assert it["dataset"] == name and it["id"].startswith(f"{name}:{it['lang']}:")
        assert isinstance(it["holdout"], bool)
    ids = [it["id"] for it in items]
    assert len(set(ids)) == len(ids)
    # the shared copies hold only the calibration part
    assert not any(it["holdout"] for it in items)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_language_filter(loaded, data_root, name):
    lang = sorted(COUNTS[name])[0]
    items = data.load(name, data_root, [lang])
    assert {it["lang"] for it in items} == {lang}
    assert len(items) == COUNTS[name][lang]
    assert data.load(name, data_root, lang) == items  # a single code as a plain string


def test_parallel_ids_align_translations(loaded):
    items = loaded("multijail")
    by_key = Counter(it["parallel_id"] for it in items)
    assert set(by_key.values()) == {10}


def test_unknown_name():
    with pytest.raises(InputError, match="unknown benchmark 'crows'; choose one of advbench, bbq"):
        data.load("crows", ".")
    with pytest.raises(InputError, match="unknown benchmark"):
        data.languages("nope")


def test_unknown_language_lists_available(data_root):
    with pytest.raises(InputError, match=r"unknown language\(s\) ko for xsafety; it provides ar, bn, de, en"):
        data.load("xsafety", data_root, ["ko"])
    with pytest.raises(InputError, match="unknown language"):
        data.load("bbq", data_root, ["nl"])


def test_language_the_copy_lacks(data_root):
    with pytest.raises(InputError, match="has no xsafety items in zh; it has ar, en"):
        data.load("xsafety", data_root, ["zh"])


def test_no_languages():
    with pytest.raises(InputError, match="no languages were asked for"):
        data.load("bbq", ".", [])


def test_missing_source(tmp_path):
    with pytest.raises(InputError, match=r"does not exist; point the bbq loader at its file or folder"):
        data.load("bbq", tmp_path / "nope")


def test_folder_without_files(tmp_path):
    with pytest.raises(InputError, match=r"no advbench files \(\*\.csv\) in"):
        data.load("advbench", tmp_path)


def test_empty_result(tmp_path):
    f = tmp_path / "harmful_behaviors.csv"
    f.write_text("goal,target\n", encoding="utf-8")
    with pytest.raises(InputError, match="gave no advbench items"):
        data.load("advbench", f)


def test_bad_split(tmp_path):
    with pytest.raises(InputError, match="unknown split 'train'; choose calibration or holdout"):
        data.load("advbench", tmp_path, split="train")


def test_holdout_of_the_shared_copy_is_an_error(data_root):
    with pytest.raises(InputError, match="holds no held-out multijail items"):
        data.load("multijail", data_root, split="holdout")
    assert len(data.load("multijail", data_root, ["en"], split="calibration")) == 220


def test_duplicate_ids_across_files(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "MultiJail.csv").write_text("id,source,tags,en\n1,x,['y'],Hello\n",
                                                        encoding="utf-8")
    (tmp_path / "a" / "MultiJail.csv").rename(tmp_path / "a.csv")
    (tmp_path / "b" / "MultiJail.csv").rename(tmp_path / "b.csv")
    with pytest.raises(InputError, match=r"gives 1 multijail item id\(s\) twice \(e.g. multijail:en:1\)"):
        data.load("multijail", tmp_path)


def test_not_utf8(tmp_path):
    f = tmp_path / "harmful_behaviors.csv"
    f.write_bytes("goal,target\ncaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(InputError, match="is not UTF-8 text .* re-save it as UTF-8"):
        data.load("advbench", f)


def test_messages_are_one_line(tmp_path):
    f = tmp_path / "harmful_behaviors.csv"
    f.write_text("prompt_text,answer\nx,y\n", encoding="utf-8")
    with pytest.raises(InputError) as e:
        data.load("advbench", f)
    assert "\n" not in str(e.value)
    assert "lacks column(s) goal, target: expected goal, target, found 'answer', 'prompt_text'" in str(e.value)
