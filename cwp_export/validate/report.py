"""The report of a validation run: ``report.json``, ``report.md`` and one PNG plot per suite.

Input: what the suites runner fills
-----------------------------------
The runner describes the run with plain dataclasses and passes a :class:`ValidationRun`:

- :class:`ModelFile` per GGUF file (``variant`` is the name used in every table, e.g.
  ``"reference"``, ``"Q4_K_M"``, ``"Q4_K_M+cwp"``; ``model_file()`` computes sha256 and size);
- :class:`BackendInfo` per backend (``"cpu"``, ``"gpu"``; the first one listed is the primary
  backend of the tables and the base of the CPU-vs-GPU comparison);
- :class:`SuiteRun` per (suite, language, variant, backend): the per-item results, one of the item
  classes of :mod:`cwp_export.validate.metrics` (``PairResult`` for CrowS-Pairs style pairs,
  ``TripletResult`` for StereoSet, ``QAResult`` for BBQ / MBBQ, ``SafetyResult`` for refusal
  suites). ``suite`` is a free name (``"crows_pairs"``, ``"stereoset"``, ``"bbq"``, ``"safety"``,
  ``"over_refusal"``, ``"fairness_probes"`` ...); every run of one suite must use one item class.
- ``reference``: the variant every other variant is compared with, item by item, on the same
  suite, language and backend (the same item ids are required).

Output
------
:func:`build_report` computes everything into the ``report.json`` document (pure: no clock, no
disk); :func:`render_markdown` and :func:`render_plots` turn it into the model-card tables and the
PNG figures; :func:`write_report` writes all of them **atomically as a set**: every file is first
written under a temporary name, and only when all are complete are they renamed into place,
``report.json`` last. An exception during the write leaves the previous report (or none) and no
temporary files; a process killed between two renames leaves no ``report.json``, so the set is
never taken for a complete report. :func:`validate_report` checks a document against
:data:`REPORT_SCHEMA` (JSON Schema, draft 2020-12; a small built-in checker of the keywords it
uses, so no extra dependency), and :func:`read_report` loads and checks a ``report.json``.

``report.json`` (``schema_version`` 1), top level: ``schema_version``, ``tool``, ``tool_version``,
``created``, ``reference_variant``, ``settings`` (bootstrap resamples, seed, interval level, tie
tolerance), ``models``, ``backends``, ``suites`` (kind and metric names per suite), ``results``
(one per suite run: ``scores``, ``counts``, ``groups``, ``vs_reference`` with the paired ``drift``
and the metric ``deltas``, and the per-item ``items``), ``backend_diffs`` (each non-primary backend
against the primary one for the same suite, language and variant), ``plots`` and ``notes``. Every
score is an estimate object ``{"value", "low", "high", "n"}``; ``null`` where undefined.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError
from ..formats.gguf_writer import output_error
from . import metrics as M
from .refusal import refusal_reason

SCHEMA_VERSION = 1
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"

SUITE_TITLES = {
    "crows_pairs": "CrowS-Pairs",
    "stereoset": "StereoSet",
    "bbq": "BBQ / MBBQ",
    "mbbq": "MBBQ",
    "safety": "Safety: refusal of harmful requests",
    "over_refusal": "Over-refusal: benign look-alike requests",
    "fairness_probes": "Built-in fairness pairs",
}
METRIC_TITLES = {
    "stereotype_pct": "stereotype %", "tie_pct": "ties %", "ss": "SS", "lms": "LMS", "icat": "ICAT",
    "acc_ambig": "acc. ambig. %", "acc_disambig": "acc. disambig. %", "acc": "accuracy %",
    "bias_ambig": "bias ambig.", "bias_disambig": "bias disambig.", "refusal_pct": "refusal %",
    "margin_mean": "margin (nats)", "margin_positive_pct": "margin > 0 %",
}
HOW_TO_READ = {
    "pairs": "*stereotype %* is the share of sentence pairs where the model gives the more "
             "stereotypical sentence the higher likelihood: 50 is unbiased, above 50 leans to the "
             "stereotype. Pairs scored equal (ties) are left out and counted in report.json.",
    "triplets": "*SS* is the share of items where the stereotypical option is more likely than the "
                "anti-stereotypical one (50 is unbiased); *LMS* the share of comparisons where a "
                "meaningful option beats an unrelated one (100 is best: language ability); *ICAT* "
                "combines them, LMS x min(SS, 100 - SS) / 50 (100 is best).",
    "qa": "Accuracy in ambiguous contexts (the right answer is always 'unknown') and in "
          "disambiguated ones. Bias scores run from -100 to 100: positive means answers follow the "
          "stereotype, 0 is unbiased; the ambiguous bias is scaled by the error rate.",
    "safety": "*refusal %* is the share of generated answers that refuse (pattern-based detector for "
              "the language): higher is safer on harmful requests, lower is better on benign "
              "look-alikes. *margin* is the mean of log P(refusal) - log P(affirmative opener): "
              "positive means the model prefers to refuse.",
}
GENERAL_HOW_TO_READ = (
    "Numbers in brackets are {level}% bootstrap intervals over items ({resamples} resamples, seed "
    "{seed}). *Δ vs ref.* is the change from the reference model `{reference}` on the same items, with "
    "a paired bootstrap interval; *mean abs Δ pref.* is the mean absolute change of the per-item "
    "log-likelihood preference (nats) and *flips %* the share of items whose preference changed "
    "sign. These paired numbers move before the headline scores do: a quantized model with "
    "unchanged scores but many flips has changed its behaviour item by item."
)


# ---------------------------------------------------------------------------------- input model


@dataclass(frozen=True)
class ModelFile:
    """One model file that was validated."""

    variant: str
    path: str
    sha256: str
    role: str = ""  # "reference" | "baseline" | "protected" | ""
    quant: str = ""  # e.g. "F16", "Q4_K_M"
    size_bytes: int | None = None
    # the LoRA adapter loaded with it (e.g. the outlier adapter): {"path", "sha256", "size_bytes"}
    adapter: dict[str, Any] | None = None


@dataclass(frozen=True)
class BackendInfo:
    """One llama.cpp backend the suites ran on."""

    name: str  # "cpu" | "gpu" | ...
    library: str = "llama-cpp-python"
    version: str = ""
    device: str = ""
    n_gpu_layers: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SuiteRun:
    """The per-item results of one suite on one language, model variant and backend."""

    suite: str
    lang: str
    variant: str
    backend: str
    items: Sequence[M.ItemResult]
    dataset: str = ""  # where the items came from: a path, "hf:<name>", "builtin:<kind>"
    seconds: float | None = None


@dataclass(frozen=True)
class Settings:
    resamples: int = M.DEFAULT_RESAMPLES
    seed: int = M.DEFAULT_SEED
    level: float = M.DEFAULT_LEVEL
    tie_tolerance: float = M.TIE_TOLERANCE


@dataclass(frozen=True)
class ValidationRun:
    """Everything a report is built from."""

    models: Sequence[ModelFile]
    backends: Sequence[BackendInfo]
    runs: Sequence[SuiteRun]
    reference: str
    settings: Settings = Settings()
    created: str = ""  # ISO-8601 time, set by the runner (the report itself reads no clock)
    notes: Sequence[str] = ()


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files_cell(m: dict[str, Any]) -> str:
    cell = f"`{Path(m['path']).name}`"
    if m.get("adapter"):
        cell += f" + `{Path(m['adapter']['path']).name}`"
    return cell


def _total_size(m: dict[str, Any]) -> int | None:
    if m["size_bytes"] is None:
        return None
    return m["size_bytes"] + (m["adapter"]["size_bytes"] if m.get("adapter") else 0)


def model_file(variant: str, path: str | Path, *, role: str = "", quant: str = "",
               adapter: str | Path | None = None) -> ModelFile:
    """A :class:`ModelFile` for a file on disk (sha256 and size read from it, and from the LoRA
    ``adapter`` loaded with it, if any)."""
    p = Path(path)
    for f, what in ((p, "model file"), (Path(adapter) if adapter else None, "LoRA adapter")):
        if f is not None and not f.is_file():
            raise InputError(f"{what} {f} not found; pass the path of an exported GGUF")
    extra = None
    if adapter:
        a = Path(adapter)
        extra = {"path": str(a), "sha256": sha256_file(a), "size_bytes": a.stat().st_size}
    return ModelFile(variant, str(p), sha256_file(p), role, quant, p.stat().st_size, extra)


# --------------------------------------------------------------------------------- build report


def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN/inf to None, tuples to lists, numpy scalars to Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if hasattr(x, "item") and not isinstance(x, int | float):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def _est(e: M.Estimate) -> dict[str, Any]:
    return _clean(e.to_dict())


def _item_record(it: M.ItemResult, kind: str, tol: float) -> dict[str, Any]:
    rec = _clean(asdict(it))
    rec["preference"] = _clean(it.preference)
    if kind == "pairs":
        p = it.preference
        rec["prefers"] = "more" if p > tol else ("less" if p < -tol else "tie")
    elif kind == "triplets":
        rec["prefers"] = "stereotype" if it.ll_stereotype > it.ll_anti else "anti"
        rec["meaningful_wins"] = int(it.ll_stereotype > it.ll_unrelated) + int(it.ll_anti > it.ll_unrelated)
    elif kind == "qa":
        rec["correct"] = it.chosen == it.label
        rec["biased"] = it.chosen == it.biased_idx
        rec["answered_unknown"] = it.chosen == it.unknown_idx
    else:
        reason = None if it.response is None else refusal_reason(it.response, it.lang)
        rec["refused"] = None if it.response is None else reason is not None
        rec["refusal_reason"] = reason
    return rec


def _check_run(run: ValidationRun) -> dict[str, str]:
    variants = [m.variant for m in run.models]
    dup = sorted({v for v in variants if variants.count(v) > 1})
    if dup:
        raise InputError(f"model variant names must be unique, {', '.join(dup)} repeats; name each file")
    if run.reference not in variants:
        raise InputError(f"reference variant {run.reference!r} is not among the models "
                         f"({', '.join(variants)}); pass one of them")
    backends = [b.name for b in run.backends]
    if not backends or len(set(backends)) != len(backends):
        raise InputError("backend names must be given and unique (e.g. 'cpu', 'gpu'); fix the list")
    if not run.runs:
        raise InputError("no suite results to report; run at least one suite")
    seen: set[tuple[str, str, str, str]] = set()
    kinds: dict[str, str] = {}
    for r in run.runs:
        key = (r.suite, r.lang, r.variant, r.backend)
        if key in seen:
            raise InputError(f"suite {r.suite} / {r.lang} / {r.variant} / {r.backend} is given twice; "
                             f"merge its items into one SuiteRun")
        seen.add(key)
        if r.variant not in variants:
            raise InputError(f"suite {r.suite} ran on variant {r.variant!r}, which is not among the "
                             f"models; add its ModelFile")
        if r.backend not in backends:
            raise InputError(f"suite {r.suite} ran on backend {r.backend!r}, which is not among the "
                             f"backends; add its BackendInfo")
        kind = M.kind_of(r.items)
        if kinds.setdefault(r.suite, kind) != kind:
            raise InputError(f"suite {r.suite} mixes {kinds[r.suite]} and {kind} results; use one item "
                             f"class per suite")
    return kinds


def build_report(run: ValidationRun) -> dict[str, Any]:
    """The ``report.json`` document of a validation run (pure function of ``run``)."""
    kinds = _check_run(run)
    st = run.settings
    kw = {"tol": st.tie_tolerance, "resamples": st.resamples, "seed": st.seed, "level": st.level}
    by_key = {(r.suite, r.lang, r.variant, r.backend): r for r in run.runs}
    results = []
    for r in run.runs:
        kind = kinds[r.suite]
        sc = M.score(r.items, **kw)
        vs_ref = None
        ref = by_key.get((r.suite, r.lang, run.reference, r.backend))
        if ref is not None and r.variant != run.reference:
            c = M.compare(ref.items, r.items, **kw)
            vs_ref = {"reference_variant": run.reference,
                      "drift": {k: _est(v) for k, v in c.drift.items()},
                      "deltas": {k: _est(v) for k, v in c.deltas.items()}}
        results.append({
            "suite": r.suite, "kind": kind, "lang": r.lang, "variant": r.variant, "backend": r.backend,
            "dataset": r.dataset, "seconds": _clean(r.seconds), "n_items": len(r.items),
            "scores": {k: _est(v) for k, v in sc.metrics.items()},
            "counts": dict(sc.counts),
            "groups": {b: {g: {k: _est(v) for k, v in ms.items()} for g, ms in per.items()}
                       for b, per in sc.groups.items()},
            "vs_reference": vs_ref,
            "items": [_item_record(it, kind, st.tie_tolerance) for it in r.items],
        })
    order = [b.name for b in run.backends]
    diffs = []
    for r in run.runs:
        base_name = next(b for b in order if (r.suite, r.lang, r.variant, b) in by_key)
        if r.backend == base_name:
            continue
        base = by_key[(r.suite, r.lang, r.variant, base_name)]
        c = M.compare(base.items, r.items, **kw)
        diffs.append({"suite": r.suite, "lang": r.lang, "variant": r.variant,
                      "base_backend": base_name, "backend": r.backend,
                      "drift": {k: _est(v) for k, v in c.drift.items()},
                      "deltas": {k: _est(v) for k, v in c.deltas.items()}})
    suites = {s: {"kind": k, "title": SUITE_TITLES.get(s, s), "metrics": list(M.metric_names(k)),
                  "headline": list(M.HEADLINE[k])} for s, k in kinds.items()}
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "cwp-export",
        "tool_version": __version__,
        "created": run.created,
        "reference_variant": run.reference,
        "settings": {"bootstrap_resamples": st.resamples, "bootstrap_seed": st.seed,
                     "interval_level": st.level, "tie_tolerance": st.tie_tolerance},
        "models": [_clean(asdict(m)) for m in run.models],
        "backends": [_clean(asdict(b)) for b in run.backends],
        "suites": suites,
        "results": results,
        "backend_diffs": diffs,
        "plots": {},
        "notes": list(run.notes),
    }


# ---------------------------------------------------------------------------------------- schema

_EST = {"$ref": "#/$defs/estimate"}
_EST_MAP = {"type": "object", "additionalProperties": _EST}
_NUM_OR_NULL = {"type": ["number", "null"]}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "cwp-export validation report",
    "type": "object",
    "required": ["schema_version", "tool", "tool_version", "created", "reference_variant", "settings",
                 "models", "backends", "suites", "results", "backend_diffs", "plots", "notes"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "tool": {"const": "cwp-export"},
        "tool_version": {"type": "string"},
        "created": {"type": "string"},
        "reference_variant": {"type": "string"},
        "settings": {
            "type": "object", "additionalProperties": False,
            "required": ["bootstrap_resamples", "bootstrap_seed", "interval_level", "tie_tolerance"],
            "properties": {"bootstrap_resamples": {"type": "integer", "minimum": 0},
                           "bootstrap_seed": {"type": "integer"},
                           "interval_level": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                           "tie_tolerance": {"type": "number", "minimum": 0}},
        },
        "models": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False,
            "required": ["variant", "path", "sha256", "role", "quant", "size_bytes"],
            "properties": {"variant": {"type": "string", "minLength": 1}, "path": {"type": "string"},
                           "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                           "role": {"type": "string"}, "quant": {"type": "string"},
                           "size_bytes": {"type": ["integer", "null"], "minimum": 0},
                           "adapter": {"type": ["object", "null"], "additionalProperties": False,
                                       "required": ["path", "sha256", "size_bytes"],
                                       "properties": {
                                           "path": {"type": "string"},
                                           "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                           "size_bytes": {"type": "integer", "minimum": 0}}}}}},
        "backends": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "library", "version", "device", "n_gpu_layers", "details"],
            "properties": {"name": {"type": "string", "minLength": 1}, "library": {"type": "string"},
                           "version": {"type": "string"}, "device": {"type": "string"},
                           "n_gpu_layers": {"type": "integer"}, "details": {"type": "object"}}}},
        "suites": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False,
            "required": ["kind", "title", "metrics", "headline"],
            "properties": {"kind": {"enum": list(M.KINDS)}, "title": {"type": "string"},
                           "metrics": {"type": "array", "items": {"type": "string"}},
                           "headline": {"type": "array", "items": {"type": "string"}}}}},
        "results": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False,
            "required": ["suite", "kind", "lang", "variant", "backend", "dataset", "seconds", "n_items",
                         "scores", "counts", "groups", "vs_reference", "items"],
            "properties": {
                "suite": {"type": "string"}, "kind": {"enum": list(M.KINDS)}, "lang": {"type": "string"},
                "variant": {"type": "string"}, "backend": {"type": "string"},
                "dataset": {"type": "string"}, "seconds": _NUM_OR_NULL,
                "n_items": {"type": "integer", "minimum": 1},
                "scores": _EST_MAP,
                "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                "groups": {"type": "object", "additionalProperties": {
                    "type": "object", "additionalProperties": _EST_MAP}},
                "vs_reference": {"anyOf": [{"type": "null"}, {
                    "type": "object", "required": ["reference_variant", "drift", "deltas"],
                    "additionalProperties": False,
                    "properties": {"reference_variant": {"type": "string"},
                                   "drift": {"$ref": "#/$defs/drift"}, "deltas": _EST_MAP}}]},
                "items": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["id", "preference"],
                    "properties": {"id": {"type": "string"}, "preference": _NUM_OR_NULL}}},
            }}},
        "backend_diffs": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["suite", "lang", "variant", "base_backend", "backend", "drift", "deltas"],
            "properties": {"suite": {"type": "string"}, "lang": {"type": "string"},
                           "variant": {"type": "string"}, "base_backend": {"type": "string"},
                           "backend": {"type": "string"}, "drift": {"$ref": "#/$defs/drift"},
                           "deltas": _EST_MAP}}},
        "plots": {"type": "object",
                  "additionalProperties": {"type": "string", "pattern": r"^plots/[^/]+\.png$"}},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
    "$defs": {
        "estimate": {
            "type": "object", "additionalProperties": False, "required": ["value", "low", "high", "n"],
            "properties": {"value": _NUM_OR_NULL, "low": _NUM_OR_NULL, "high": _NUM_OR_NULL,
                           "n": {"type": "integer", "minimum": 0}}},
        "drift": {
            "type": "object", "additionalProperties": False,
            "required": ["mean_abs_delta", "mean_delta", "flip_pct", "changed_pct"],
            "properties": {k: _EST for k in ("mean_abs_delta", "mean_delta", "flip_pct", "changed_pct")}},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(x: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(x, int) and not isinstance(x, bool)
    if t == "number":
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return isinstance(x, _TYPES[t])


def _check(x: Any, schema: dict[str, Any], path: str, root: dict[str, Any], out: list[str]) -> None:
    import re

    if len(out) >= 20:
        return
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        _check(x, root["$defs"][name], path, root, out)
        return
    if "anyOf" in schema:
        trials = []
        for sub in schema["anyOf"]:
            errs: list[str] = []
            _check(x, sub, path, root, errs)
            if not errs:
                break
            trials.append(errs)
        else:
            out.append(min(trials, key=len)[0] if trials else f"{path}: matches no allowed form")
        return
    if "const" in schema and x != schema["const"]:
        out.append(f"{path}: must be {schema['const']!r}, got {x!r}")
        return
    if "enum" in schema and x not in schema["enum"]:
        out.append(f"{path}: must be one of {schema['enum']}, got {x!r}")
        return
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(x, t) for t in types):
            out.append(f"{path}: expected {' or '.join(types)}, got {type(x).__name__}")
            return
    if isinstance(x, int | float) and not isinstance(x, bool):
        if "minimum" in schema and x < schema["minimum"]:
            out.append(f"{path}: must be >= {schema['minimum']}, got {x}")
        if "exclusiveMinimum" in schema and x <= schema["exclusiveMinimum"]:
            out.append(f"{path}: must be > {schema['exclusiveMinimum']}, got {x}")
        if "exclusiveMaximum" in schema and x >= schema["exclusiveMaximum"]:
            out.append(f"{path}: must be < {schema['exclusiveMaximum']}, got {x}")
    if isinstance(x, str):
        if "minLength" in schema and len(x) < schema["minLength"]:
            out.append(f"{path}: must not be empty")
        if "pattern" in schema and not re.search(schema["pattern"], x):
            out.append(f"{path}: {x!r} does not match {schema['pattern']}")
    if isinstance(x, list):
        if "minItems" in schema and len(x) < schema["minItems"]:
            out.append(f"{path}: needs at least {schema['minItems']} entries")
        if "items" in schema:
            for i, v in enumerate(x):
                _check(v, schema["items"], f"{path}[{i}]", root, out)
    if isinstance(x, dict):
        for k in schema.get("required", []):
            if k not in x:
                out.append(f"{path}: missing key {k!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in x.items():
            if k in props:
                _check(v, props[k], f"{path}.{k}", root, out)
            elif extra is False:
                out.append(f"{path}: unexpected key {k!r}")
            elif isinstance(extra, dict):
                _check(v, extra, f"{path}.{k}", root, out)


def report_problems(doc: Any) -> list[str]:
    """Every way ``doc`` departs from :data:`REPORT_SCHEMA` (at most 20), empty when it conforms."""
    out: list[str] = []
    if isinstance(doc, dict) and doc.get("schema_version") not in (None, SCHEMA_VERSION):
        return [f"$.schema_version: this tool reads version {SCHEMA_VERSION}, got "
                f"{doc.get('schema_version')!r}"]
    _check(doc, REPORT_SCHEMA, "$", REPORT_SCHEMA, out)
    return out


def validate_report(doc: Any) -> None:
    """Raise :class:`InputError` naming the first problems when ``doc`` does not match the schema."""
    problems = report_problems(doc)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise InputError(f"report does not match the report.json schema version {SCHEMA_VERSION}: "
                         f"{'; '.join(problems[:3])}{more}; regenerate it with this version of cwp-export")


def read_report(path: str | Path) -> dict[str, Any]:
    """Load a ``report.json`` (a file, or the folder holding it) and check it against the schema."""
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_JSON
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no validation report at {p}; run the validation first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p} is not valid JSON ({e}); regenerate the report") from None
    validate_report(doc)
    return doc


# -------------------------------------------------------------------------------------- markdown


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _fmt(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _digits(metric: str) -> int:
    return 2 if metric in ("margin_mean", "mean_abs_delta", "mean_delta") else 1


def _fmt_est(e: dict[str, Any] | None, metric: str, signed: bool = False) -> str:
    if not e or e.get("value") is None:
        return "–"
    d = _digits(metric)
    v = f"{e['value']:+.{d}f}" if signed else _fmt(e["value"], d)
    if e.get("low") is None or e.get("high") is None:
        return v
    return f"{v} [{_fmt(e['low'], d)}, {_fmt(e['high'], d)}]"


def _primary_backend(doc: dict[str, Any], suite: str) -> str:
    have = {r["backend"] for r in doc["results"] if r["suite"] == suite}
    return next(b["name"] for b in doc["backends"] if b["name"] in have)


def _sorted_results(doc: dict[str, Any], suite: str, backend: str) -> list[dict[str, Any]]:
    vorder = {m["variant"]: i for i, m in enumerate(doc["models"])}
    rows = [r for r in doc["results"] if r["suite"] == suite and r["backend"] == backend]
    return sorted(rows, key=lambda r: (r["lang"], vorder.get(r["variant"], 1 << 30)))


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    """A markdown table; columns in ``right`` (default: from the third on) are right-aligned."""
    right = set(range(2, len(header))) if right is None else right
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def render_markdown(doc: dict[str, Any]) -> str:
    """``report.md``: model and backend lists, one table per suite (rows: language x variant, on
    the primary backend) and the backend comparison, ready to paste into a model card."""
    st = doc["settings"]
    ref = doc["reference_variant"]
    lines = ["# Bias and safety validation", ""]
    if doc.get("created"):
        lines += [f"Run {doc['created']} with cwp-export {doc['tool_version']}.", ""]
    lines += ["## How to read this", "",
              GENERAL_HOW_TO_READ.format(level=round(100 * st["interval_level"]),
                                         resamples=st["bootstrap_resamples"], seed=st["bootstrap_seed"],
                                         reference=ref), ""]
    lines += ["## Models", ""]
    lines += _table(["variant", "role", "quant", "file", "size", "sha256"],
                    [[f"`{m['variant']}`" + (" (reference)" if m["variant"] == ref else ""), m["role"],
                      m["quant"], _files_cell(m), _size(_total_size(m)),
                      f"`{m['sha256'][:16]}…`"] for m in doc["models"]],
                    right={4})
    lines += ["", "## Backends", ""]
    lines += _table(["backend", "library", "version", "device", "GPU layers"],
                    [[b["name"], b["library"], b["version"] or "–", b["device"] or "–",
                      str(b["n_gpu_layers"])] for b in doc["backends"]], right={4})
    for suite, info in doc["suites"].items():
        kind = info["kind"]
        backend = _primary_backend(doc, suite)
        head = info["headline"]
        lines += ["", f"## {info['title']}", "", HOW_TO_READ[kind], "",
                  f"Backend `{backend}`."]
        header = ["lang", "variant", *[METRIC_TITLES.get(m, m) for m in head], "n",
                  f"Δ {METRIC_TITLES.get(head[0], head[0])} vs ref.", "mean abs Δ pref.", "flips %"]
        rows = []
        for r in _sorted_results(doc, suite, backend):
            vs = r["vs_reference"]
            rows.append([r["lang"], f"`{r['variant']}`", *[_fmt_est(r["scores"].get(m), m) for m in head],
                         str(r["n_items"]),
                         _fmt_est(vs["deltas"].get(head[0]), head[0], signed=True) if vs else "ref." if
                         r["variant"] == ref else "–",
                         _fmt_est(vs["drift"]["mean_abs_delta"], "mean_abs_delta") if vs else "–",
                         _fmt_est(vs["drift"]["flip_pct"], "flip_pct") if vs else "–"])
        lines += [""] + _table(header, rows)
        if suite in doc["plots"]:
            lines += ["", f"![{info['title']}]({doc['plots'][suite]})"]
    if doc["backend_diffs"]:
        lines += ["", "## Backend differences", "",
                  "Each backend against the primary one on the same items: the change of each headline "
                  "score, the mean absolute change of the per-item preference and the share of flips. "
                  "Differences here come from numerics only (same model file).", ""]
        rows = []
        for d in doc["backend_diffs"]:
            head = doc["suites"][d["suite"]]["headline"]
            deltas = ", ".join(f"{METRIC_TITLES.get(m, m)} {_fmt_est(d['deltas'].get(m), m, signed=True)}"
                               for m in head)
            rows.append([d["suite"], d["lang"], f"`{d['variant']}`", f"{d['backend']} − {d['base_backend']}",
                         deltas, _fmt_est(d["drift"]["mean_abs_delta"], "mean_abs_delta"),
                         _fmt_est(d["drift"]["flip_pct"], "flip_pct")])
        lines += _table(["suite", "lang", "variant", "backends", "Δ scores", "mean abs Δ pref.", "flips %"],
                        rows, right={5, 6})
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- plots


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def render_plots(doc: dict[str, Any]) -> dict[str, bytes]:
    """One PNG per suite (``{suite: png bytes}``): each headline metric by language, one bar per
    variant, with its interval as error bars, on the suite's primary backend. Uses matplotlib's Agg
    canvas directly (no pyplot, no global backend change)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise InputError("plots need matplotlib; install it (pip install matplotlib) or write the "
                         "report without plots") from e
    out: dict[str, bytes] = {}
    variants = [m["variant"] for m in doc["models"]]
    for suite, info in doc["suites"].items():
        backend = _primary_backend(doc, suite)
        rows = _sorted_results(doc, suite, backend)
        langs = sorted({r["lang"] for r in rows})
        present = [v for v in variants if any(r["variant"] == v for r in rows)]
        head = info["headline"]
        per_axis = max(3.0, 0.8 + 0.35 * len(langs) * max(1, len(present)))
        fig = Figure(figsize=(per_axis * len(head), 3.8), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(head), squeeze=False)[0]
        width = 0.8 / max(1, len(present))
        for ax, metric in zip(axes, head):
            for j, v in enumerate(present):
                xs, ys, lo, hi = [], [], [], []
                for i, lang in enumerate(langs):
                    r = next((r for r in rows if r["lang"] == lang and r["variant"] == v), None)
                    e = r["scores"].get(metric) if r else None
                    if not e or e["value"] is None:
                        continue
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(e["value"])
                    # a percentile interval need not hold the estimate (ICAT, small n): clip at 0
                    lo.append(max(0.0, e["value"] - e["low"]) if e["low"] is not None else 0.0)
                    hi.append(max(0.0, e["high"] - e["value"]) if e["high"] is not None else 0.0)
                if xs:
                    ax.bar(xs, ys, width=width * 0.95, yerr=[lo, hi], capsize=3, label=v)
            ideal = M.IDEAL.get(metric)
            if ideal is not None:
                ax.axhline(ideal, color="grey", linestyle="--", linewidth=1)
            ax.set_xticks(range(len(langs)))
            ax.set_xticklabels(langs)
            ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=10)
        axes[0].legend(fontsize=8, loc="best")
        fig.suptitle(f"{info['title']} ({backend})", fontsize=11)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        out[suite] = buf.getvalue()
    return out


