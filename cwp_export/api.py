"""The Python API: what ``cwp-export MODEL ...`` does, callable from code."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import convert
from .builtin import builtin_model_path, is_builtin
from .errors import InputError, OutputError
from .formats.manifest import write_manifest
from .options import parse_fraction


@dataclass
class ExportResult:
    outdir: Path
    files: list[dict[str, Any]] = field(default_factory=list)
    manifest: Path | None = None
    protection: Any = None  # protect.export.ProtectedResult of a protected export
    quant: str | None = None  # the type or preset written (e.g. Q4_K_M)

    @property
    def model_path(self) -> Path:
        return self.outdir / self.files[0]["path"]

    @property
    def adapter_path(self) -> Path | None:
        for f in self.files:
            if f.get("role") == "adapter":
                return self.outdir / f["path"]
        return None


def resolve_model(model: str | os.PathLike, progress: bool = True) -> str | os.PathLike:
    """Turn ``builtin:NAME`` into the path of the materialized built-in checkpoint."""
    if isinstance(model, str) and is_builtin(model):
        return builtin_model_path(model.split(":", 1)[1], progress=progress)
    return model


def prepare_outdir(outdir: str | os.PathLike) -> Path:
    """Create the output directory and prove it is writable before any heavy work starts."""
    out = Path(outdir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".cwp-write-check-"):
            pass
    except OSError as e:
        raise OutputError(f"output directory {out} is not writable ({e.strerror or e}); choose "
                          f"another with -o") from e
    return out


def export(model: str | os.PathLike, quant: str | None = None,
           outdir: str | os.PathLike = "cwp-out", protect: str | float = 0,
           progress: bool = True, overrides: dict[str, str] | None = None,
           imatrix: str | os.PathLike | None = None, argv: list[str] | None = None, *,
           scores: str | os.PathLike | None = None, max_size_increase: str | float = "5%",
           adapter_type: str = "Q8_0", critical_weight: float | None = None,
           dry_run: bool = False, ideal: bool = False, weighted_rounding: bool = False,
           score_options: dict[str, Any] | None = None, echo=None) -> ExportResult:
    """Convert ``model`` (folder, hub id or ``builtin:smollm2``) and write GGUF + manifest.

    ``quant``: F32, F16, BF16 or a llama.cpp preset (Q8_0 ... Q2_K); default Q4_K_M when
    protecting, F16 otherwise. ``protect``: share of weights to protect (e.g. "1%", the CLI's
    default; the default here, 0, is a plain conversion). ``overrides``: GGUF tensor name →
    type; ``imatrix``: a llama.cpp importance-matrix file (plain export). Protection (see
    :mod:`.protect.export`): ``scores`` reuses a scores file;
    ``max_size_increase`` bounds model + adapter over the plain preset; ``adapter_type`` stores
    the adapter's A (Q8_0, F16, F32); ``dry_run`` plans and writes nothing; ``ideal`` writes the
    unstructured in-memory protection as an F32 model instead; ``weighted_rounding=True`` weights
    the rounding of the scored tensors by column activation and criticality (default: the preset's
    own rounding; see README, Limitations); ``score_options`` go to the scorer.
    """
    fraction = parse_fraction(protect)
    inc = parse_fraction(max_size_increase, "--max-size-increase", upper=10.0)
    if quant is None:
        quant = "Q4_K_M" if fraction > 0 else "F16"
    if fraction == 0 and (scores or dry_run or ideal):
        raise InputError("--scores, --dry-run and --ideal belong to a protected export; give "
                         "--protect above 0 (e.g. 1%)")
    if fraction > 0 and imatrix:
        raise InputError("--imatrix is for a plain export (--protect 0); a protected export "
                         "takes its column importance from the calibration activations")
    model = resolve_model(model, progress)
    conv = convert.plan(model, quant, overrides=overrides, imatrix=imatrix)
    out = Path(outdir).expanduser() if dry_run else prepare_outdir(outdir)
    source = {"name": conv.source.name, "path": str(conv.source.path),
              "architecture": next(a for a in conv.source.config["architectures"]
                                  if a in conv.adapter.hf_architectures),
              "fingerprint": conv.source.fingerprint(), "n_params": conv.n_params}
    options: dict[str, Any] = {"quant": conv.outtype, "protect": fraction,
                               "overrides": dict(overrides or {}),
                               "imatrix": str(imatrix) if imatrix else None}
    if fraction > 0:
        from .protect.export import CRITICAL_WEIGHT, protected_export

        cw = CRITICAL_WEIGHT if critical_weight is None else float(critical_weight)
        res = protected_export(conv, out, fraction, scores_path=scores, max_size_increase=inc,
                               adapter_a_type=adapter_type.upper(), critical_weight=cw,
                               dry_run=dry_run, ideal=ideal, progress=progress,
                               score_options=score_options, weighted_rounding=weighted_rounding,
                               echo=echo)
        result = ExportResult(out, res.files, protection=res, quant=conv.outtype)
        if dry_run:
            return result
        options.update({"max_size_increase": inc, "scores": str(scores) if scores else None,
                        "adapter_type": adapter_type.upper(), "critical_weight": cw,
                        "ideal": ideal, "weighted_rounding": weighted_rounding,
                        "score_options": _jsonable(score_options or {}),
                        "tensor_types": dict(sorted(res.plan.types.items())),
                        "plan": res.plan_path.name if res.plan_path else None})
        for t in conv.tensors:
            options["tensor_types"].setdefault(t.spec.name, t.qtype.name)
        result.manifest = write_manifest(out, res.files, source, options,
                                         argv if argv is not None else sys.argv)
        return result
    path = convert.output_path(out, conv)
    size, sha = convert.write(conv, path, progress=progress)
    files = [{"path": path.name, "role": "model", "quant": conv.outtype, "size": size,
              "sha256": sha}]
    options["tensor_types"] = {t.spec.name: t.qtype.name for t in conv.tensors}
    manifest = write_manifest(out, files, source, options, argv if argv is not None else sys.argv)
    return ExportResult(out, files, manifest, quant=conv.outtype)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def score(model: str | os.PathLike, output: str | os.PathLike = "scores.safetensors", *,
          protect: str | float = "1%", progress: bool = True, **options: Any):
    """Score ``model`` and write the scores file (see :func:`.score.pipeline.score_model` for
    ``options``: scorer, beta, languages, calib, safety_target, max_per_language, batch_size,
    seed, layers, layers_per_pass, device, chat_template). Returns the :class:`ScoreResult`
    (None on ranks other than 0 of a torchrun)."""
    from .score.pipeline import score_model

    fraction = parse_fraction(protect)
    out = Path(output).expanduser()
    prepare_outdir(out.parent if str(out.parent) else ".")
    result = score_model(resolve_model(model, progress), protect=fraction, progress=progress,
                         **options)
    if result is not None:
        result.save(out)
    return result


@dataclass
class EvalResult:
    """What :func:`evaluate` wrote: the report files by name and the report document."""

    outdir: Path
    paths: dict[str, Path]
    report: dict[str, Any]


def evaluate(models: dict[str, str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike | None]],
             reference: str | None = None, suites: list[str] | str | None = None,
             languages: list[str] | str | None = None, data_root: str | os.PathLike | None = None,
             data: dict[str, str | os.PathLike] | None = None, limit: int | None = None,
             backend: str | list[str] = "both", threads: int | None = None,
             outdir: str | os.PathLike = "cwp-eval", *, n_ctx: int = 2048, max_tokens: int = 64,
             seed: int = 0, resamples: int = 1000, progress: bool = True, echo=None) -> EvalResult:
    """Validate GGUF models on the bias and safety suites and write ``report.json``, ``report.md``
    and plots into ``outdir`` (what ``cwp-export eval`` does).

    ``models``: name → GGUF path, or (GGUF path, LoRA adapter path or None); ``reference`` (default:
    the first) is the model every other one is compared with item by item. ``suites``: names (list
    or comma-separated) from :func:`cwp_export.validate.suites.names`, default all; ``languages``:
    default each suite's own. ``data_root``: folder of the real benchmark files (the shared data
    layout) for every suite that has a dataset; ``data``: suite → file, folder or ``hf:`` id, which
    overrides it; suites without either run on the built-in probes. ``limit``: items per suite and
    language (seeded subsample). ``backend``: ``cpu``, ``gpu`` or ``both`` (the GPU runs only with a
    GPU build of llama-cpp-python; the report notes when there is none).
    """
    from .options import parse_languages
    from .validate import suites as S
    from .validate.report import read_report
    from .validate.run import validate

    variants: dict[str, tuple[str | os.PathLike, str | os.PathLike | None]] = {}
    for name, spec in models.items():
        variants[name] = tuple(spec) if isinstance(spec, tuple | list) else (spec, None)  # type: ignore[assignment]
        if len(variants[name]) != 2:
            raise InputError(f"model {name!r}: give a path or a (path, lora) pair")
    if isinstance(suites, str):
        suites = [s.strip() for s in suites.split(",") if s.strip()] or None
    if isinstance(languages, str):
        languages = parse_languages(languages)
    chosen = [S.get(s).name for s in suites] if suites is not None else S.names()
    sources: dict[str, Any] = {}
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise InputError(f"data root {root} is not a folder; point --data-root at the folder that "
                             f"holds the benchmark folders (crows_pairs/, bbq/, ...)")
        sources = {s: root for s in chosen if S.get(s).dataset is not None}
    for key, value in (data or {}).items():
        suite = S.get(key).name
        if suite not in chosen:
            raise InputError(f"data is given for the {suite} suite, which is not among the chosen "
                             f"suites ({', '.join(chosen)}); add it to the suites or drop its data")
        sources[suite] = value
    out = prepare_outdir(outdir)
    paths = validate(variants, reference, chosen, languages, sources, limit=limit, backends=backend,
                     n_threads=threads, n_ctx=n_ctx, max_tokens=max_tokens, seed=seed, outdir=out,
                     progress=progress, resamples=resamples, echo=echo)
    return EvalResult(out, paths, read_report(paths["report.json"]))


def validate_export(model: str | os.PathLike, result: ExportResult, *,
                    suites: list[str] | str | None = None, languages: list[str] | str | None = None,
                    data_root: str | os.PathLike | None = None, limit: int | None = None,
                    backend: str | list[str] = "both", threads: int | None = None,
                    progress: bool = True, echo=None, **eval_options: Any) -> EvalResult:
    """What ``cwp-export MODEL --validate`` does after the export: write the unquantized reference
    (F16) and the plain preset of the same type into ``OUTDIR/validation/{reference,plain}/``, then
    run the bias and safety suites on the reference, the plain preset and the export (model +
    outlier adapter), side by side, into ``OUTDIR/validation/`` (``report.json``, ``report.md``,
    plots). A plain export is compared with the reference only. ``eval_options`` go to
    :func:`evaluate`."""
    model = resolve_model(model, progress)
    root = result.outdir / "validation"
    say = echo or (lambda _msg: None)
    say(f"validation: writing the F16 reference into {root / 'reference'}")
    reference = export(model, quant="F16", outdir=root / "reference", progress=progress, argv=[])
    models: dict[str, Any] = {"reference-F16": reference.model_path}
    quant = result.quant
    if result.protection is not None:
        say(f"validation: writing the plain {quant} into {root / 'plain'}")
        plain = export(model, quant=quant, outdir=root / "plain", progress=progress, argv=[])
        models[f"plain-{quant}"] = plain.model_path
        models[f"cwp-{quant}"] = (result.model_path, result.adapter_path)
    elif quant != "F16":
        models[quant] = result.model_path
    return evaluate(models, "reference-F16", suites, languages, data_root, limit=limit,
                    backend=backend, threads=threads, outdir=root, progress=progress, echo=echo,
                    **eval_options)
