"""Build llama.cpp's command-line tools (llama-quantize, llama-imatrix, llama-perplexity) from the
llama-cpp-python sdist of the installed version, into ``<cache>/llama.cpp-bin-<version>/``.

    python tools/build_llamacpp_tools.py [--targets llama-quantize llama-imatrix llama-perplexity]

They are the baselines of the benchmarks and of a few slow tests (which skip with a clear reason
when the binaries are absent). About 10 minutes on 2 cores, once; nothing of llama.cpp is copied
into the project. Needs cmake and a C++ compiler (ninja if present).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamacpp import _download_sdist, llamacpp_version

from cwp_export.cache import build_once, cache_dir

TARGETS = ("llama-quantize", "llama-imatrix", "llama-perplexity")


def build_tools(targets: tuple[str, ...] = TARGETS) -> Path:
    version = llamacpp_version()
    final = cache_dir() / f"llama.cpp-bin-{version}"
    missing = [t for t in targets if not (final / t).is_file()]
    if not missing:
        return final
    # the folder is rebuilt whole: keep the tools already there
    targets = tuple(dict.fromkeys([*targets, *(t for t in TARGETS if (final / t).is_file())]))

    def build(out: Path) -> str:
        work = out.parent
        sdist = _download_sdist(version, work / "download")
        with tarfile.open(sdist, "r:gz") as tar:
            tar.extractall(work / "src", filter="data")
        src = next((work / "src").glob("*/vendor/llama.cpp"))
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(["cmake", "-S", str(src), "-B", str(work / "build"), *gen,
                        "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TOOLS=ON",
                        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                        "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF"],
                       check=True)
        subprocess.run(["cmake", "--build", str(work / "build"), "-j", "2", "--target", *targets],
                       check=True)
        for f in (work / "build" / "bin").iterdir():
            if f.name in targets or ".so" in f.name:
                shutil.copy2(f, out / f.name, follow_symlinks=True)
        return f"llama-cpp-python {version}: {' '.join(targets)}\n"

    if final.exists():  # an older set of tools: rebuild the folder with every target
        shutil.rmtree(final)
    return build_once(final, build)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    args = ap.parse_args()
    print(build_tools(tuple(args.targets)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
