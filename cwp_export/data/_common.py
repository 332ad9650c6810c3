"""Helpers shared by the loaders: finding files, reading them with their quirks, column checks,
the holdout rule, and the small record type each format registers."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

Item = dict[str, Any]

#: The shared data README's holdout rule: an index whose value mod 10 is in this set is withheld.
HOLDOUT_MOD = frozenset({0, 3, 7})


@dataclass(frozen=True)
class Format:
    """One loadable benchmark format.

    ``read_path(path, want)`` reads a file or folder and returns ``(items, languages present)``;
    it may skip files of languages not in ``want`` (None = all) but still reports them as present.
    ``read_hf(rows, config, where)`` normalises the rows of a Hugging Face dataset.
    """

    name: str
    languages: tuple[str, ...]
    read_path: Callable[[Path, frozenset[str] | None], tuple[list[Item], set[str]]]
    read_hf: Callable[[list[Item], str | None, str], list[Item]]
    hint: str  # where the files are in the shared layout, for error messages


def is_holdout(index: int) -> bool:
    return index % 10 in HOLDOUT_MOD


def kept_count(upstream_n: int) -> int:
    """How many of ``upstream_n`` consecutive indices (from 0) the holdout rule keeps."""
    return sum(1 for i in range(upstream_n) if not is_holdout(i))


def row_holdout(n_rows: int, upstream_n: int) -> list[bool]:
    """Holdout flag per row where the README rule is "0-based row index mod 10 in {0, 3, 7}".

    A copy with exactly as many rows as the rule keeps of the upstream file is the shared
    calibration part (its held-out rows are already gone): every row is calibration. Any other
    copy (the full upstream file, or a user's own file) gets the rule on its own row order.
    """
    if n_rows != upstream_n and n_rows == kept_count(upstream_n):
        return [False] * n_rows
    return [is_holdout(i) for i in range(n_rows)]


def upstream_index(k: int) -> int:
    """Upstream index of the k-th kept unit of a copy from which the holdout rule removed units."""
    kept = [i for i in range(10) if i not in HOLDOUT_MOD]
    return 10 * (k // len(kept)) + kept[k % len(kept)]


def source_missing(source: Path, fmt_name: str, hint: str) -> InputError:
    return InputError(f"{source} does not exist; point the {fmt_name} loader at its file or folder "
                      f"(in the shared layout: {hint})")


def find_files(source: Path, fmt_name: str, hint: str, subdirs: Sequence[str],
               patterns: Sequence[str]) -> list[Path]:
    """The data files of a format under ``source``: the file itself, the files of a dataset
    folder, or those of its subfolder(s) when ``source`` is the shared data root."""
    if not source.exists():
        raise source_missing(source, fmt_name, hint)
    if source.is_file():
        return [source]
    dirs = [source / d for d in subdirs if (source / d).is_dir()] or [source]
    files = sorted({f for d in dirs for p in patterns for f in d.glob(p) if f.is_file()})
    if not files:
        raise InputError(f"no {fmt_name} files ({', '.join(patterns)}) in {source}; "
                         f"point at the folder that holds them (in the shared layout: {hint})")
    return files


def read_text(path: Path) -> str:
    """A whole text file as UTF-8, without a BOM if it has one."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                         f"re-save it as UTF-8") from None
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror}); check the path and its permissions") from None


def text_lines(path: Path) -> list[str]:
    """Lines of a text file with LF or CRLF endings (no split on other Unicode line breaks)."""
    text = read_text(path)
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_csv(path: Path, header: bool = True) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV file; BOM-tolerant, fields may hold embedded newlines."""
    import io

    rows = list(csv.reader(io.StringIO(read_text(path), newline="")))
    if not header:
        return [], rows
    if not rows:
        raise InputError(f"{path} is empty; expected a CSV file with a header row")
    return rows[0], rows[1:]


def csv_dicts(path: Path, required: Sequence[str], aliases: dict[str, str] | None = None) -> list[Item]:
    """Rows of a CSV file with a header, as dicts; checks the required columns."""
    head, rows = read_csv(path)
    aliases = aliases or {}
    names = [aliases.get(h, h) for h in head]
    check_columns(names, required, str(path), found=head)
    out = []
    for r in rows:
        if not any(x.strip() for x in r):
            continue  # blank line
        out.append(dict(zip(names, r + [""] * (len(names) - len(r)))))
    return out


def check_columns(present: Iterable[str], required: Sequence[str], where: str,
                  found: Iterable[str] | None = None) -> None:
    present = set(present)
    missing = [c for c in required if c not in present]
    if missing:
        shown = sorted(found if found is not None else present)
        raise InputError(f"{where} lacks column(s) {', '.join(missing)}: expected "
                         f"{', '.join(required)}, found {', '.join(map(repr, shown)) or 'none'}; "
                         f"point at a file in this format or rename its columns")


def jsonl(path: Path) -> list[tuple[int, Item]]:
    """(line number, object) for each non-blank line of a JSON Lines file."""
    out = []
    for n, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {n} is not valid JSON ({e.msg}); "
                             f"fix or remove that line") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path} line {n} is not a JSON object; each line must be one item")
        out.append((n, obj))
    return out


def as_int(value: Any, what: str, where: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what} {value!r} is not an integer; fix the value") from None


def require_text(row: Item, key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise InputError(f"{where}: {key!r} is {type(value).__name__}, not text; fix the value")
    return value


def choice(value: Any, allowed: Sequence[str], what: str, where: str) -> str:
    if value not in allowed:
        raise InputError(f"{where}: {what} {value!r} is not one of {', '.join(allowed)}; fix the value")
    return value
