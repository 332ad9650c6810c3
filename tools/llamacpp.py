"""Shared helper: obtain llama.cpp's own HF→GGUF converter and run it.

llama.cpp's ``convert_hf_to_gguf.py`` is the reference our exporter is compared against. It is not
installed with llama-cpp-python's wheel, but the *sdist* of the installed llama-cpp-python version
vendors the matching llama.cpp tree. :func:`llamacpp_source_dir` fetches that sdist with pip (the
ordinary client, PyPI only), extracts just the converter's files into a cache folder and reuses that
folder on later calls. :func:`run_llamacpp_convert` runs the converter in a subprocess, with the
vendored ``gguf-py`` first on ``PYTHONPATH`` (the converter may need a newer ``gguf`` than the one
installed).

Nothing of llama.cpp is copied into this project: the converter is downloaded and executed as is.

Usable as a module (``sys.path`` insert of ``tools/``) or as a script::

    python tools/llamacpp.py source-dir            # print (and populate) the cache folder
    python tools/llamacpp.py convert FOLDER --outtype f16 --outfile X.gguf

Environment:

* ``CWP_LLAMACPP_SRC``: use this llama.cpp tree (holding ``convert_hf_to_gguf.py``) instead of the
  cache; nothing is downloaded.
* ``CWP_EXPORT_CACHE``: cache root (default ``~/.cache/cwp-export``); the tree is extracted to
  ``<root>/llama.cpp-src-<version>``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cwp_export.cache import build_once, cache_dir

CONVERTER = "convert_hf_to_gguf.py"
# What the converter needs from the vendored llama.cpp tree (paths relative to it).
_NEEDED = (CONVERTER, "conversion/", "gguf-py/", "models/templates/", "LICENSE")
_VENDOR = "vendor/llama.cpp/"


class LlamaCppUnavailable(RuntimeError):
    """llama.cpp's converter cannot be obtained here (no package, no network, no disk)."""


class LlamaCppConvertError(RuntimeError):
    """llama.cpp's converter ran and failed; the message holds the tail of its output."""


def llamacpp_version() -> str:
    """Version of the installed llama-cpp-python, whose sdist vendors the matching llama.cpp."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError as e:
        raise LlamaCppUnavailable("llama-cpp-python is not installed, so there is no version "
                                  "whose llama.cpp converter to fetch; pip install "
                                  "llama-cpp-python") from e


def _check_tree(path: Path) -> Path:
    for rel in (CONVERTER, "conversion", "gguf-py/gguf"):
        if not (path / rel).exists():
            raise LlamaCppUnavailable(f"{path} is not a llama.cpp tree with its converter "
                                      f"({rel} is missing)")
    return path


def _download_sdist(version: str, dest: Path) -> Path:
    """``pip download`` the llama-cpp-python sdist of ``version`` into ``dest``; return the file."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(dest), "--quiet"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LlamaCppUnavailable(f"cannot run pip to download the llama-cpp-python {version} "
                                  f"sdist: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise LlamaCppUnavailable(f"pip could not download the llama-cpp-python {version} sdist "
                                  f"(needs PyPI access): {' | '.join(tail)}")
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    found += sorted(dest.glob("llama-cpp-python-*.tar.gz"))
    if not found:
        raise LlamaCppUnavailable(f"pip download left no llama-cpp-python sdist in {dest}")
    return found[0]


def _extract_converter(sdist: Path, dest: Path) -> None:
    """Extract the converter's files from the sdist's ``vendor/llama.cpp`` into ``dest``."""
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            top, _, rest = member.name.partition("/")
            if not rest.startswith(_VENDOR) or not (member.isfile() or member.isdir()):
                continue
            rel = rest[len(_VENDOR):]
            if not rel or not any(rel == n or rel.startswith(n) for n in _NEEDED):
                continue
            member.name = rel
            tar.extract(member, dest, filter="data")


