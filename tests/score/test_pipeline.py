"""The scoring stage end to end on tiny models: CLI, file, determinism, β, passes, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cwp_export.cli import main
from cwp_export.errors import InputError
from cwp_export.formats.scores import load_scores
from cwp_export.score.mask import critical_count
from cwp_export.score.pipeline import score_model

QUICK = {"max_per_language": 2, "progress": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from cwp_export.testing import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("pipeline") / "llama")


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


def test_cli_writes_a_file_that_round_trips(tiny, tmp_path):
    out = tmp_path / "s.safetensors"
    code, text = _run("score", str(tiny), "-o", str(out), "--protect", "2%",
                      "--max-per-language", "2", "--no-progress", "--seed", "3")
    assert code == 0, text
    assert "critical weights:" in text and "top-1% cols" in text and f"wrote {out}" in text
    scores, mask, meta = load_scores(out)
    n = sum(t.numel() for t in scores.values())
    assert sum(int(m.sum()) for m in mask.values()) == critical_count(0.02, n)
    assert all(k.startswith("blk.") for k in scores)  # GGUF names
    assert meta["scorer"] == "cwp" and float(meta["beta"]) == 1.0 and meta["seed"] == "3"
    from cwp_export.source import open_source
    assert meta["model_fingerprint"] == open_source(tiny).fingerprint()
    data = json.loads(meta["data"])
    assert set(data) == {"fairness", "safety", "general_text", "general_instruct"}
    assert data["fairness"]["per_language"] == {x: 2 for x in ("en", "es", "fr", "nl", "tr")}
    assert data["safety"]["per_language"] == {x: 2 for x in ("ar", "en", "ko")}
    assert all(len(d["sha256"]) == 64 for d in data.values())
    summ = json.loads(meta["summary"])
    assert set(summ["layers"]) == {"0", "1"} and summ["critical"] == critical_count(0.02, n)
    assert int(meta["calibration_tokens"]) > 0


def test_same_seed_same_bytes(tiny, tmp_path):
    for name in ("a", "b"):
        assert _run("score", str(tiny), "-o", str(tmp_path / f"{name}.st"),
                    "--max-per-language", "1", "--no-progress")[0] == 0
    assert (tmp_path / "a.st").read_bytes() == (tmp_path / "b.st").read_bytes()


def test_cwp_is_fairness_plus_safety_minus_beta_general(tiny):
    fair = score_model(tiny, scorer="fairness", **QUICK).scores
    safe = score_model(tiny, scorer="safety", **QUICK).scores
    b0 = score_model(tiny, beta=0.0, **QUICK).scores
    b2 = score_model(tiny, beta=2.0, **QUICK).scores
    for n in fair:
        torch.testing.assert_close(b0[n], fair[n] + safe[n], rtol=1e-4, atol=1e-7)
        general = (b0[n] - b2[n]) / 2
        assert (general >= -1e-6 * general.abs().max()).all()  # a Fisher term is non-negative


def test_beta_pushes_general_weights_out_of_the_mask(tiny):
    """The larger β, the less the critical set overlaps the weights that matter most to
    general language modelling."""
    b0 = score_model(tiny, beta=0.0, protect=0.02, **QUICK)
    big = score_model(tiny, beta=20.0, protect=0.02, **QUICK)
    general = {n: b0.scores[n] - big.scores[n] for n in b0.scores}  # 20·F_general
    from cwp_export.score import global_threshold_mask
    top_general = global_threshold_mask(general, 0.02)

    def overlap(mask):
        return sum(int((mask[n] & top_general[n]).sum()) for n in mask)

    assert overlap(big.mask) < overlap(b0.mask)


def test_layers_per_pass_and_subsets(tiny):
    whole = score_model(tiny, **QUICK)
    passes = score_model(tiny, layers_per_pass=1, **QUICK)
    for n in whole.scores:
        torch.testing.assert_close(passes.scores[n], whole.scores[n], rtol=1e-5, atol=1e-9)
    only1 = score_model(tiny, layers=[1], **QUICK)
    assert set(only1.scores) == {n for n in whole.scores if n.startswith("blk.1.")}
    for n in only1.scores:
        torch.testing.assert_close(only1.scores[n], whole.scores[n], rtol=1e-5, atol=1e-9)


def test_data_free_and_activation_scorers(tiny):
    from cwp_export.source import open_source

    src = open_source(tiny)
    mag = score_model(tiny, scorer="magnitude", **QUICK)
    q = src.load("model.layers.0.mlp.down_proj.weight").float()
    assert torch.equal(mag.scores["blk.0.ffn_down.weight"], q.abs())
    act = score_model(tiny, scorer="activation", **QUICK)
    wanda = score_model(tiny, scorer="wanda", **QUICK)
    a = act.scores["blk.0.ffn_down.weight"]
    assert torch.equal(a, a[:1].expand_as(a))  # one value per column, as an imatrix
    n_tok = int(wanda.metadata["calibration_tokens"])
    torch.testing.assert_close(wanda.scores["blk.0.ffn_down.weight"], q.abs() * (a * n_tok).sqrt())
    r1 = score_model(tiny, scorer="random", seed=1, **QUICK).scores
    r1b = score_model(tiny, scorer="random", seed=1, **QUICK).scores
    r2 = score_model(tiny, scorer="random", seed=2, **QUICK).scores
    n = "blk.0.attn_v.weight"
    assert torch.equal(r1[n], r1b[n]) and not torch.equal(r1[n], r2[n])
    assert mag.metadata["data"] == {} and set(act.metadata["data"]) == {"general_text"}


def test_user_jsonl_calibration(tiny, tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps({"lang": "en", "context": "", "stereotype": s,
                                       "anti_stereotype": a})
                           for s, a in [("He is loud.", "She is loud."),
                                        ("The old man forgot.", "The young man forgot.")]))
    r = score_model(tiny, scorer="fairness", calib={"fairness": [str(f)]}, progress=False)
    assert json.loads(json.dumps(r.metadata["data"]))["fairness"]["items"] == 2


def test_bad_inputs(tiny, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"lang": "en", "context": ""\n')
    cases = [
        (["--scorer", "nope"], "unknown scorer"),
        (["--languages", "xx"], "unknown language"),
        (["--protect", "-1%"], "outside"),
        (["--protect", "lots"], "not a number"),
        (["--calib-fairness", str(empty)], "holds no items"),
        (["--calib-fairness", str(broken)], "not valid JSON"),
        (["--calib-safety", "mystery"], "not understood"),
        (["--layers", "5"], "layers 0..1"),
        (["--layers", "a-b"], "not a list"),
    ]
    for extra, needle in cases:
        code, text = _run("score", str(tiny), "-o", str(tmp_path / "x.st"), "--no-progress",
                          "--max-per-language", "1", *extra)
        assert code == 2 and needle in text and "Traceback" not in text, (extra, text)
        assert not (tmp_path / "x.st").exists()


def test_model_without_chat_template(tiny, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny, plain)
    cfg_path = plain / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(InputError, match="no chat template.*--chat-template"):
        score_model(plain, **QUICK)
    r = score_model(plain, chat_template="plain", **QUICK)  # the plain-text fallback
    assert r.summary["critical"] > 0
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                   "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert score_model(plain, chat_template=str(tpl), **QUICK).summary["critical"] > 0
    # fairness and general text need no template
    assert score_model(plain, calib={"safety": ["none"], "general_instruct": ["none"]},
                       **QUICK).summary["critical"] > 0


def test_torchrun_two_processes_equal_one(tiny, tmp_path):
    """Data-parallel gloo run: each rank scores half of the items; sums are all-reduced."""
    one = tmp_path / "one.st"
    two = tmp_path / "two.st"
    args = ["score", str(tiny), "--max-per-language", "2", "--no-progress"]
    assert _run(*args, "-o", str(one))[0] == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "cwp_export.cli", *args, "-o", str(two)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    a, ma, meta_a = load_scores(one)
    b, mb, meta_b = load_scores(two)
    assert meta_b["world_size"] == "2" and meta_a["world_size"] == "1"
    assert meta_a["calibration_tokens"] == meta_b["calibration_tokens"]
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-5, atol=1e-6 * float(a[n].abs().max()))
    differ = sum(int((ma[n] != mb[n]).sum()) for n in a)
    assert differ <= 2  # only float ties at the threshold could swap
