"""The protected export end to end on a tiny llama: files, exact restoration (read back with
gguf-py), budget, dry run, determinism, ideal mode, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cwp_export.api import export
from cwp_export.cli import main
from cwp_export.formats.lora import read_lora_adapter
from cwp_export.formats.scores import load_scores
from cwp_export.testing import read_gguf_tensors, source_weights

INC = "60%"  # a tiny model's header is large next to its weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from cwp_export.testing import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("protect") / "llama")


@pytest.fixture(scope="module")
def scores_file(tiny, tmp_path_factory) -> Path:
    from cwp_export.api import score

    path = tmp_path_factory.mktemp("protect-scores") / "s.safetensors"
    score(tiny, path, protect="1%", progress=False, max_per_language=2)
    return path


def _export(tiny, scores_file, out, **kw):
    return export(tiny, quant="Q4_K_M", outdir=out, protect=kw.pop("protect", "2%"),
                  progress=False, argv=[], scores=scores_file,
                  max_size_increase=kw.pop("max_size_increase", INC), **kw)


def _tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    return read_gguf_tensors(path)


def _originals(tiny) -> dict[str, torch.Tensor]:
    return source_weights(tiny)


@pytest.mark.parametrize("adapter_type", ["Q8_0", "F16"])
def test_model_plus_adapter_restores_outliers_exactly(tiny, scores_file, tmp_path, adapter_type):
    res = _export(tiny, scores_file, tmp_path, adapter_type=adapter_type)
    assert res.adapter_path is not None and res.adapter_path.exists()
    plan = json.loads((tmp_path / "plan.json").read_text())["plan"]
    model = _tensors(res.model_path)
    pairs = read_lora_adapter(res.adapter_path)
    orig = _originals(tiny)
    assert set(pairs) == set(plan["columns"]) | set(plan["rows"])
    if adapter_type == "Q8_0":
        assert plan["rows"] == {}  # a Q8_0 A restores columns only
    for name, (a, b) in pairs.items():
        cols, rows = plan["columns"].get(name, []), plan["rows"].get(name, [])
        base = torch.from_numpy(model[name][1])
        restored = base + b @ a
        w = orig[name]
        resid = (w - base).abs().max()
        for idx, sel in ((cols, (slice(None), cols)), (rows, (rows, slice(None)))):
            if idx:
                err = (restored[sel] - w[sel]).abs().max()
                # F16 B (2^-11 relative) and, for Q8_0, the 1.0 of A to within 1e-4
                assert err <= 2e-3 * resid + 1e-7, (name, float(err), float(resid))
        untouched = torch.ones_like(w, dtype=torch.bool)
        untouched[:, cols] = False
        if rows:
            untouched[rows, :] = False
        assert torch.equal(restored[untouched], base[untouched])
    # written types are the plan's, sizes within budget
    for name, t in plan["types"].items():
        assert model[name][0] == t, name
    sizes = json.loads((tmp_path / "plan.json").read_text())["sizes"]
    assert sizes["total"] == res.model_path.stat().st_size + res.adapter_path.stat().st_size
    assert sizes["total"] <= sizes["budget"]


def test_files_load_in_llama_cpp_and_the_adapter_acts(tiny, scores_file, tmp_path):
    from llama_cpp import Llama

    res = _export(tiny, scores_file, tmp_path)
    logits = {}
    for key, lora in (("base", None), ("cwp", str(res.adapter_path))):
        llm = Llama(model_path=str(res.model_path), lora_path=lora, n_ctx=64, logits_all=True,
                    verbose=False, type_k=0, type_v=0, n_threads=2)
        if lora:
            assert llm._lora_adapter  # llama.cpp accepted it (a NULL would crash later)
        llm.eval(llm.tokenize(b"The quick brown fox jumps"))
        logits[key] = np.array(llm.scores[: llm.n_tokens])
        llm.close()
    assert np.abs(logits["cwp"] - logits["base"]).max() > 1e-4


def test_same_inputs_same_bytes_and_dry_run_matches(tiny, scores_file, tmp_path):
    a = _export(tiny, scores_file, tmp_path / "a")
    b = _export(tiny, scores_file, tmp_path / "b")
    for f in ("model_path", "adapter_path"):
        assert getattr(a, f).read_bytes() == getattr(b, f).read_bytes()
    assert (tmp_path / "a" / "plan.json").read_text() == (tmp_path / "b" / "plan.json").read_text()
    dry = _export(tiny, scores_file, tmp_path / "dry", dry_run=True)
    assert not (tmp_path / "dry").exists()
    written = json.loads((tmp_path / "a" / "plan.json").read_text())["plan"]
    assert dry.protection.plan.to_json() == written


def test_manifest_lists_every_file(tiny, scores_file, tmp_path):
    res = _export(tiny, scores_file, tmp_path)
    man = json.loads((tmp_path / "manifest.json").read_text())
    roles = {f["role"]: f for f in man["files"]}
    assert set(roles) == {"model", "adapter"}
    assert man["options"]["protect"] == 0.02 and man["options"]["plan"] == "plan.json"
    assert set(man["options"]["tensor_types"]) >= set(res.protection.plan.types)


def test_ideal_mode_restores_every_critical_weight(tiny, scores_file, tmp_path):
    res = _export(tiny, scores_file, tmp_path, ideal=True)
    assert res.model_path.name.endswith("-ideal.gguf") and res.adapter_path is None
    ideal = _tensors(res.model_path)
    plain = _export(tiny, scores_file, tmp_path / "q", protect="2%")
    quantized = _tensors(plain.model_path)
    scores, _, _ = load_scores(scores_file)
    from cwp_export.score import global_threshold_mask
    mask = global_threshold_mask(scores, 0.02)
    orig = _originals(tiny)
    for name, m in mask.items():
        kind, vals = ideal[name]
        assert kind == "F32"
        v = torch.from_numpy(vals)
        assert torch.equal(v[m], orig[name][m])
        q = torch.from_numpy(quantized[name][1])
        assert torch.equal(v[~m], q[~m])  # the same rounding as the real export


def test_cli_protected_export_and_errors(tiny, scores_file, tmp_path):
    r = CliRunner().invoke(main, [str(tiny), "-o", str(tmp_path / "ok"), "--scores",
                                  str(scores_file), "--max-size-increase", INC, "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "coverage of the critical set" in r.output and "outliers.gguf" in r.output
    r = CliRunner().invoke(main, [str(tiny), "-o", str(tmp_path / "dry"), "--scores",
                                  str(scores_file), "--max-size-increase", INC, "--dry-run"])
    assert r.exit_code == 0 and "dry run: nothing written" in r.output
    assert not (tmp_path / "dry").exists()

    from cwp_export.testing import make_tiny_model
    other = make_tiny_model("llama", tmp_path / "other", seed=5)
    cases = [
        ([str(other), "--scores", str(scores_file)], "another checkpoint"),
        ([str(tiny), "--scores", str(scores_file), "--max-size-increase", "0%"], "no room"),
        ([str(tiny), "--protect", "2 percent"], "not a number"),
        ([str(tiny), "--scores", str(scores_file), "--quant", "F16"], "quantized --quant"),
        ([str(tiny), "--protect", "0", "--dry-run"], "--protect above 0"),
        ([str(tiny), "--scores", str(tmp_path / "missing.st")], "cannot read the scores file"),
    ]
    for args, needle in cases:
        out = tmp_path / "bad"
        r = CliRunner().invoke(main, [*args, "-o", str(out), "--no-progress"])
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, (args,
                                                                                         r.output)
        leftovers = [p.name for p in out.glob("*")] if out.exists() else []
        assert not [n for n in leftovers if n.endswith((".gguf", ".json", ".safetensors"))], args


def test_cli_validate_compares_reference_plain_and_cwp(tiny, scores_file, tmp_path):
    out = tmp_path / "v"
    r = CliRunner().invoke(main, [str(tiny), "-o", str(out), "--scores", str(scores_file),
                                  "--max-size-increase", INC, "--no-progress", "--validate",
                                  "--eval-suites", "crows-pairs,advbench", "--eval-limit", "3",
                                  "--backend", "cpu"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "validation" / "report.json").read_text())
    assert (out / "validation" / "report.md").is_file()
    assert (out / "validation" / "reference" / "manifest.json").is_file()
    models = {m["variant"]: m for m in report["models"]}
    assert list(models) == ["reference-F16", "plain-Q4_K_M", "cwp-Q4_K_M"]
    assert models["reference-F16"]["quant"] == "F16" and models["reference-F16"]["adapter"] is None
    adapter = models["cwp-Q4_K_M"]["adapter"]  # the protected variant ran with its adapter
    assert adapter["path"].endswith(".gguf") and Path(adapter["path"]).stat().st_size == adapter["size_bytes"]
    assert Path(adapter["path"]).name in (out / "validation" / "report.md").read_text()
    r = CliRunner().invoke(main, [str(tiny), "-o", str(tmp_path / "d"), "--scores",
                                  str(scores_file), "--dry-run", "--validate"])
    assert r.exit_code == 2 and "--validate" in r.output


def test_plain_rounding_changes_only_the_rounding(tiny, scores_file, tmp_path):
    weighted = _export(tiny, scores_file, tmp_path / "w", weighted_rounding=True)
    plain = _export(tiny, scores_file, tmp_path / "p")  # the default
    assert plain.protection.plan.to_json() == weighted.protection.plan.to_json()
    assert plain.model_path.read_bytes() != weighted.model_path.read_bytes()
    # with the preset's own rounding, every tensor outside the plan's upgrades is byte-identical
    # to the plain preset's
    ref = read_gguf_tensors(export(tiny, quant="Q4_K_M", outdir=tmp_path / "ref", progress=False,
                                   argv=[]).model_path)
    got = read_gguf_tensors(plain.model_path)
    upgraded = set(plain.protection.plan.upgrades)
    for name, (kind, vals) in got.items():
        if name not in upgraded:
            assert kind == ref[name][0] and np.array_equal(vals, ref[name][1]), name
    man = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert man["options"]["weighted_rounding"] is False
