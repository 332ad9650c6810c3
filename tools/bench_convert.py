"""Benchmark peak memory and wall time of HF → GGUF F16 conversion: cwp-export vs llama.cpp.

Usage::

    python tools/bench_convert.py [FOLDER] [--out bench-results/convert.json] [--repeat N]

FOLDER defaults to the built-in SmolLM2-135M-Instruct checkpoint. Three commands run, each in a
fresh subprocess (``--repeat`` times):

* baseline: ``python -c "import torch, cwp_export.convert"``: the fixed cost of the interpreter,
  torch and our modules, before any tensor is touched;
* cwp-export: ``python -m cwp_export.cli FOLDER --quant F16 -o TMP --no-progress``;
* llama.cpp: ``python convert_hf_to_gguf.py FOLDER --outtype f16 --outfile TMP/x.gguf`` (the
  converter of the installed llama-cpp-python's version, see ``tools/llamacpp.py``).

Peak RSS is the child's ``ru_maxrss`` as returned by ``os.wait4`` for that child alone (the kernel's
high-water mark of its resident set, file-backed mapped pages included). This parent process imports
only the standard library, so the pre-exec high-water mark Linux carries into a child is negligible
(it is recorded in the JSON as ``parent_maxrss_bytes``). /proc is also sampled while each child
runs, to split resident memory into anonymous pages and mapped file pages (e.g. an mmap of the
source).

Target checked: cwp-export's peak RSS < 2 × (largest source tensor, in bytes of its source dtype) +
the baseline's peak RSS. PASS/FAIL is printed; the exit status is 1 on FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llamacpp import converter_command, llamacpp_version

REPO = Path(__file__).resolve().parent.parent
_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1}


@dataclass
class Run:
    """One measured subprocess."""

    peak_rss_bytes: int                      # ru_maxrss from os.wait4 (exact high-water mark)
    wall_s: float
    returncode: int
    peak_anon_bytes: int | None = None       # sampled max of RssAnon (/proc, every ~10 ms)
    peak_file_bytes: int | None = None       # sampled max of RssFile: mapped file pages (mmap)


@dataclass
class Measurement:
    """All runs of one command, summarized: max peak RSS, median wall time."""

    label: str
    cmd: list[str]
    runs: list[Run]
    output_bytes: int | None = None

    @property
    def peak_rss_bytes(self) -> int:
        return max(r.peak_rss_bytes for r in self.runs)

    def _peak(self, attr: str) -> int | None:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return max(values) if values else None

    @property
    def wall_s(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "cmd": self.cmd, "peak_rss_bytes": self.peak_rss_bytes,
                "peak_anon_bytes_sampled": self._peak("peak_anon_bytes"),
                "peak_file_bytes_sampled": self._peak("peak_file_bytes"),
                "wall_s": round(self.wall_s, 3), "output_bytes": self.output_bytes,
                "runs": [asdict(r) for r in self.runs]}


def _rss_parts(pid: int) -> tuple[int, int] | None:
    """(RssAnon, RssFile) of a live process in bytes, from /proc (None where unavailable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return (int(fields["RssAnon"].split()[0]) * 1024, int(fields["RssFile"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        return None


def measure_once(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run ``cmd`` to completion; return its own peak RSS (``os.wait4``) and wall time.

    While it runs, /proc is sampled every ~10 ms for the split of resident memory into anonymous
    pages and mapped file pages (a sample can miss a short spike; ru_maxrss cannot).
    """
    anon = file = None
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            parts = _rss_parts(proc.pid)
            if parts is not None:
                anon, file = max(anon or 0, parts[0]), max(file or 0, parts[1])
            time.sleep(0.01)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
        if proc.returncode != 0:
            err.seek(0)
            tail = "\n".join(err.read().decode(errors="replace").strip().splitlines()[-12:])
            raise RuntimeError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return Run(usage.ru_maxrss * 1024, round(wall, 3), proc.returncode, anon, file)  # KiB on Linux


def measure(label: str, cmd: list[str], repeat: int, env: dict[str, str] | None = None,
            output: Path | None = None) -> Measurement:
    runs = []
    for i in range(repeat):
        if output is not None and output.exists():
            output.unlink() if output.is_file() else shutil.rmtree(output)
        runs.append(measure_once(cmd, env, REPO))
        print(f"  {label} run {i + 1}/{repeat}: peak RSS {runs[-1].peak_rss_bytes / 2**20:.0f} MiB,"
              f" {runs[-1].wall_s:.1f} s", file=sys.stderr, flush=True)
    m = Measurement(label, cmd, runs)
    if output is not None:
        files = [output] if output.is_file() else sorted(output.glob("*.gguf"))
        m.output_bytes = sum(f.stat().st_size for f in files) if files else None
    return m


def largest_tensor(folder: Path) -> dict[str, Any]:
    """The largest tensor of the folder's safetensors files, in bytes of its stored dtype."""
    best: dict[str, Any] = {"bytes": -1}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in info["shape"]:
                count *= d
            nbytes = count * _ST_SIZES[info["dtype"]]
            if nbytes > best["bytes"]:
                best = {"name": name, "file": f.name, "dtype": info["dtype"],
                        "shape": info["shape"], "bytes": nbytes}
    if best["bytes"] < 0:
        raise SystemExit(f"error: {folder} holds no *.safetensors tensors")
    return best


def resolve_folder(spec: str | None) -> Path:
    """FOLDER, or the built-in SmolLM2 checkpoint (materialized in a subprocess, keeping this
    process free of torch so its memory does not leak into the children's measurements)."""
    if spec and not spec.startswith("builtin:"):
        return Path(spec).expanduser().resolve()
    key = spec.split(":", 1)[1] if spec else "smollm2"
    out = subprocess.run([sys.executable, "-c", "import sys; from cwp_export.builtin import "
                          "builtin_model_path; print(builtin_model_path(sys.argv[1]))", key],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: cannot get builtin:{key}: {out.stderr.strip().splitlines()[-1:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def mib(n: int | float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", help="checkpoint folder or builtin:NAME (default: smollm2)")
    p.add_argument("--out", type=Path, default=Path("bench-results/convert.json"))
    p.add_argument("--repeat", type=int, default=1, help="runs per command (max RSS, median time)")
    a = p.parse_args(argv)

    folder = resolve_folder(a.folder)
    big = largest_tensor(folder)
    work = Path(tempfile.mkdtemp(prefix="cwp-bench-"))
    try:
        print(f"benchmarking {folder} (F16), {a.repeat} run(s) each", file=sys.stderr)
        py = sys.executable
        baseline = measure("baseline", [py, "-c", "import torch, cwp_export.convert"], a.repeat)
        ours_out = work / "ours"
        ours = measure("cwp-export", [py, "-m", "cwp_export.cli", str(folder), "--quant", "F16",
                                      "-o", str(ours_out), "--no-progress"], a.repeat,
                       output=ours_out)
        theirs_out = work / "llamacpp.gguf"
        cmd, env = converter_command(folder, "f16", theirs_out)
        theirs = measure("llama.cpp", cmd, a.repeat, env=env, output=theirs_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    limit = 2 * big["bytes"] + baseline.peak_rss_bytes
    passed = ours.peak_rss_bytes < limit
    over_base = lambda m: m.peak_rss_bytes - baseline.peak_rss_bytes  # noqa: E731

    print(f"\nsource: {folder}")
    print(f"largest tensor: {big['name']} {big['dtype']} {big['shape']} = {mib(big['bytes'])}")
    print(f"\n{'':<27} {'cwp-export':>14} {'llama.cpp':>14} {'ours/theirs':>12}")

    def row(name: str, x: float | None, y: float | None, unit: str = "MiB") -> None:
        if x is None or y is None:
            return
        fx, fy = (mib(x), mib(y)) if unit == "MiB" else (f"{x:.2f} s", f"{y:.2f} s")
        ratio = f"{x / y:.2f}x" if y > 0 else "-"
        print(f"{name:<27} {fx:>14} {fy:>14} {ratio:>12}")

    row("peak RSS", ours.peak_rss_bytes, theirs.peak_rss_bytes)
    row("peak RSS over baseline", over_base(ours), over_base(theirs))
    row("  anon pages, sampled max", ours._peak("peak_anon_bytes"), theirs._peak("peak_anon_bytes"))
    row("  file pages, sampled max", ours._peak("peak_file_bytes"), theirs._peak("peak_file_bytes"))
    row("wall time (median)", ours.wall_s, theirs.wall_s, unit="s")
    print(f"{'baseline (import torch, ...)':<27} {mib(baseline.peak_rss_bytes):>14} "
          f"({baseline.wall_s:.2f} s)")
    print(f"\ntarget: peak RSS < 2 x largest tensor + baseline = 2 x {mib(big['bytes'])} + "
          f"{mib(baseline.peak_rss_bytes)} = {mib(limit)}")
    print(f"cwp-export peak RSS {mib(ours.peak_rss_bytes)}: {'PASS' if passed else 'FAIL'}")

    result = {
        "folder": str(folder), "outtype": "F16", "repeat": a.repeat,
        "largest_tensor": big,
        "baseline": baseline.to_json(), "cwp_export": ours.to_json(), "llamacpp": theirs.to_json(),
        "ratios": {"peak_rss": ours.peak_rss_bytes / theirs.peak_rss_bytes,
                   "wall_s": ours.wall_s / theirs.wall_s},
        "target": {"rule": "peak_rss < 2 * largest_tensor_bytes + baseline_peak_rss",
                   "limit_bytes": limit, "peak_rss_bytes": ours.peak_rss_bytes, "pass": passed},
        "env": {"python": platform.python_version(), "platform": platform.platform(),
                "cpus": os.cpu_count(), "llama_cpp_python": llamacpp_version(),
                "parent_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
    }
    out = a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
