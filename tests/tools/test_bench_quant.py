"""tools/bench_quant.py measures each child's own peak RSS, not the one Linux carries over from
the (large) benchmarking parent into ``wait4``'s ``ru_maxrss``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import bench_quant


def test_peak_rss_is_the_childs_own():
    ballast = np.ones(1 << 26)                       # 512 MiB held by this process
    small = bench_quant._run([sys.executable, "-c", "pass"])
    big = bench_quant._run([sys.executable, "-c",
                            "import sys, numpy as np; a = np.ones(int(sys.argv[1])); a.sum()",
                            str(1 << 25)])           # 256 MiB in the child
    assert ballast.sum() > 0
    assert small["peak_rss_bytes"] < 128 << 20
    assert 256 << 20 < big["peak_rss_bytes"] < 512 << 20


def test_module_runs_see_their_arguments(tmp_path):
    (tmp_path / "m.py").write_text("x = 1\n")
    res = bench_quant._run([sys.executable, "-m", "compileall", "-q", str(tmp_path)])
    assert list((tmp_path / "__pycache__").glob("m.*.pyc"))       # the argument arrived
    assert res["wall_s"] > 0 and res["peak_rss_bytes"] > 0
