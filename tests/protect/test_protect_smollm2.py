"""The protected export on the real SmolLM2-135M-Instruct (slow): ``--protect 1%`` on Q4_K_M.

Both files load in llama-cpp-python (the adapter through ``lora_path``) and change its logits; for
every outlier column and row, the dequantized base weight plus B·A equals the original weight to
F16 precision, read back with gguf-py (never through our writer); the total size is within the
budget; a dry run plans exactly what the real run wrote; a rerun is byte-identical.

One built-in calibration item per language keeps the scoring to a couple of minutes; the KL
divergence comparison with the plain preset on held-out text is tools/bench_protect.py's job.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cwp_export.api import export, score
from cwp_export.formats.lora import read_lora_adapter
from cwp_export.testing import read_gguf_tensors, source_weights

F16_EPS = 2.0**-11  # F16's relative rounding step


@pytest.mark.slow
def test_smollm2_protected_export_restores_outliers_exactly(tmp_path):
    from llama_cpp import Llama

    from cwp_export.builtin import builtin_model_path

    folder = builtin_model_path("smollm2", progress=False)
    scores = tmp_path / "scores.safetensors"
    score(folder, scores, protect="1%", progress=False, max_per_language=1)

    def run(out, **kw):
        return export(folder, outdir=out, protect="1%", scores=scores, progress=False, argv=[], **kw)

    res = run(tmp_path / "a")
    assert res.adapter_path is not None and res.model_path.name.endswith(".gguf")
    doc = json.loads((tmp_path / "a" / "plan.json").read_text())
    plan, sizes = doc["plan"], doc["sizes"]
    assert sizes["total"] == res.model_path.stat().st_size + res.adapter_path.stat().st_size
    assert sizes["total"] <= sizes["budget"]

    # exact restoration, from the files as gguf-py reads them
    pairs = read_lora_adapter(res.adapter_path)
    assert set(pairs) == set(plan["columns"]) | set(plan["rows"]) and len(pairs) > 10
    model = read_gguf_tensors(res.model_path)
    assert {n: t for n, (t, _) in model.items() if n in plan["types"]} == plan["types"]
    orig = source_weights(folder, pairs)
    worst_rel, restored_weights = 0.0, 0
    for name, (a, b) in pairs.items():
        cols, rows = plan["columns"].get(name, []), plan["rows"].get(name, [])
        base = torch.from_numpy(model[name][1])
        restored = base + b @ a
        w = orig[name]
        for sel in ([(slice(None), cols)] if cols else []) + ([(rows, slice(None))] if rows else []):
            err = (restored[sel] - w[sel]).abs()
            resid = (w[sel] - base[sel]).abs()
            # B holds the residual in F16 and A's ones are exact to Q8_0's F16 scale: within F16
            # precision of the residual (and so of the weight), never worse than the quantized base
            assert (err <= 2 * F16_EPS * resid + 1e-7).all(), (name, float(err.max()))
            assert err.max() <= F16_EPS * w[sel].abs().max() + 1e-7, name
            worst_rel = max(worst_rel, float(err.max() / w[sel].abs().max()))
            restored_weights += err.numel()
        untouched = torch.ones_like(w, dtype=torch.bool)
        untouched[:, cols] = False
        if rows:
            untouched[rows, :] = False
        assert torch.equal(restored[untouched], base[untouched]), name
    print(f"{len(pairs)} tensors, {restored_weights} weights restored; worst error / max |w| "
          f"{worst_rel:.2e}")

    # both files load in llama.cpp and the adapter acts
    logits = {}
    for key, lora in (("model", None), ("model+adapter", str(res.adapter_path))):
        llm = Llama(model_path=str(res.model_path), lora_path=lora, n_ctx=64, logits_all=True,
                    verbose=False, n_threads=1)
        if lora:
            assert llm._lora_adapter
        llm.eval(llm.tokenize(b"The nurse said that the doctor would arrive soon."))
        logits[key] = np.array(llm.scores[: llm.n_tokens])
        llm.close()
    assert np.isfinite(logits["model+adapter"]).all()
    assert np.abs(logits["model+adapter"] - logits["model"]).max() > 1e-3

    # a dry run plans exactly what was written; a rerun writes the same bytes
    dry = run(tmp_path / "dry", dry_run=True)
    assert not (tmp_path / "dry").exists() and dry.protection.plan.to_json() == plan
    again = run(tmp_path / "b")
    for f in ("model_path", "adapter_path"):
        assert getattr(again, f).read_bytes() == getattr(res, f).read_bytes()
