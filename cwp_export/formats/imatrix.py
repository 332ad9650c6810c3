"""Import llama.cpp importance matrices (``llama-imatrix`` output) as per-column importances.

Two file formats exist (llama.cpp ``common/imatrix-loader.cpp``, ``tools/imatrix/imatrix.cpp``):

* GGUF (the default since 2025): for each weight ``W`` an F32 tensor ``W.in_sum2`` of ggml shape
  ``(n_per_row, n_mat)`` holding the sum over all evaluated tokens of the squared input
  activations of each column, and an F32 tensor ``W.counts`` of shape ``(1, n_mat)`` holding how
  many tokens were summed (``n_mat`` is 1 for dense weights, the expert count for MoE weights).
  Metadata: ``general.type = "imatrix"``, ``imatrix.datasets`` (string array),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32).
* legacy ``.dat``: int32 entry count; per entry int32 name length, name bytes, int32 ``ncall``,
  int32 value count, float32 values (already ``in_sum2 / count * ncall``); then optionally int32
  chunk count, int32 dataset-name length and the dataset name.

llama-quantize turns these into the importance it passes to the quantizers the same way done here:
GGUF: ``in_sum2 / round(counts)`` per matrix (1 where a matrix saw no tokens); legacy:
``values / ncall`` (the values as stored when ``ncall`` is 0).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

SUM_SUFFIX = ".in_sum2"
COUNT_SUFFIX = ".counts"
META_KEYS = ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")


@dataclass(frozen=True)
class Imatrix:
    importance: dict[str, np.ndarray]   # GGUF tensor name → float32 (n_per_row,)
    datasets: tuple[str, ...]
    chunk_count: int
    chunk_size: int                     # 0 for legacy files
    legacy: bool


def read_imatrix(path: str | os.PathLike) -> Imatrix:
    """Read an imatrix file (GGUF or legacy ``.dat``) into per-column importances."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"imatrix file {path} does not exist")
    if not path.is_file():
        raise InputError(f"imatrix path {path} is not a file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise InputError(f"cannot read imatrix file {path}: {e.strerror or e}") from e
    if magic == b"GGUF":
        return _read_gguf(path)
    return _read_legacy(path)


def load_imatrix(path: str | os.PathLike,
                 tensors: Mapping[str, Sequence[int]] | Iterable[Any] | None = None,
                 ) -> dict[str, np.ndarray]:
    """GGUF tensor name → float32 importance per column (length n_per_row).

    With ``tensors`` (GGUF name → shape in PyTorch order, or objects with ``name`` and ``shape``
    such as :class:`~cwp_export.arch.base.TensorSpec`), the entries are checked against the model:
    every entry must name one of its matrices and have one value per column. Model tensors without
    an entry are allowed (llama-imatrix never records ``token_embd`` and by default not ``output``).
    """
    im = read_imatrix(path)
    if tensors is not None:
        check_matches(im.importance, _shapes(tensors), Path(path))
    return im.importance


def check_matches(importance: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]],
                  path: Path | str = "the imatrix") -> None:
    unknown = sorted(n for n in importance if n not in shapes)
    if unknown:
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise InputError(f"imatrix {path} has entries for tensors this model does not have: "
                         f"{', '.join(unknown[:3])}{more}; it was computed for another model")
    for name, v in importance.items():
        shape = tuple(shapes[name])
        if len(shape) < 2:
            raise InputError(f"imatrix {path} has an entry for {name}, which is a vector in this "
                             f"model; it was computed for another model")
        if v.shape[0] != shape[-1]:
            raise InputError(f"imatrix {path} has {v.shape[0]} values for {name}, whose rows "
                             f"hold {shape[-1]}; it was computed for another model")


def _shapes(tensors: Mapping[str, Sequence[int]] | Iterable[Any]) -> dict[str, tuple[int, ...]]:
    if isinstance(tensors, Mapping):
        return {str(k): tuple(v) for k, v in tensors.items()}
    return {t.name: tuple(t.shape) for t in tensors}


def _corrupt(path: Path, why: str) -> InputError:
    return InputError(f"imatrix file {path} is corrupt ({why}); produce it again with "
                      f"llama-imatrix")


