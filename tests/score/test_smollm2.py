"""Scoring the built-in SmolLM2 end to end on a handful of probe items per kind (slow)."""

from __future__ import annotations

import time

import pytest
import torch

from cwp_export import probes


@pytest.mark.slow
def test_smollm2_scores_end_to_end(tmp_path):
    import transformers as tf

    from cwp_export.arch import adapter_for
    from cwp_export.builtin import builtin_model_path
    from cwp_export.formats.scores import load_scores, save_scores, to_gguf_names
    from cwp_export.score import (
        accumulate_fisher,
        cwp_scores,
        global_threshold_mask,
        linear_weight_names,
        make_loss,
        summary,
    )
    from cwp_export.source import open_source

    folder = builtin_model_path("smollm2", progress=False)
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(folder)
    names = linear_weight_names(model)
    data = {"fairness": probes.load("fairness", ["en", "tr"])[::40][:4],
            "safety": probes.load("safety", ["en", "ko"])[::30][:4],
            "general_text": probes.load("general_text", ["en", "fr"])[::30][:4],
            "general_instruct": probes.load("general_instruct", ["en", "ar"])[::30][:4]}
    fisher, timing = {}, {}
    for kind, items in data.items():
        start = time.monotonic()
        fisher[kind] = accumulate_fisher(model, items, make_loss(kind, tok), names, batch_size=4)
        timing[kind] = (time.monotonic() - start) / len(items)
        assert all(torch.isfinite(v).all() and v.sum() > 0 for v in fisher[kind].values())
    print("seconds per sample:", {k: round(v, 2) for k, v in timing.items()})
    scores = cwp_scores(fisher["fairness"], fisher["safety"], fisher["general_text"],
                        fisher["general_instruct"], beta=1.0)
    mask = global_threshold_mask(scores, 0.01)
    n = sum(v.numel() for v in scores.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(0.01 * n)
    info = summary(scores, mask)
    assert abs(sum(t["mass_share"] for t in info["tensors"].values()) - 1) < 1e-6
    src = open_source(folder)
    adapter = adapter_for(src.config)
    shapes = {k: r.shape for k, r in src.tensors.items()}
    save_scores(tmp_path / "smollm2.scores.safetensors", to_gguf_names(adapter, shapes, scores),
                to_gguf_names(adapter, shapes, mask), {"scorer": "fisher-cwp", "beta": "1.0"})
    s, _, meta = load_scores(tmp_path / "smollm2.scores.safetensors")
    assert len(s) == len(names) == 7 * adapter.n_layer and meta["beta"] == "1.0"
