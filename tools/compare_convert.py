"""Compare cwp-export's GGUF output with llama.cpp's own converter, tensor by tensor and key by key.

Usage::

    python tools/compare_convert.py FOLDER... [--types f32 f16 bf16 q8_0] [--json OUT]

Each FOLDER is a Hugging Face checkpoint folder, ``builtin:smollm2`` (the built-in SmolLM2
checkpoint), ``tiny:ARCH`` (a tiny random checkpoint made by :mod:`cwp_export.testing`) or
``tiny:all`` (one per supported architecture). Every folder is converted to every type twice: with
cwp-export (:func:`cwp_export.api.export`) and with llama.cpp's ``convert_hf_to_gguf.py``
(:mod:`llamacpp`, fetched from the installed llama-cpp-python's sdist). Both files are read with
``gguf.GGUFReader`` and compared:

* tensors: the set of names, shapes, GGML types and data (exact byte equality; where bytes differ
  the max absolute difference after dequantizing with ``gguf.quants.dequantize``);
* metadata: every key both sides write (architecture hyperparameters, ``tokenizer.ggml.*`` tokens,
  types, merges, scores, pre-tokenizer, special token ids, add_bos/add_eos, chat template,
  general.*), and the keys only one side writes (reported as information, not as failure).

Tiny random tokenizers are unknown to llama.cpp's pre-tokenizer hash table, so its converter would
stop; for those the pre-tokenizer name cwp-export chose is passed in as a fallback (only used when
llama.cpp does not recognize the tokenizer, and flagged as ``pre forced`` in the output).

The exit status is 1 when any tensor differs (name, shape, type or data), 2 when a conversion
failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llamacpp import LlamaCppConvertError, converter_command

TYPES = ("f32", "f16", "bf16", "q8_0")
FORCED_PRE_MARK = "forced by the comparison tool"
# Metadata that only describes the file (name, converter) and is expected to differ; compared and
# reported, but never counted as a mismatch.
INFO_PREFIXES = ("general.",)
KEY_GENERAL = ("general.architecture", "general.file_type", "general.quantization_version")


# --------------------------------------------------------------------------------------- results
@dataclass
class TensorResult:
    """One tensor name: what each side wrote and how they compare."""

    name: str
    status: str                      # identical | data | type | shape | only_ours | only_llamacpp
    ours_shape: list[int] | None = None
    llamacpp_shape: list[int] | None = None
    ours_type: str | None = None
    llamacpp_type: str | None = None
    max_abs_diff: float | None = None    # after dequantizing, where bytes differ and shapes agree
    n_values_differ: int | None = None
    # where only the number of rows (outermost dimension) differs: are the rows both have equal?
    common_rows_identical: bool | None = None


@dataclass
class KeyResult:
    """One metadata key: equal, different, or written by one side only."""

    key: str
    status: str                      # equal | differs | only_ours | only_llamacpp
    important: bool                  # False for descriptive general.* keys
    ours: str | None = None          # short summaries of the values
    llamacpp: str | None = None
    detail: str | None = None


@dataclass
class Comparison:
    """The comparison of one folder converted to one type."""

    model: str
    folder: str
    outtype: str
    ours_file: str | None = None
    llamacpp_file: str | None = None
    ours_seconds: float | None = None
    llamacpp_seconds: float | None = None
    pre_forced: bool = False
    error: str | None = None
    tensors: list[TensorResult] = field(default_factory=list)
    metadata: list[KeyResult] = field(default_factory=list)

    @property
    def tensor_problems(self) -> list[TensorResult]:
        return [t for t in self.tensors if t.status != "identical"]

    @property
    def tensors_identical(self) -> bool:
        return self.error is None and not self.tensor_problems

    @property
    def key_mismatches(self) -> list[KeyResult]:
        return [k for k in self.metadata if k.status == "differs" and k.important]

    def summary(self) -> dict[str, Any]:
        count = lambda s: sum(1 for t in self.tensors if t.status == s)  # noqa: E731
        return {
            "tensors_identical": self.tensors_identical,
            "n_tensors_ours": sum(1 for t in self.tensors if t.status != "only_llamacpp"),
            "n_tensors_llamacpp": sum(1 for t in self.tensors if t.status != "only_ours"),
            **{f"n_{s}": count(s) for s in ("identical", "data", "type", "shape", "only_ours",
                                            "only_llamacpp")},
            "max_abs_diff": max((t.max_abs_diff for t in self.tensors
                                 if t.max_abs_diff is not None), default=None),
            "n_keys_equal": sum(1 for k in self.metadata if k.status == "equal"),
            "n_keys_differ": len(self.key_mismatches),
            "n_info_keys_differ": sum(1 for k in self.metadata
                                      if k.status == "differs" and not k.important),
            "keys_only_ours": [k.key for k in self.metadata if k.status == "only_ours"],
            "keys_only_llamacpp": [k.key for k in self.metadata if k.status == "only_llamacpp"],
        }

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary()
        return d


# ---------------------------------------------------------------------------------- conversions
def convert_ours(folder: Path, outtype: str, outdir: Path) -> Path:
    """Convert ``folder`` with cwp-export's Python API; return the GGUF path."""
    from cwp_export.api import export

    return export(folder, quant=outtype.upper(), outdir=outdir, progress=False, argv=[]).model_path