def llamacpp_source_dir(version: str | None = None) -> Path:
    """Folder holding llama.cpp's ``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/``.

    ``$CWP_LLAMACPP_SRC`` wins if set. Otherwise the sdist of ``version`` (default: the installed
    llama-cpp-python) is downloaded with pip and extracted once into
    ``cache_dir()/llama.cpp-src-<version>``; a ``.complete`` marker written last, and an atomic
    rename into place, make concurrent callers safe. Raises :class:`LlamaCppUnavailable` with the
    reason when that is impossible (offline, no llama-cpp-python, unwritable cache).
    """
    env = os.environ.get("CWP_LLAMACPP_SRC")
    if env:
        return _check_tree(Path(env).expanduser())
    version = version or llamacpp_version()
    final = cache_dir() / f"llama.cpp-src-{version}"

    def build(tree: Path) -> str:
        sdist = _download_sdist(version, tree.parent / "download")
        try:
            _extract_converter(sdist, tree)
        except (OSError, tarfile.TarError) as e:
            raise LlamaCppUnavailable(f"cannot extract {sdist.name}: {e}") from e
        _check_tree(tree)
        return f"llama-cpp-python {version}\n"

    try:
        return build_once(final, build)
    except OSError as e:
        raise LlamaCppUnavailable(f"cannot write the cache folder {final.parent}: "
                                  f"{e.strerror or e}; set CWP_EXPORT_CACHE") from e


# Runs inside the converter's process when a pre-tokenizer fallback is requested. It imports the
# converter's own ``conversion`` package, wraps its BPE pre-tokenizer lookup so that an unknown
# tokenizer (tiny random test tokenizers have no entry in llama.cpp's hash table) gets the given
# name instead of an error, and then runs the unmodified script as ``__main__``.
_FALLBACK_RUNNER = r"""
import logging, runpy, sys
src, fallback = sys.argv[1], sys.argv[2]
sys.path[:0] = [src + "/gguf-py", src]
import conversion.base as base
original = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        logging.getLogger("cwp-compare").warning(
            "pre-tokenizer not recognized by llama.cpp; using %r (forced by the comparison tool)",
            fallback)
        return fallback
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def converter_command(folder: str | os.PathLike, outtype: str, outfile: str | os.PathLike,
                      pre_fallback: str | None = None,
                      src: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run llama.cpp's converter on ``folder``."""
    src = src or llamacpp_source_dir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(src / "gguf-py")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("NO_LOCAL_GGUF", None)
    args = [str(folder), "--outtype", outtype.lower(), "--outfile", str(outfile)]
    if pre_fallback is None:
        cmd = [sys.executable, str(src / CONVERTER), *args]
    else:
        cmd = [sys.executable, "-c", _FALLBACK_RUNNER, str(src), pre_fallback, *args]
    return cmd, env


def run_llamacpp_convert(folder: str | os.PathLike, outtype: str, outfile: str | os.PathLike,
                         pre_fallback: str | None = None, timeout: float | None = 3600) -> Path:
    """Convert ``folder`` with llama.cpp's ``convert_hf_to_gguf.py`` to ``outfile``; return it.

    ``outtype`` is one of the converter's ``--outtype`` values (f32, f16, bf16, q8_0). With
    ``pre_fallback``, a BPE pre-tokenizer llama.cpp does not recognize is named ``pre_fallback``
    instead of aborting the conversion (needed for synthetic tokenizers); tensors are unaffected.
    Raises :class:`LlamaCppConvertError` with the converter's last output lines if it fails.
    """
    outfile = Path(outfile)
    cmd, env = converter_command(folder, outtype, outfile, pre_fallback)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not outfile.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise LlamaCppConvertError(f"llama.cpp's converter failed on {folder} "
                                   f"(exit {proc.returncode}):\n{tail}")
    return outfile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("source-dir",
                   help="print the llama.cpp source folder (downloading it if needed)")
    c = sub.add_parser("convert", help="run llama.cpp's converter")
    c.add_argument("folder")
    c.add_argument("--outtype", default="f16")
    c.add_argument("--outfile", required=True)
    c.add_argument("--pre-fallback", default=None)
    a = p.parse_args(argv)
    try:
        if a.cmd == "source-dir":
            print(llamacpp_source_dir())
        else:
            print(run_llamacpp_convert(a.folder, a.outtype, a.outfile, a.pre_fallback))
    except (LlamaCppUnavailable, LlamaCppConvertError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
