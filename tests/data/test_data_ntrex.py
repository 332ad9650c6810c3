"""NTREX general-text loader: languages, documents, the document-level holdout rule."""

from __future__ import annotations

import pytest

from cwp_export import data
from cwp_export.errors import InputError


def test_shared_copy(loaded):
    items = loaded("ntrex")
    en = [it for it in items if it["lang"] == "en"]
    assert en[0]["text"] == "Macedonians go to polls in referendum on changing country's name"
    assert en[0]["doc_id"] == "rt.com.91337" and en[0]["id"] == "ntrex:en:rt.com.91337:0"
    assert all("\r" not in it["text"] for it in items)
    docs = sorted({it["doc"] for it in en})
    # the shared copy keeps 86 of 123 documents; their indices are the upstream ones
    assert len(docs) == 86 and docs[:7] == [1, 2, 4, 5, 6, 8, 9] and docs[-1] == 122
    assert not any(d % 10 in (0, 3, 7) for d in docs)
    by_lang = {}
    for it in items:
        by_lang.setdefault(it["lang"], set()).add(it["parallel_id"])
    assert len({frozenset(v) for v in by_lang.values()}) == 1
    ko = next(it for it in items if it["lang"] == "ko")
    assert ko["text"] == "마케도니아인들이 국가 이름을 바꾸는 국민 투표에 참여한다"


def test_holdout_of_the_shared_copy(data_root):
    assert len(data.load("ntrex", data_root, ["fr"], split="calibration")) == 1296
    with pytest.raises(InputError, match="holds no held-out ntrex items"):
        data.load("ntrex", data_root, ["fr"], split="holdout")


def _full_copy(folder, n_docs=20, lines_per_doc=2):
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"doc{d}" for d in range(n_docs) for _ in range(lines_per_doc)]
    (folder / "DOCUMENT_IDS.tsv").write_text("\n".join(ids) + "\n", encoding="utf-8")
    for code in ("eng", "tur"):
        name = "newstest2019-src.eng.txt" if code == "eng" else f"newstest2019-ref.{code}.txt"
        (folder / name).write_text("".join(f"{code} {i}\r\n" for i in range(len(ids))), encoding="utf-8")
    return folder


def test_document_holdout_rule(tmp_path):
    folder = _full_copy(tmp_path / "ntrex")
    held = data.load("ntrex", folder, ["tr"], split="holdout")
    assert sorted({it["doc"] for it in held}) == [0, 3, 7, 10, 13, 17]
    assert len(held) == 12 and {it["lang"] for it in held} == {"tr"}
    cal = data.load("ntrex", folder, ["tr"], split="calibration")
    assert len(cal) + len(held) == 40
    assert not {it["id"] for it in cal} & {it["id"] for it in held}
    every = data.load("ntrex", folder)
    assert len(every) == 80 and {it["lang"] for it in every} == {"en", "tr"}


def test_upstream_repository_layout(tmp_path):
    folder = _full_copy(tmp_path / "repo" / "NTREX-128")
    (folder / "DOCUMENT_IDS.tsv").rename(tmp_path / "repo" / "DOCUMENT_IDS.tsv")
    assert len(data.load("ntrex", tmp_path / "repo", ["en"])) == 40
    assert len(data.load("ntrex", folder / "newstest2019-ref.tur.txt")) == 40


def test_broken(tmp_path):
    folder = _full_copy(tmp_path / "ntrex")
    (folder / "newstest2019-ref.tur.txt").write_text("only one line\r\n", encoding="utf-8")
    with pytest.raises(InputError, match="has 1 lines but DOCUMENT_IDS.tsv has 40"):
        data.load("ntrex", folder, ["tr"])
    (folder / "DOCUMENT_IDS.tsv").unlink()
    with pytest.raises(InputError, match="DOCUMENT_IDS.tsv is missing beside"):
        data.load("ntrex", folder, ["en"])
    other = tmp_path / "notes.txt"
    other.write_text("hello\n", encoding="utf-8")
    with pytest.raises(InputError, match="is not an NTREX text file"):
        data.load("ntrex", other)
