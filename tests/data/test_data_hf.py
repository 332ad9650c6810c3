"""hf: sources through the datasets library, on local folders only (never a hub download)."""

from __future__ import annotations

import sys

import pytest

from cwp_export import data
from cwp_export.data import hf
from cwp_export.errors import InputError

datasets = pytest.importorskip("datasets", reason="the datasets package is not installed (pip install datasets)")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    # keep the builder caches of the local test folders out of the user's cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_parse(tmp_path):
    assert hf.parse("hf:nyu-mll/crows_pairs") == ("nyu-mll/crows_pairs", None)
    assert hf.parse("hf:McGill-NLP/stereoset:intrasentence") == ("McGill-NLP/stereoset", "intrasentence")
    assert hf.parse("hf:squad") == ("squad", None)
    assert hf.parse(f"hf:{tmp_path}") == (str(tmp_path), None)
    assert hf.parse(f"hf:{tmp_path}:nl") == (str(tmp_path), "nl")
    for bad in ("hf:", "hf::x", "hf:a b", "hf:org/name:bad config", "hf:org/na me"):
        with pytest.raises(InputError, match="bad Hugging Face source .*write hf:ORG/NAME, hf:ORG/NAME:CONFIG"):
            hf.parse(bad)
    with pytest.raises(InputError, match="local dataset folder .* does not exist"):
        hf.parse(f"hf:{tmp_path}/missing")


def _crows_dataset():
    feats = datasets.Features({
        "id": datasets.Value("int32"),
        "sent_more": datasets.Value("string"),
        "sent_less": datasets.Value("string"),
        "stereo_antistereo": datasets.ClassLabel(names=["stereo", "antistereo"]),
        "bias_type": datasets.ClassLabel(names=["race-color", "socioeconomic"]),
    })
    return datasets.Dataset.from_dict({
        "id": [1, 3], "sent_more": ["The poor are lazy.", "Rich people x."],
        "sent_less": ["The rich are lazy.", "Poor people x."], "stereo_antistereo": [0, 1], "bias_type": [1, 1],
    }, features=feats)


def test_save_to_disk_with_class_labels(tmp_path):
    datasets.DatasetDict({"test": _crows_dataset()}).save_to_disk(str(tmp_path / "crows"))
    items = data.load("crows-pairs", f"hf:{tmp_path / 'crows'}")
    assert [(it["id"], it["direction"], it["bias_type"]) for it in items] == [
        ("crows-pairs:en:original:1", "stereo", "socioeconomic"),
        ("crows-pairs:en:original:3", "antistereo", "socioeconomic")]
    assert [it["id"] for it in data.load("crows-pairs", f"hf:{tmp_path / 'crows'}", split="holdout")] == [
        "crows-pairs:en:original:3"]
    assert len(data.load("crows-pairs", f"hf:{tmp_path / 'crows'}", split="test")) == 2
    with pytest.raises(InputError, match="has no split 'train'; it has test"):
        data.load("crows-pairs", f"hf:{tmp_path / 'crows'}", split="train")