def convert_llamacpp(folder: Path, outtype: str, outfile: Path,
                     pre_fallback: str | None) -> tuple[Path, bool]:
    """Convert with llama.cpp's converter; return the path and whether the pre name was forced."""
    import subprocess

    cmd, env = converter_command(folder, outtype, outfile, pre_fallback)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 or not outfile.is_file():
        tail = "\n".join(log.strip().splitlines()[-12:])
        raise LlamaCppConvertError(f"llama.cpp's converter failed (exit {proc.returncode}):"
                                   f"\n{tail}")
    return outfile, FORCED_PRE_MARK in log


# ------------------------------------------------------------------------------------- reading
def read_fields(reader: Any) -> dict[str, tuple[str, Any]]:
    """Metadata key → (type name, value) for every key-value field of a GGUFReader."""
    from gguf import GGUFValueType

    out: dict[str, tuple[str, Any]] = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):  # header pseudo-fields (version, counts)
            continue
        types = [GGUFValueType(t).name for t in f.types]
        out[name] = ("[" + ",".join(types[1:]) + "]" if types and types[0] == "ARRAY"
                     else types[0] if types else "?", f.contents())
    return out


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, list):
        head = ", ".join(_short(v, 20) for v in value[:3])
        return f"[{len(value)} items: {head}{', ...' if len(value) > 3 else ''}]"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _list_detail(a: list[Any], b: list[Any]) -> str:
    """Where two metadata arrays differ: lengths, count and first positions of differences."""
    n = min(len(a), len(b))
    diff = [i for i in range(n) if a[i] != b[i]]
    parts = []
    if len(a) != len(b):
        parts.append(f"length {len(a)} (ours) vs {len(b)} (llama.cpp)")
    if diff:
        shown = "; ".join(f"[{i}] {_short(a[i], 30)} vs {_short(b[i], 30)}" for i in diff[:5])
        parts.append(f"{len(diff)} of {n} positions differ, first: {shown}")
        if all(isinstance(a[i], float) and isinstance(b[i], float) for i in diff):
            parts.append(f"max abs diff {max(abs(a[i] - b[i]) for i in diff):g}")
    return "; ".join(parts)


def compare_metadata(ours: dict[str, tuple[str, Any]],
                     theirs: dict[str, tuple[str, Any]]) -> list[KeyResult]:
    """Compare every metadata key; ``general.*`` keys other than the file-type ones are info."""
    out = []
    for key in sorted(ours.keys() | theirs.keys()):
        important = not key.startswith(INFO_PREFIXES) or key in KEY_GENERAL
        if key not in theirs:
            out.append(KeyResult(key, "only_ours", important, ours=_short(ours[key][1])))
            continue
        if key not in ours:
            out.append(KeyResult(key, "only_llamacpp", important, llamacpp=_short(theirs[key][1])))
            continue
        (ta, va), (tb, vb) = ours[key], theirs[key]
        r = KeyResult(key, "equal", important, ours=_short(va), llamacpp=_short(vb))
        if va != vb or ta != tb:
            r.status = "differs"
            details = [] if ta == tb else [f"type {ta} (ours) vs {tb} (llama.cpp)"]
            if va != vb and isinstance(va, list) and isinstance(vb, list):
                details.append(_list_detail(va, vb))
            r.detail = "; ".join(d for d in details if d) or None
        out.append(r)
    return out


def _flat_bytes(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data).reshape(-1).view(np.uint8)


