"""Quantization benchmarks: our PyTorch encoders against ggml's C quantizer, side by side.

    python tools/bench_quant.py [--types Q8_0 Q4_K Q6_K ...] [--rows 1536 --cols 4096]
                                [--model-preset Q4_K_M] [--out bench-results/quant.json]

1. Encoder throughput (weights/s) on the same float32 tensor, with 1 and 2 threads, with and
   without a per-column importance, for each type: ours (``QuantType.encode`` under
   ``torch.set_num_threads(threads)``, which splits the rows into one band per thread) vs ggml's
   ``ggml_quantize_chunk`` (through ctypes in llama-cpp-python's libggml-base). ggml's quantizer
   runs single-threaded per call, so its 2-thread figure splits the rows over two threads too.
2. Whole-model preset (default Q4_K_M) of SmolLM2: wall time and peak RSS of ``cwp-export
   --protect 0 --quant Q4_K_M`` (a plain export, no scoring) from the Hugging Face folder vs
   llama.cpp's quantizer (``llama_model_quantize``, the code behind llama-quantize) from the F16
   GGUF of the same model, each in a fresh process.

Numbers go to the JSON file; ratios are ours/theirs (throughput: > 1 means we are faster).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cwp_export import quant
from cwp_export.ggml_ref import quantize as ggml_quantize

DEFAULT_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def _best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_encoders(types: list[str], rows: int, cols: int, repeat: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, cols, generator=g)
    imp = torch.rand(cols, generator=g) + 0.1
    xn, impn = x.numpy(), imp.numpy()
    out = []
    for name in types:
        qt = quant.get(name)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for with_imp in (False, True):
                ours = _best_of(lambda: qt.encode(x, imp if with_imp else None), repeat)

                def theirs():
                    parts = np.array_split(np.arange(rows), threads)
                    with ThreadPoolExecutor(threads) as pool:
                        list(pool.map(lambda p: ggml_quantize(xn[p[0]:p[-1] + 1], qt.ggml_type,
                                                              impn if with_imp else None), parts))

                ref = _best_of(theirs, repeat)
                row = {"type": name, "threads": threads, "importance": with_imp,
                       "ours_weights_per_s": rows * cols / ours,
                       "ggml_weights_per_s": rows * cols / ref, "ratio": ref / ours}
                out.append(row)
                print(f"{name:5s} threads={threads} importance={'yes' if with_imp else 'no ':3s} "
                      f"ours {row['ours_weights_per_s'] / 1e6:8.2f} Mw/s   ggml "
                      f"{row['ggml_weights_per_s'] / 1e6:8.2f} Mw/s   ratio {row['ratio']:.2f}",
                      flush=True)
    return out


# Runs ``python -m MODULE ...`` or ``python -c CODE ...`` and writes the process's own peak RSS
# (VmHWM) to a file at exit. ``ru_maxrss`` from wait4 would not do here: Linux carries the
# forking parent's high-water mark into the child, and this parent holds torch and the test
# tensors (both runs reported this process's ~640 MiB).
_HWM_WRAPPER = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def _hwm():
    with open('/proc/self/status') as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
    with open(out, 'w') as f:
        f.write(str(kib))
atexit.register(_hwm)
kind, target = sys.argv.pop(1), sys.argv.pop(1)
sys.argv[0] = target
if kind == '-m':
    runpy.run_module(target, run_name='__main__', alter_sys=True)
else:
    exec(compile(target, '<string>', 'exec'), {'__name__': '__main__'})
"""


def _run(cmd: list[str]) -> dict:
    """Run ``cmd`` (``[python, -m|-c, target, *args]``) in a fresh process; its wall time and its
    own peak RSS."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as err:
        hwm = Path(tmp) / "vmhwm"
        wrapped = [cmd[0], "-c", _HWM_WRAPPER, str(hwm), *cmd[1:]]
        t0 = time.perf_counter()
        proc = subprocess.run(wrapped, stdout=subprocess.DEVNULL, stderr=err)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd[:4])} failed: {err.read()[-2000:].decode()}")
        peak = int(hwm.read_text()) * 1024
    return {"wall_s": wall, "peak_rss_bytes": peak, "cmd": cmd}


def bench_model(preset: str) -> dict:
    from cwp_export.api import export
    from cwp_export.builtin import builtin_model_path

    folder = builtin_model_path("smollm2")
    with tempfile.TemporaryDirectory() as tmp:
        f16 = export(folder, quant="F16", outdir=Path(tmp) / "f16", progress=False,
                     argv=[]).model_path
        ours = _run([sys.executable, "-m", "cwp_export.cli", str(folder), "--quant", preset,
                     "--protect", "0", "-o", str(Path(tmp) / "ours"), "--no-progress"])
        theirs = _run([sys.executable, "-c",
                       "import sys; from cwp_export.testing import llamacpp_quantize as q; "
                       f"q(sys.argv[1], sys.argv[2], {preset!r})", str(f16),
                       str(Path(tmp) / "theirs.gguf")])
        sizes = {"ours": sum(p.stat().st_size for p in (Path(tmp) / "ours").glob("*.gguf")),
                 "theirs": (Path(tmp) / "theirs.gguf").stat().st_size}
    res = {"preset": preset, "model": "smollm2", "ours": ours, "llama_cpp": theirs,
           "file_bytes": sizes, "wall_ratio": ours["wall_s"] / theirs["wall_s"],
           "rss_ratio": ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]}
    print(f"SmolLM2 {preset}: cwp-export {ours['wall_s']:.1f} s, "
          f"{ours['peak_rss_bytes'] / 2**20:.0f} MiB | llama.cpp quantizer (from F16 GGUF) "
          f"{theirs['wall_s']:.1f} s, {theirs['peak_rss_bytes'] / 2**20:.0f} MiB | ratios "
          f"time {res['wall_ratio']:.2f}x, memory {res['rss_ratio']:.2f}x")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", default=DEFAULT_TYPES)
    ap.add_argument("--rows", type=int, default=1536)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model-preset", default="Q4_K_M", help="'' to skip the whole-model run")
    ap.add_argument("--out", default="bench-results/quant.json")
    args = ap.parse_args()
    result = {"tensor": [args.rows, args.cols],
              "encoders": bench_encoders(args.types, args.rows, args.cols, args.repeat)}
    if args.model_preset:
        result["model"] = bench_model(args.model_preset)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
