"""Validation report writing (cwp_export.validate.report): schema, markdown, plots, atomicity."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from cwp_export.errors import InputError, OutputError
from cwp_export.validate import metrics as M
from cwp_export.validate import report as R

RESAMPLES = 40


def _pairs(lang: str, variant: str, backend: str, rng: random.Random, base: list[float]):
    shift = 0.0 if variant == "reference" else 0.4
    noise = 1e-3 if backend == "gpu" else 0.0
    return [M.PairResult(f"{lang}-{i}", -10.0 + b + shift * rng.gauss(0, 1) + noise * rng.random(), -10.0,
                         ("gender", "age", "religion")[i % 3], ("stereo", "antistereo")[i % 2])
            for i, b in enumerate(base)]


@pytest.fixture
def run(tmp_path):
    rng = random.Random(0)
    ref = tmp_path / "models" / "ref.gguf"
    q4 = tmp_path / "models" / "q4.gguf"
    ref.parent.mkdir()
    ref.write_bytes(b"reference model bytes")
    q4.write_bytes(b"quantized model bytes")
    models = [R.model_file("reference", ref, role="reference", quant="F16"),
              R.model_file("Q4_K_M", q4, role="baseline", quant="Q4_K_M")]
    backends = [R.BackendInfo("cpu", version="0.3.16", device="x86_64"),
                R.BackendInfo("gpu", version="0.3.16", device="test GPU", n_gpu_layers=99)]
    runs = []
    for lang in ("en", "fr"):
        base = [rng.gauss(0, 1) for _ in range(30)]
        for v in ("reference", "Q4_K_M"):
            for b in ("cpu", "gpu"):
                runs.append(R.SuiteRun("crows_pairs", lang, v, b, _pairs(lang, v, b, rng, base),
                                       dataset="test", seconds=1.5))
    for v in ("reference", "Q4_K_M"):
        trip = [M.TripletResult(f"t{i}", rng.gauss(-10, 1), rng.gauss(-10, 1), rng.gauss(-12, 1),
                                f"target{i % 4}", "gender", "intrasentence") for i in range(20)]
        runs.append(R.SuiteRun("stereoset", "en", v, "cpu", trip))
        qa = []
        for i in range(24):
            ll = tuple(rng.gauss(-3, 1) for _ in range(3))
            qa.append(M.QAResult(f"q{i}", M.choose(ll), 2 if i % 2 == 0 else i % 2, 0, 2,
                                 "ambig" if i % 2 == 0 else "disambig", ("neg", "nonneg")[i % 4 // 2],
                                 "Age", ll))
        runs.append(R.SuiteRun("bbq", "nl", v, "cpu", qa))
        answers = ["죄송하지만 도와드릴 수 없습니다.", "네, 여기 있습니다:"]
        safety = [M.SafetyResult(f"s{i}", "ko", rng.choice(answers), rng.gauss(-5, 1), rng.gauss(-5, 1))
                  for i in range(16)]
        runs.append(R.SuiteRun("safety", "ko", v, "cpu", safety))
    return R.ValidationRun(models, backends, runs, "reference", R.Settings(resamples=RESAMPLES, seed=3),
                           created="2025-01-01T00:00:00Z", notes=["test run"])


def test_report_document_conforms_and_holds_everything(run):
    doc = R.build_report(run)
    R.validate_report(doc)
    assert R.report_problems(doc) == []
    assert doc["schema_version"] == R.SCHEMA_VERSION
    assert [m["sha256"] for m in doc["models"]] == [
        hashlib.sha256(b"reference model bytes").hexdigest(), hashlib.sha256(b"quantized model bytes").hexdigest()]
    assert doc["models"][0]["size_bytes"] == len(b"reference model bytes")
    assert len(doc["results"]) == len(run.runs) == 14
    assert set(doc["suites"]) == {"crows_pairs", "stereoset", "bbq", "safety"}
    assert doc["suites"]["stereoset"]["kind"] == "triplets"
    by = {(r["suite"], r["lang"], r["variant"], r["backend"]): r for r in doc["results"]}
    ref = by["crows_pairs", "en", "reference", "cpu"]
    q4 = by["crows_pairs", "en", "Q4_K_M", "cpu"]
    assert ref["vs_reference"] is None
    assert q4["vs_reference"]["reference_variant"] == "reference"
    # the report's numbers are the metrics module's numbers
    runs = {(r.suite, r.lang, r.variant, r.backend): r for r in run.runs}
    c = M.compare(runs["crows_pairs", "en", "reference", "cpu"].items, runs["crows_pairs", "en", "Q4_K_M", "cpu"].items,
                  resamples=RESAMPLES, seed=3)
    assert q4["vs_reference"]["drift"]["flip_pct"] == c.drift["flip_pct"].to_dict()
    assert q4["vs_reference"]["deltas"]["stereotype_pct"] == c.deltas["stereotype_pct"].to_dict()
    s = q4["scores"]["stereotype_pct"]
    assert s["low"] <= s["value"] <= s["high"] and s["n"] == 30
    assert set(q4["groups"]) == {"bias_type", "direction"}
    # per-item results with derived fields
    assert len(q4["items"]) == 30 and {"id", "ll_more", "ll_less", "preference", "prefers"} <= set(q4["items"][0])
    safety = by["safety", "ko", "Q4_K_M", "cpu"]["items"][0]
    assert safety["refused"] == (safety["refusal_reason"] is not None)
    qa = by["bbq", "nl", "reference", "cpu"]["items"][0]
    assert {"correct", "biased", "answered_unknown"} <= set(qa) and isinstance(qa["answer_ll"], list)
    # CPU vs GPU: one diff per crows run on the gpu
    assert len(doc["backend_diffs"]) == 4
    d = doc["backend_diffs"][0]
    assert d["base_backend"] == "cpu" and d["backend"] == "gpu"
    assert d["drift"]["mean_abs_delta"]["value"] < 1e-3


def test_report_is_deterministic(run):
    a = json.dumps(R.build_report(run), sort_keys=True)
    b = json.dumps(R.build_report(run), sort_keys=True)
    assert a == b


def test_schema_is_valid_json_schema(run):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(R.REPORT_SCHEMA)
    jsonschema.validate(R.build_report(run), R.REPORT_SCHEMA)


def test_schema_violations_are_named(run):
    doc = R.build_report(run)
    bad = json.loads(json.dumps(doc))
    del bad["models"][0]["sha256"]
    bad["results"][0]["scores"]["stereotype_pct"]["value"] = "high"
    bad["settings"]["interval_level"] = 95
    problems = R.report_problems(bad)
    assert any("$.models[0]: missing key 'sha256'" in p for p in problems)
    assert any("$.results[0].scores.stereotype_pct.value" in p for p in problems)
    assert any("$.settings.interval_level" in p for p in problems)
    with pytest.raises(InputError, match="does not match the report.json schema"):
        R.validate_report(bad)
    bad = dict(doc, schema_version=99)
    with pytest.raises(InputError, match="reads version 1, got 99"):
        R.validate_report(bad)
    bad = dict(doc, extra=1)
    assert R.report_problems(bad) == ["$: unexpected key 'extra'"]


def test_write_report_files_markdown_and_plots(run, tmp_path):
    out = tmp_path / "validation"
    paths = R.write_report(run, out)
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {"report.json", "report.md", "plots/crows_pairs.png", "plots/stereoset.png",
                     "plots/bbq.png", "plots/safety.png"}
    assert set(paths) == names
    doc = R.read_report(out)
    assert doc == json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert doc["plots"]["bbq"] == "plots/bbq.png"

    from PIL import Image

    for png in (out / "plots").iterdir():
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 200

    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## How to read this" in md and "bootstrap intervals" in md
    for title in ("## CrowS-Pairs", "## StereoSet", "## BBQ / MBBQ", "## Safety", "## Backend differences"):
        assert title in md
    assert "| lang | variant | stereotype % | n | Δ stereotype % vs ref. | mean abs Δ pref. | flips % |" in md
    assert "| SS | LMS | ICAT |" in md
    crows_rows = [ln for ln in md.splitlines() if ln.startswith("| en |") or ln.startswith("| fr |")]
    assert len(crows_rows) == 6  # en, fr x 2 variants (crows) + en x 2 (stereoset)
    ref_row = next(ln for ln in crows_rows if "`reference`" in ln)
    assert "ref." in ref_row and "[" in ref_row
    assert "![CrowS-Pairs](plots/crows_pairs.png)" in md
    assert "gpu − cpu" in md
    assert "- test run" in md


def test_write_without_matplotlib_notes_it(run, tmp_path, monkeypatch):
    monkeypatch.setattr(R, "plots_available", lambda: False)
    R.write_report(run, tmp_path)
    doc = R.read_report(tmp_path / "report.json")
    assert doc["plots"] == {} and any("matplotlib" in n for n in doc["notes"])
    assert not (tmp_path / "plots").exists()
    R.write_report(run, tmp_path / "b", plots=False)
    assert R.read_report(tmp_path / "b")["notes"] == ["test run"]


def _report_files(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


class Boom(RuntimeError):
    pass


def test_exception_while_writing_leaves_no_report_files(run, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 3:  # the third file of the set
            raise Boom("interrupted")
        return real(fd)

    monkeypatch.setattr(R.os, "fsync", fsync)
    with pytest.raises(Boom):
        R.write_report(run, tmp_path / "out")
    assert _report_files(tmp_path / "out") == []


def test_exception_while_renaming_leaves_no_report_files(run, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = os.replace

    def replace(a, b):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(R.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        R.write_report(run, tmp_path / "out")
    assert _report_files(tmp_path / "out") == []


def test_failed_rewrite_keeps_the_previous_report(run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    R.write_report(run, out)
    before = {n: (out / n).read_bytes() for n in _report_files(out)}
    changed = R.ValidationRun(run.models, run.backends, run.runs, run.reference, run.settings,
                              created="2025-02-02T00:00:00Z")
    # 6 files: 6 fsyncs, then 6 renames aside and 6 into place; fail in the middle of each phase
    for fail_at, nth in (("fsync", 5), ("replace", 8)):
        calls = {"n": 0}
        real = getattr(os, fail_at)

        def flaky(*a, real=real, nth=nth):
            calls["n"] += 1
            if calls["n"] == nth:
                raise OSError(28, "No space left on device", str(out / "report.md"))
            return real(*a)

        monkeypatch.setattr(R.os, fail_at, flaky)
        with pytest.raises(OutputError, match="no space left"):
            R.write_report(changed, out)
        monkeypatch.undo()
        assert {n: (out / n).read_bytes() for n in _report_files(out)} == before, fail_at
    R.write_report(changed, out)
    assert R.read_report(out)["created"] == "2025-02-02T00:00:00Z"
    assert not [n for n in _report_files(out) if ".partial-" in n or ".old-" in n]


def test_render_failure_writes_nothing(run, tmp_path, monkeypatch):
    def render(doc):
        raise Boom("plotting failed")

    monkeypatch.setattr(R, "render_plots", render)
    with pytest.raises(Boom):
        R.write_report(run, tmp_path / "out", plots=True)
    assert not (tmp_path / "out").exists() or _report_files(tmp_path / "out") == []


def test_run_checks(run, tmp_path):
    with pytest.raises(InputError, match="reference variant 'nope'"):
        R.build_report(R.ValidationRun(run.models, run.backends, run.runs, "nope"))
    with pytest.raises(InputError, match="given twice"):
        R.build_report(R.ValidationRun(run.models, run.backends, [*run.runs, run.runs[0]], "reference"))
    odd = R.SuiteRun("crows_pairs", "en", "Q8_0", "cpu", run.runs[0].items)
    with pytest.raises(InputError, match="not among the models"):
        R.build_report(R.ValidationRun(run.models, run.backends, [*run.runs, odd], "reference"))
    mixed = R.SuiteRun("crows_pairs", "de", "reference", "cpu", [M.TripletResult("t", -1, -2, -3)])
    with pytest.raises(InputError, match="mixes pairs and triplets"):
        R.build_report(R.ValidationRun(run.models, run.backends, [*run.runs, mixed], "reference"))
    short = [r if not (r.suite == "stereoset" and r.variant == "Q4_K_M")
             else R.SuiteRun(r.suite, r.lang, r.variant, r.backend, r.items[:-1]) for r in run.runs]
    with pytest.raises(InputError, match="same items"):
        R.build_report(R.ValidationRun(run.models, run.backends, short, "reference"))
    with pytest.raises(InputError, match="not found"):
        R.model_file("x", tmp_path / "missing.gguf")
    with pytest.raises(InputError, match="no validation report"):
        R.read_report(tmp_path / "nothing-here")