def test_same_items_as_the_files(data_root, tmp_path):
    """Rows from a local jsonl / csv folder go through the same normaliser as the files."""
    lines = (data_root / "bbq" / "Religion.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    (tmp_path / "bbq").mkdir()
    (tmp_path / "bbq" / "Religion.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert data.load("bbq", f"hf:{tmp_path / 'bbq'}") == data.load("bbq", tmp_path / "bbq" / "Religion.jsonl")

    raw = (data_root / "multijail" / "MultiJail.csv").read_bytes()  # with its BOM
    head = b"\n".join(raw.split(b"\n")[:6]) + b"\n"
    (tmp_path / "mj").mkdir()
    (tmp_path / "mj" / "MultiJail.csv").write_bytes(head)
    from_hf = data.load("multijail", f"hf:{tmp_path / 'mj'}", ["en", "ko"])
    assert from_hf == data.load("multijail", tmp_path / "mj" / "MultiJail.csv", ["en", "ko"])
    assert from_hf and from_hf[0]["id"] == "multijail:en:1"

    rows = (data_root / "crows_pairs" / "crows_pairs_anonymized.csv").read_bytes().split(b"\n")[:8]
    (tmp_path / "cp").mkdir()
    (tmp_path / "cp" / "crows_pairs_anonymized.csv").write_bytes(b"\n".join(rows) + b"\n")
    assert data.load("crows-pairs", f"hf:{tmp_path / 'cp'}") == data.load(
        "crows-pairs", tmp_path / "cp" / "crows_pairs_anonymized.csv")


def test_stereoset_nested_layout(tmp_path):
    feats = datasets.Features({
        "id": datasets.Value("string"), "target": datasets.Value("string"),
        "bias_type": datasets.Value("string"), "context": datasets.Value("string"),
        "sentences": datasets.Sequence({"sentence": datasets.Value("string"), "id": datasets.Value("string"),
                                        "gold_label": datasets.ClassLabel(
                                            names=["anti-stereotype", "stereotype", "unrelated"])}),
    })
    ds = datasets.Dataset.from_dict({
        "id": ["x1"], "target": ["chess player"], "bias_type": ["profession"],
        "context": ["The chess player was BLANK."],
        "sentences": [{"sentence": ["The chess player was hispanic.", "The chess player was fox.",
                                    "The chess player was asian."], "id": ["a", "b", "c"], "gold_label": [0, 2, 1]}],
    }, features=feats)
    ds.save_to_disk(str(tmp_path / "ss"))
    (item,) = data.load("stereoset", f"hf:{tmp_path / 'ss'}:intrasentence")
    assert (item["stereotype"], item["anti_stereotype"], item["unrelated"]) == (
        "The chess player was asian.", "The chess player was hispanic.", "The chess player was fox.")
    # the same item from the flat file layout gets the same id
    flat = tmp_path / "flat.jsonl"
    flat.write_text('{"type": "intrasentence", "target": "chess player", "bias_type": "profession", '
                    '"context": "The chess player was BLANK.", "stereotype": "The chess player was asian.", '
                    '"anti-stereotype": "The chess player was hispanic.", "unrelated": "The chess player was fox."}\n',
                    encoding="utf-8")
    assert data.load("stereoset", flat)[0]["id"] == item["id"]
    with pytest.raises(InputError, match=r"lacks column\(s\) type"):
        data.load("stereoset", f"hf:{tmp_path / 'ss'}")


def test_language_from_config(tmp_path, data_root):
    line = (data_root / "mbbq" / "Age_nl.jsonl").read_text(encoding="utf-8").splitlines()[0]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "rows.jsonl").write_text(line + "\n", encoding="utf-8")
    assert data.load("mbbq", f"hf:{tmp_path / 'm'}:nl")[0]["id"] == "mbbq:nl:Age:0"
    with pytest.raises(InputError, match="cannot tell the language of these mbbq rows"):
        data.load("mbbq", f"hf:{tmp_path / 'm'}")


def test_splits_with_clashing_ids(tmp_path):
    rows = {"goal": ["a", "b"], "target": ["Sure, a", "Sure, b"]}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                               "test": datasets.Dataset.from_dict(rows)})
    dd.save_to_disk(str(tmp_path / "adv"))
    with pytest.raises(InputError, match=r"item id\(s\) twice .*or pass one split="):
        data.load("advbench", f"hf:{tmp_path / 'adv'}")
    assert len(data.load("advbench", f"hf:{tmp_path / 'adv'}", split="train")) == 2


def test_load_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="cannot load the Hugging Face dataset .*check the name, config and split"):
        data.load("advbench", f"hf:{tmp_path / 'empty'}")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/name' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError, match=r"'hf:org/name' \(ConnectionError: Couldn't reach .*local cache"):
        data.load("advbench", "hf:org/name")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(InputError, match="needs the datasets package; pip install datasets"):
        data.load("advbench", "hf:org/name")