def _read_gguf(path: Path) -> Imatrix:
    from gguf import GGMLQuantizationType, GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError, struct.error, IndexError... on bad files
        raise _corrupt(path, f"unreadable GGUF: {e}") from e

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    gtype = field("general.type")
    if gtype is not None and gtype != "imatrix":
        raise InputError(f"{path} is a GGUF {gtype} file, not an importance matrix; pass the "
                         f"file llama-imatrix wrote")
    pairs: dict[str, list[Any]] = {}
    for t in reader.tensors:
        for suffix, slot in ((SUM_SUFFIX, 0), (COUNT_SUFFIX, 1)):
            if t.name.endswith(suffix):
                pairs.setdefault(t.name[: -len(suffix)], [None, None])[slot] = t
                break
        else:
            raise InputError(f"{path} holds tensor {t.name!r}, which no importance matrix has; "
                             f"is it a model file? pass the file llama-imatrix wrote")
    if not pairs:
        raise InputError(f"imatrix file {path} holds no entries")
    out: dict[str, np.ndarray] = {}
    for name, (sums, counts) in sorted(pairs.items()):
        if sums is None or counts is None:
            raise _corrupt(path, f"{name} has {'no in_sum2' if sums is None else 'no counts'}")
        for t in (sums, counts):
            if t.tensor_type != GGMLQuantizationType.F32:
                raise _corrupt(path, f"{t.name} is {t.tensor_type.name}, not F32")
        s = np.asarray(sums.data, dtype=np.float32).reshape(-1)
        c = np.asarray(counts.data, dtype=np.float32).reshape(-1)
        n_mat = c.size
        if n_mat < 1 or s.size == 0 or s.size % n_mat:
            raise _corrupt(path, f"{name} has {s.size} sums for {n_mat} matrices")
        if n_mat > 1:
            raise InputError(f"imatrix {path} holds per-expert data for {name} ({n_mat} matrices); "
                             f"mixture-of-experts models are not supported")
        count = np.float32(np.round(c[0]))  # llama.cpp: lround, then back to float
        if not np.all(np.isfinite(s)) or not np.isfinite(count):
            raise InputError(f"imatrix {path} holds non-finite values for {name}; compute it "
                             f"again (llama-quantize would refuse it too)")
        if count > 0:
            out[name] = (s / count).astype(np.float32)
        else:  # a matrix that saw no tokens: neutral importance
            out[name] = np.ones_like(s)
    missing = [k for k in META_KEYS if k not in reader.fields]
    if missing:
        # llama-quantize refuses such files too
        raise InputError(f"imatrix file {path} lacks the metadata {', '.join(missing)}; it was not "
                         f"written by llama-imatrix")
    try:
        datasets = tuple(str(d) for d in (field("imatrix.datasets") or []))
        chunk_count = int(field("imatrix.chunk_count"))
        chunk_size = int(field("imatrix.chunk_size"))
    except (TypeError, ValueError) as e:
        raise _corrupt(path, f"bad imatrix metadata: {e}") from e
    return Imatrix(out, datasets, chunk_count, chunk_size, legacy=False)


def _read_legacy(path: Path) -> Imatrix:
    """The pre-GGUF format; anything that does not parse exactly as one is called corrupt."""
    data = path.read_bytes()
    hint = (f"{path} is neither a GGUF importance matrix nor a legacy .dat one; produce it with "
            f"llama-imatrix (--output-format gguf)")
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise InputError(hint if pos < 4 else f"legacy imatrix file {path} is truncated; "
                             f"produce it again with llama-imatrix --output-format gguf")
        v = struct.unpack_from(fmt, data, pos)
        pos += size
        return v

    (n_entries,) = take("<i")
    if n_entries < 1 or n_entries > 1_000_000:
        raise InputError(hint)
    out: dict[str, np.ndarray] = {}
    for _ in range(n_entries):
        (n,) = take("<i")
        if not 0 < n <= 4096:
            raise InputError(hint)
        raw = take(f"<{n}s")[0]
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(hint) from None
        if not name.isprintable():
            raise InputError(hint)
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(data):
            raise InputError(f"legacy imatrix file {path} is truncated or corrupt at entry "
                             f"{name!r}; produce it again with llama-imatrix --output-format gguf")
        v = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        if not np.all(np.isfinite(v)):
            raise InputError(f"imatrix {path} holds non-finite values for {name}; compute it "
                             f"again (llama-quantize would refuse it too)")
        out[name] = (v / np.float32(ncall)).astype(np.float32) if ncall > 0 else v
    chunk_count, datasets = 0, ()
    if pos < len(data):  # optional trailer: chunk count, dataset name
        if pos + 4 <= len(data):
            (chunk_count,) = struct.unpack_from("<i", data, pos)
            pos += 4
        if pos + 4 <= len(data):
            (n,) = struct.unpack_from("<i", data, pos)
            pos += 4
            if 0 < n <= len(data) - pos:
                datasets = (data[pos:pos + n].decode("utf-8", "replace"),)
    return Imatrix(out, datasets, chunk_count, 0, legacy=True)


__all__ = ["Imatrix", "check_matches", "load_imatrix", "read_imatrix"]
