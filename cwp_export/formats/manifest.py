"""``manifest.json``: a machine-readable list of what an export produced.

Holds each produced file (relative path, role, size, sha256), the source model, the command line
and the versions of the tools involved. It carries no timestamps, so the same export gives the same
manifest. Written atomically like every other output.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .gguf_writer import output_error

SCHEMA_VERSION = 1
_PACKAGES = ("cwp-export", "torch", "gguf", "numpy", "safetensors", "transformers", "llama-cpp-python")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """Write a small file under a temporary name in its folder, fsync, then rename into place;
    on failure nothing is left behind and the error names the path and the fix."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            raise output_error(path, e) from e
        raise


def write_atomic_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def write_manifest(outdir: Path, files: list[dict[str, Any]], source: dict[str, Any],
                   options: dict[str, Any], argv: list[str] | None = None) -> Path:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "tool": "cwp-export",
        "command": list(sys.argv if argv is None else argv),
        "options": options,
        "source": source,
        "files": files,
        "versions": versions(),
    }
    path = outdir / "manifest.json"
    write_atomic_text(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path
