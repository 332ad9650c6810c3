"""cwp-export's cache folder and a safe way to build things into it once.

``$CWP_EXPORT_CACHE`` or ``~/.cache/cwp-export`` holds what is expensive to make and reusable:
built-in model checkpoints, the llama.cpp converter used by the comparison tools. Each entry is a
folder built in a temporary sibling, finished with a ``.complete`` marker written last, and renamed
into place, so the final name only ever holds a complete entry, and concurrent builders are safe.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Callable

MARKER = ".complete"


def cache_dir() -> Path:
    env = os.environ.get("CWP_EXPORT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cwp-export"


def marker_text(folder: Path) -> str | None:
    try:
        return (folder / MARKER).read_text()
    except OSError:
        return None


def build_once(final: Path, build: Callable[[Path], str],
               is_complete: Callable[[Path], bool] = lambda p: marker_text(p) is not None) -> Path:
    """Return ``final``, building it first unless ``is_complete(final)``.

    ``build(folder)`` fills a fresh ``folder`` and returns the marker's text. Raises ``OSError``
    when the cache cannot be written (callers turn that into their own one-line error).
    """
    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        built = work / "out"
        built.mkdir()
        (built / MARKER).write_text(build(built))  # written last: the folder is complete
        for _ in range(3):
            try:
                os.rename(built, final)  # atomic; fails if ``final`` exists and is not empty
                return final
            except OSError:
                if is_complete(final):
                    return final  # a concurrent build finished first: keep theirs
                if not final.exists():
                    raise
                # an incomplete or outdated folder under the final name: move it aside
                # (atomic), then delete it, so no reader ever sees a mix of both
                stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale-", dir=final.parent))
                with contextlib.suppress(FileNotFoundError):
                    os.rename(final, stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
        raise OSError(f"cannot move the built folder into {final}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
