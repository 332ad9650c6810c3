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

    @property
    def model_path(self) -> Path:
        return self.outdir / self.files[0]["path"]


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


def export(model: str | os.PathLike, quant: str = "F16", outdir: str | os.PathLike = "cwp-out",
           protect: str | float = 0, progress: bool = True,
           overrides: dict[str, str] | None = None, imatrix: str | os.PathLike | None = None,
           argv: list[str] | None = None) -> ExportResult:
    """Convert ``model`` (folder, hub id or ``builtin:smollm2``) and write GGUF + manifest.

    ``quant``: F32, F16, BF16 or a llama.cpp preset (Q8_0 ... Q2_K); ``overrides``: GGUF tensor
    name → type; ``imatrix``: a llama.cpp importance-matrix file.
    """
    fraction = parse_fraction(protect)
    if fraction != 0:
        raise InputError("critical weight protection is not available yet in this version; use "
                         "--protect 0 for a plain export")
    model = resolve_model(model, progress)
    conv = convert.plan(model, quant, overrides=overrides, imatrix=imatrix)
    out = prepare_outdir(outdir)
    path = convert.output_path(out, conv)
    size, sha = convert.write(conv, path, progress=progress)
    files = [{"path": path.name, "role": "model", "quant": conv.outtype, "size": size,
              "sha256": sha}]
    source = {"name": conv.source.name, "path": str(conv.source.path),
              "architecture": next(a for a in conv.source.config["architectures"]
                                  if a in conv.adapter.hf_architectures),
              "fingerprint": conv.source.fingerprint(), "n_params": conv.n_params}
    options = {"quant": conv.outtype, "protect": fraction, "overrides": dict(overrides or {}),
               "imatrix": str(imatrix) if imatrix else None,
               "tensor_types": {t.spec.name: t.qtype.name for t in conv.tensors}}
    manifest = write_manifest(out, files, source, options, argv if argv is not None else sys.argv)
    return ExportResult(out, files, manifest)


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