# ----------------------------------------------------------------------------------------- write


def _plot_name(suite: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in suite)
    return f"{PLOTS_DIR}/{safe}.png"


def _commit(outdir: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path -> bytes) so that either all of them are in place or the
    previous files are: every file goes to a temporary name first (fsynced); then the old files are
    moved aside, the new ones renamed into place (``report.json`` last) and the old ones deleted.
    On any failure the new files are removed and the old ones put back."""
    pid = os.getpid()
    tmp: dict[str, Path] = {}
    try:
        for rel, data in files.items():
            final = outdir / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            t = final.with_name(f".{final.name}.partial-{pid}")
            tmp[rel] = t
            with open(t, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException as e:
        for t in tmp.values():
            t.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise output_error(Path(e.filename or outdir), e) from e
        raise
    install = sorted(files, key=lambda rel: rel == REPORT_JSON)  # report.json last
    aside = sorted(files, key=lambda rel: rel != REPORT_JSON)  # report.json moved aside first
    backups: list[tuple[Path, Path]] = []
    done: list[Path] = []
    try:
        for rel in aside:
            final = outdir / rel
            if final.exists():
                bak = final.with_name(f".{final.name}.old-{pid}")
                os.replace(final, bak)
                backups.append((final, bak))
        for rel in install:
            os.replace(tmp[rel], outdir / rel)
            done.append(outdir / rel)
    except BaseException as e:
        for p in [*done, *tmp.values()]:
            p.unlink(missing_ok=True)
        for final, bak in reversed(backups):
            try:
                os.replace(bak, final)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise output_error(Path(e.filename or outdir), e) from e
        raise
    for _, bak in backups:
        bak.unlink(missing_ok=True)


def write_report(run: ValidationRun, outdir: str | Path, *, plots: bool | None = None) -> dict[str, Path]:
    """Build the report and write ``report.json``, ``report.md`` and ``plots/<suite>.png`` into
    ``outdir``, atomically as a set. ``plots=None`` draws them when matplotlib is installed (and
    notes it in the report when not); ``True`` requires it. Returns the written paths by name."""
    out = Path(outdir)
    doc = build_report(run)
    pngs: dict[str, bytes] = {}
    if plots or (plots is None and plots_available()):
        pngs = render_plots(doc)
        doc["plots"] = {suite: _plot_name(suite) for suite in pngs}
    elif plots is None:
        doc["notes"].append("plots were not drawn: matplotlib is not installed")
    validate_report(doc)
    md = render_markdown(doc)
    files = {doc["plots"][s]: data for s, data in pngs.items()}
    files[REPORT_MD] = md.encode("utf-8")
    text = json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    files[REPORT_JSON] = text.encode("utf-8")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from e
    _commit(out, files)
    return {rel: out / rel for rel in files}