def compare_tensors(ours: Any, theirs: Any) -> list[TensorResult]:
    """Compare the tensors of two GGUFReaders: names, shapes, GGML types, bytes."""
    from gguf.quants import dequantize

    a = {t.name: t for t in ours.tensors}
    b = {t.name: t for t in theirs.tensors}
    out = []
    for name in sorted(a.keys() | b.keys()):
        ta, tb = a.get(name), b.get(name)
        r = TensorResult(name, "identical")
        if ta is not None:
            r.ours_shape, r.ours_type = [int(d) for d in ta.shape], ta.tensor_type.name
        if tb is not None:
            r.llamacpp_shape, r.llamacpp_type = [int(d) for d in tb.shape], tb.tensor_type.name
        if ta is None or tb is None:
            r.status = "only_llamacpp" if ta is None else "only_ours"
            out.append(r)
            continue
        if r.ours_shape != r.llamacpp_shape:
            r.status = "shape"
            if r.ours_type == r.llamacpp_type and r.ours_shape[:-1] == r.llamacpp_shape[:-1]:
                n = min(r.ours_shape[-1], r.llamacpp_shape[-1])  # GGUF order: rows come last
                r.common_rows_identical = bool(np.array_equal(
                    _flat_bytes(np.asarray(ta.data)[:n]), _flat_bytes(np.asarray(tb.data)[:n])))
        elif r.ours_type != r.llamacpp_type:
            r.status = "type"
        elif not np.array_equal(_flat_bytes(ta.data), _flat_bytes(tb.data)):
            r.status = "data"
        if r.status in ("type", "data"):
            x = dequantize(np.asarray(ta.data), ta.tensor_type).astype(np.float32).reshape(-1)
            y = dequantize(np.asarray(tb.data), tb.tensor_type).astype(np.float32).reshape(-1)
            if x.shape == y.shape:
                d = np.abs(x - y)
                both_nan = np.isnan(x) & np.isnan(y)
                d[both_nan] = 0
                r.max_abs_diff = float(np.nanmax(d)) if d.size else 0.0
                r.n_values_differ = int(np.count_nonzero((x != y) & ~both_nan))
        out.append(r)
    return out


# ----------------------------------------------------------------------------------- the driver
def compare_folder(label: str, folder: Path, outtype: str, workdir: Path) -> Comparison:
    """Convert ``folder`` to ``outtype`` both ways inside ``workdir`` and compare the files."""
    from gguf import GGUFReader

    c = Comparison(label, str(folder), outtype)
    try:
        t0 = time.perf_counter()
        ours_path = convert_ours(folder, outtype, workdir / f"{label}-{outtype}-ours")
        c.ours_seconds = round(time.perf_counter() - t0, 2)
        c.ours_file = str(ours_path)
        ours = GGUFReader(ours_path)
        ours_fields = read_fields(ours)
        pre = ours_fields.get("tokenizer.ggml.pre", (None, None))[1]
        t0 = time.perf_counter()
        theirs_path, c.pre_forced = convert_llamacpp(
            folder, outtype, workdir / f"{label}-{outtype}-llamacpp.gguf", pre or "default")
        c.llamacpp_seconds = round(time.perf_counter() - t0, 2)
        c.llamacpp_file = str(theirs_path)
        theirs = GGUFReader(theirs_path)
        c.tensors = compare_tensors(ours, theirs)
        c.metadata = compare_metadata(ours_fields, read_fields(theirs))
    except Exception as e:  # reported per row; the run goes on with the next folder/type
        c.error = f"{e.__class__.__name__}: {e}"
    return c


