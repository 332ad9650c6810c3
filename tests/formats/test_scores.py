"""The scores file: GGUF names and layout, round trip, byte-identical reruns, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save

from cwp_export import probes
from cwp_export.arch import adapter_for
from cwp_export.arch.base import permute_rope_rows
from cwp_export.errors import InputError
from cwp_export.formats.scores import data_hash, load_scores, save_scores, to_gguf_names
from cwp_export.source import open_source


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import transformers as tf

    from cwp_export.testing import make_tiny_model

    folder = make_tiny_model("llama", tmp_path_factory.mktemp("scores") / "llama")
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(folder)
    return model, tok, folder


def _pipeline(tiny, path, seed=0):
    from cwp_export.score import (
        accumulate_fisher,
        global_threshold_mask,
        linear_weight_names,
        make_loss,
    )

    model, tok, folder = tiny
    items = probes.load("fairness", ["en"])[:2]
    names = linear_weight_names(model)
    scores = accumulate_fisher(model, items, make_loss("fairness", tok), names, seed=seed)
    mask = global_threshold_mask(scores, 0.01)
    src = open_source(folder)
    adapter = adapter_for(src.config)
    shapes = {n: r.shape for n, r in src.tensors.items()}
    meta = {"scorer": "fisher-cwp", "beta": "1.0", "languages": ["en"],
            "data_hashes": {"fairness": data_hash(items)}, "model_fingerprint": "tiny-llama",
            "seed": str(seed), "fraction": "0.01"}
    save_scores(path, to_gguf_names(adapter, shapes, scores), to_gguf_names(adapter, shapes, mask),
                meta)
    return scores, mask, adapter


def test_round_trip_in_gguf_names_and_layout(tiny, tmp_path):
    scores, mask, adapter = _pipeline(tiny, tmp_path / "s.safetensors")
    got_s, got_m, meta = load_scores(tmp_path / "s.safetensors")
    assert set(got_s) == set(got_m) and len(got_s) == len(scores)
    assert all(n.startswith("blk.") for n in got_s)
    q = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(got_m["blk.1.attn_q.weight"], permute_rope_rows(mask[q], adapter.n_head))
    assert torch.equal(got_s["blk.1.attn_q.weight"], permute_rope_rows(scores[q], adapter.n_head))
    assert torch.equal(got_s["blk.0.ffn_down.weight"],
                       scores["model.layers.0.mlp.down_proj.weight"])
    assert sum(int(m.sum()) for m in got_m.values()) == sum(int(m.sum()) for m in mask.values())
    assert meta["format"] == "cwp-scores" and meta["fraction"] == "0.01"
    assert json.loads(meta["languages"]) == ["en"]
    assert list(tmp_path.iterdir()) == [tmp_path / "s.safetensors"]  # no temporary left


def test_same_seed_same_bytes(tiny, tmp_path):
    _pipeline(tiny, tmp_path / "a.safetensors", seed=1)
    _pipeline(tiny, tmp_path / "b.safetensors", seed=1)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_tied_or_unknown_tensor_refused(tiny):
    _, _, folder = tiny
    src = open_source(folder)
    shapes = {n: r.shape for n, r in src.tensors.items()}
    with pytest.raises(InputError, match="no GGUF tensor"):
        to_gguf_names(adapter_for(src.config), shapes, {"lm_head.weight": torch.zeros(1)})
    with pytest.raises(InputError, match="shape"):
        to_gguf_names(adapter_for(src.config), shapes,
                      {"model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3)})


def test_bad_files(tmp_path):
    def write(name, tensors, meta):
        p = tmp_path / name
        p.write_bytes(save(tensors, metadata=meta))
        return p

    ok = {"format": "cwp-scores", "version": "1"}
    (tmp_path / "junk").write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_scores(tmp_path / "junk")
    with pytest.raises(InputError, match="cannot read"):
        load_scores(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="format"):
        load_scores(write("other", {"x": torch.zeros(2)}, {"hello": "world"}))
    with pytest.raises(InputError, match="version"):
        load_scores(write("v9", {"score.a": torch.zeros(2)}, {**ok, "version": "9"}))
    with pytest.raises(InputError, match="but not both"):
        load_scores(write("half", {"score.a": torch.zeros(2)}, ok))
    with pytest.raises(InputError, match="differ in shape"):
        load_scores(write("shape", {"score.a": torch.zeros(2),
                                    "mask.a": torch.zeros(3, dtype=torch.bool)}, ok))
    with pytest.raises(InputError, match="unexpected tensor"):
        load_scores(write("dtype", {"score.a": torch.zeros(2, dtype=torch.float16),
                                    "mask.a": torch.zeros(2, dtype=torch.bool)}, ok))
    good = tmp_path / "good.safetensors"
    save_scores(good, {"a": torch.ones(4)}, {"a": torch.ones(4, dtype=torch.bool)})
    blob = good.read_bytes()
    (tmp_path / "cut").write_bytes(blob[:-3])
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_scores(tmp_path / "cut")
    with pytest.raises(ValueError):
        save_scores(tmp_path / "x", {"a": torch.ones(4)}, {"a": torch.ones(4, dtype=torch.bool)},
                    {"format": "mine"})
