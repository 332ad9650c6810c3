"""`cwp-export score` on the real SmolLM2-135M-Instruct (slow): exact mask size, a file that
round-trips, byte-identical reruns, and a 2-process torchrun (gloo) equal to one process.

A few built-in items per language keep it to minutes; the full built-in data is the default of
the command (see README, performance).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from cwp_export.cli import main
from cwp_export.formats.scores import load_activations, load_scores
from cwp_export.score.mask import critical_count

ARGS = ["--max-per-language", "2", "--batch-size", "4", "--no-progress", "--protect", "1%"]


@pytest.mark.slow
def test_smollm2_score_file_determinism_and_torchrun(tmp_path):
    from cwp_export.builtin import builtin_model_path

    folder = builtin_model_path("smollm2", progress=False)
    a, b, two = tmp_path / "a.st", tmp_path / "b.st", tmp_path / "two.st"
    for out in (a, b):
        r = CliRunner().invoke(main, ["score", str(folder), "-o", str(out), *ARGS])
        assert r.exit_code == 0, r.output
    print(r.output)
    assert a.read_bytes() == b.read_bytes()
    scores, mask, meta = load_scores(a)
    n = sum(t.numel() for t in scores.values())
    assert len(scores) == 7 * 30 and all(k.startswith("blk.") for k in scores)
    assert sum(int(m.sum()) for m in mask.values()) == critical_count(0.01, n)
    assert all(torch.isfinite(s).all() for s in scores.values())
    act = load_activations(a)
    assert set(act) == set(scores) and all((v >= 0).all() for v in act.values())
    data = json.loads(meta["data"])
    assert data["fairness"]["per_language"] == {x: 2 for x in ("en", "es", "fr", "nl", "tr")}

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29533", "-m", "cwp_export.cli", "score", str(folder), "-o", str(two),
           *ARGS]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    s2, m2, meta2 = load_scores(two)
    assert meta2["world_size"] == "2" and meta2["calibration_tokens"] == meta["calibration_tokens"]
    worst = max(float((s2[k] - scores[k]).abs().max() / scores[k].abs().max()) for k in scores)
    print(f"torchrun 2 processes vs 1: max relative difference {worst:.2e}")
    assert worst < 1e-4
    swapped = sum(int((m2[k] != mask[k]).sum()) for k in scores)
    assert swapped <= max(4, n // 10**6)  # only near-ties at the threshold may swap
