"""Hugging Face ``datasets`` sources: ``hf:ORG/NAME[:CONFIG]`` or ``hf:/path/to/folder[:CONFIG]``.

A hub id is read with ``datasets.load_dataset`` (offline it must already be in the local cache);
a local folder is read with ``datasets.load_from_disk`` when it was written by ``save_to_disk``,
else with ``datasets.load_dataset(folder)`` (a folder of jsonl / csv / parquet files). Class-label
columns are turned into their names, then the rows go through the same normaliser as the files
of that format.

``CONFIG`` also tells the normaliser what the rows lack: the language (``hf:NAME:nl`` for MBBQ
rows without a ``lang`` column) or the StereoSet task (``:intrasentence``). For a local folder
it is only that hint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._common import Item

PREFIX = "hf:"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?$")
_CONFIG = re.compile(r"^[\w.+-]+$")
_USAGE = "write hf:ORG/NAME, hf:ORG/NAME:CONFIG or hf:/path/to/local/folder"


def is_spec(source: object) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str | None]:
    """``hf:...`` → (hub id or local folder, config or None)."""
    rest = spec[len(PREFIX):].strip()
    if not rest or rest.startswith(":"):
        raise InputError(f"bad Hugging Face source {spec!r}: no dataset named; {_USAGE}")
    if Path(rest).expanduser().exists():
        return str(Path(rest).expanduser()), None
    name, config = rest.rsplit(":", 1) if ":" in rest else (rest, None)
    if config is not None and not _CONFIG.match(config):
        raise InputError(f"bad Hugging Face source {spec!r}: config {config!r} is not a config name; "
                         f"{_USAGE}")
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser()), config
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        raise InputError(f"the local dataset folder {name!r} (from {spec!r}) does not exist; "
                         f"check the path, or {_USAGE}")
    if not _HUB_NAME.match(name):
        raise InputError(f"bad Hugging Face source {spec!r}; {_USAGE}")
    return name, config


def _is_classlabel(feature: Any) -> bool:
    return hasattr(feature, "int2str") and hasattr(feature, "names")


def _has_classlabel(feature: Any) -> bool:
    if _is_classlabel(feature):
        return True
    if isinstance(feature, dict):
        return any(_has_classlabel(f) for f in feature.values())
    if isinstance(feature, (list, tuple)):
        return any(_has_classlabel(f) for f in feature)
    inner = getattr(feature, "feature", None)
    return inner is not None and _has_classlabel(inner)


def _decode(value: Any, feature: Any) -> Any:
    """Replace class-label ints by their names, following nested features."""
    if value is None or feature is None:
        return value
    if _is_classlabel(feature):
        return feature.int2str(value) if isinstance(value, int) and value >= 0 else value
    if isinstance(feature, dict):
        if isinstance(value, dict):
            return {k: _decode(v, feature.get(k)) for k, v in value.items()}
        return value
    if isinstance(feature, (list, tuple)):
        inner = feature[0] if feature else None
    else:
        inner = getattr(feature, "feature", None)
    if inner is None:
        return value
    if isinstance(value, list):
        return [_decode(v, inner) for v in value]
    if isinstance(value, dict) and isinstance(inner, dict):  # a sequence of structs, stored as columns
        return {k: [_decode(x, inner.get(k)) for x in v] if isinstance(v, list) else v
                for k, v in value.items()}
    return value


def _rows(ds: Any) -> list[Item]:
    rows = ds.to_list()
    features = getattr(ds, "features", None)
    if features and _has_classlabel(dict(features)):
        feats = dict(features)
        rows = [{k: _decode(v, feats.get(k)) for k, v in r.items()} for r in rows]
    return rows


def load_splits(spec: str, split: str | None) -> tuple[str | None, list[tuple[str, list[Item]]]]:
    """(config, [(split name, rows), ...]) of a ``hf:`` source; ``split`` None = every split."""
    name, config = parse(spec)
    try:
        import datasets
    except ImportError:
        raise InputError(f"reading {spec!r} needs the datasets package; pip install datasets") from None
    local = Path(name)
    saved = local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "state.json"))
    try:
        if saved:
            ds = datasets.load_from_disk(str(local))
        else:
            ds = datasets.load_dataset(name, None if local.is_dir() else config, split=split)
    except InputError:
        raise
    except Exception as e:  # datasets raises many types (missing, offline, bad config, bad files)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise InputError(f"cannot load the Hugging Face dataset {spec!r} ({type(e).__name__}: {first}); "
                         f"check the name, config and split; offline it must already be in the local "
                         f"cache, or give a local folder as hf:/path") from None
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # a DatasetDict
        available = list(ds.keys())
        if split is not None:
            if split not in available:
                raise InputError(f"{spec!r} has no split {split!r}; it has {', '.join(available)}")
            return config, [(split, _rows(ds[split]))]
        return config, [(s, _rows(ds[s])) for s in available]
    return config, [(split or str(getattr(ds, "split", None) or "train"), _rows(ds))]