def resolve_inputs(specs: Iterable[str], workdir: Path) -> list[tuple[str, Path]]:
    """Turn FOLDER / ``builtin:NAME`` / ``tiny:ARCH`` / ``tiny:all`` into (label, folder) pairs."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        if spec.startswith("builtin:"):
            from cwp_export.builtin import builtin_model_path

            out.append((spec.split(":", 1)[1], builtin_model_path(spec, progress=True)))
        elif spec.startswith("tiny:"):
            from cwp_export.testing import ARCHITECTURES, make_tiny_model

            which = spec.split(":", 1)[1]
            archs = ARCHITECTURES if which == "all" else (which,)
            for arch in archs:
                if arch not in ARCHITECTURES:
                    raise SystemExit(f"error: no tiny model for {arch!r}; choose from "
                                     f"{', '.join(ARCHITECTURES)} or all")
                folder = make_tiny_model(arch, workdir / "src" / f"tiny-{arch}")
                out.append((f"tiny-{arch}", folder))
        else:
            p = Path(spec).expanduser()
            if not (p / "config.json").is_file():
                raise SystemExit(f"error: {p} is not a checkpoint folder (no config.json)")
            out.append((p.resolve().name, p))
    return out


# ------------------------------------------------------------------------------------- printing
def _fmt_diff(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def print_report(results: list[Comparison], verbose: bool = False) -> None:
    """A summary table, then what differs for each comparison."""
    header = (f"{'model':<16} {'type':<5} {'tensors':>9} {'ident':>6} {'data':>5} {'type':>5} "
              f"{'shape':>5} {'1side':>5} {'maxdiff':>8}  {'keys=':>5} {'keys≠':>5} "
              f"{'only ours':>9} {'only l.cpp':>10}  result")
    print(header)
    print("-" * len(header))
    for c in results:
        if c.error:
            print(f"{c.model:<16} {c.outtype:<5} ERROR: {c.error.splitlines()[0]}")
            continue
        s = c.summary()
        one_side = s["n_only_ours"] + s["n_only_llamacpp"]
        result = "IDENTICAL" if c.tensors_identical else "DIFFERENT"
        if c.pre_forced:
            result += " (pre forced)"
        print(f"{c.model:<16} {c.outtype:<5} {s['n_tensors_ours']:>4}/{s['n_tensors_llamacpp']:<4} "
              f"{s['n_identical']:>6} {s['n_data']:>5} {s['n_type']:>5} {s['n_shape']:>5} "
              f"{one_side:>5} {_fmt_diff(s['max_abs_diff']):>8}  {s['n_keys_equal']:>5} "
              f"{s['n_keys_differ']:>5} {len(s['keys_only_ours']):>9} "
              f"{len(s['keys_only_llamacpp']):>10}  {result}")

    for c in results:
        if c.error:
            print(f"\n== {c.model} {c.outtype}: conversion failed\n{c.error}")
            continue
        lines = []
        for t in c.tensor_problems:
            if t.status == "only_ours":
                lines.append(f"  tensor {t.name}: only ours ({t.ours_type} {t.ours_shape})")
            elif t.status == "only_llamacpp":
                lines.append(f"  tensor {t.name}: only llama.cpp ({t.llamacpp_type} "
                             f"{t.llamacpp_shape})")
            elif t.status == "shape":
                rows = ("" if t.common_rows_identical is None else
                        f"; the rows both have are {'' if t.common_rows_identical else 'NOT '}"
                        f"byte-identical")
                lines.append(f"  tensor {t.name}: shape differs: ours {t.ours_type} {t.ours_shape},"
                             f" llama.cpp {t.llamacpp_type} {t.llamacpp_shape}{rows}")
            else:
                lines.append(f"  tensor {t.name}: {t.status} differs: ours {t.ours_type} "
                             f"{t.ours_shape}, llama.cpp {t.llamacpp_type} {t.llamacpp_shape}, "
                             f"max|diff| {_fmt_diff(t.max_abs_diff)}, "
                             f"{t.n_values_differ if t.n_values_differ is not None else '?'} "
                             f"values differ")
        for k in c.metadata:
            if k.status == "differs" and (k.important or verbose):
                tag = "" if k.important else " (info)"
                lines.append(f"  key {k.key}{tag}: ours {k.ours} vs llama.cpp {k.llamacpp}"
                             + (f" -- {k.detail}" if k.detail else ""))
        only_ours = [k for k in c.metadata if k.status == "only_ours"]
        only_theirs = [k for k in c.metadata if k.status == "only_llamacpp"]
        if only_ours:
            lines.append("  keys only ours: " + ", ".join(f"{k.key}={k.ours}" for k in only_ours))
        if only_theirs:
            lines.append("  keys only llama.cpp: "
                         + ", ".join(f"{k.key}={k.llamacpp}" for k in only_theirs))
        if c.pre_forced:
            lines.append("  note: llama.cpp did not recognize this tokenizer's pre-tokenizer; "
                         "tokenizer.ggml.pre was forced to ours, so that key is not evidence")
        if lines:
            print(f"\n== {c.model} {c.outtype}")
            print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="FOLDER may also be builtin:smollm2, tiny:ARCH or tiny:all.")
    p.add_argument("folders", nargs="+", metavar="FOLDER")
    p.add_argument("--types", nargs="+", default=["f16"], choices=TYPES, type=str.lower)
    p.add_argument("--json", type=Path, metavar="OUT", help="write the full result as JSON")
    p.add_argument("--workdir", type=Path,
                   help="keep the converted files here (default: a temporary folder, removed)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also list differing descriptive general.* keys")
    a = p.parse_args(argv)

    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="cwp-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = [compare_folder(label, folder, t, workdir)
                   for label, folder in resolve_inputs(a.folders, workdir) for t in a.types]
        print_report(results, a.verbose)
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps([c.to_json() for c in results], indent=1) + "\n")
            print(f"\nwrote {a.json}")
    finally:
        if a.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if any(c.error for c in results):
        return 2
    return 0 if all(c.tensors_identical for c in results) else 1


if __name__ == "__main__":
    sys.exit(main())
