"""Critical-weight scores and mask on disk: one safetensors file keyed by GGUF tensor name.

Layout: for each scored tensor ``NAME`` (GGUF name, e.g. ``blk.0.attn_q.weight``) the file holds
``score.NAME`` (float32) and ``mask.NAME`` (bool), both in the GGUF tensor's layout, and
optionally ``act.NAME`` (float32, one value per column: the mean squared input activation on the
general calibration text, what an imatrix holds); the
architecture adapter's transform (e.g. LLaMA's Q/K row reordering) has been applied, so a mask
lines up with the weights written to the GGUF. String metadata: ``format`` (= ``cwp-scores``),
``version``, plus whatever the caller records (scorer, beta, languages, data hashes, model
fingerprint, seed, fraction, ...). Writes are atomic (temporary name, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, OutputError
from .manifest import write_atomic

FORMAT = "cwp-scores"
VERSION = "1"


def data_hash(items: list[dict[str, Any]]) -> str:
    """sha256 of a list of probe items in canonical JSON (for the metadata)."""
    blob = json.dumps(items, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def to_gguf_names(adapter: Any, shapes: dict[str, tuple[int, ...]],
                  tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF-named tensors to GGUF names and apply the adapter's layout transforms.

    ``shapes`` is the full HF checkpoint index (name → shape) the adapter maps; every key of
    ``tensors`` must be a source tensor there. A tied head (no GGUF tensor of its own) is refused.
    """
    by_source = {s.source: s for s in adapter.tensor_specs(shapes) if s.source is not None}
    out: dict[str, torch.Tensor] = {}
    for hf, t in tensors.items():
        spec = by_source.get(hf)
        if spec is None:
            raise InputError(f"scored tensor {hf!r} has no GGUF tensor of its own (tied or "
                             f"unknown); score the tensor it is tied to instead")
        if tuple(t.shape) != tuple(spec.shape):
            raise InputError(f"scored tensor {hf!r} has shape {list(t.shape)}, the model "
                             f"{list(spec.shape)}")
        out[spec.name] = spec.transform(t) if spec.transform is not None else t
    return out


def _check_meta(metadata: dict[str, Any]) -> dict[str, str]:
    meta = {}
    for k, v in metadata.items():
        if not isinstance(k, str) or k in ("format", "version"):
            raise ValueError(f"metadata key {k!r} is reserved or not a string")
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)
    return meta


_DTYPES = {torch.float32: "F32", torch.bool: "BOOL"}


def _serialize(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """safetensors bytes with a byte-stable header (sorted keys; the safetensors library orders
    the header through a hash map, so its output can differ between runs)."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        data = t.numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned, as the format recommends
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def save_scores(path: str | Path, scores: dict[str, torch.Tensor], mask: dict[str, torch.Tensor],
                metadata: dict[str, Any] | None = None,
                activations: dict[str, torch.Tensor] | None = None) -> Path:
    """Write GGUF-named ``scores`` and ``mask`` (same names and shapes), and optionally per-column
    ``activations``, to ``path`` atomically.

    Non-string metadata values are stored as canonical JSON.
    """
    if set(scores) != set(mask):
        raise ValueError("scores and mask name different tensors")
    tensors: dict[str, torch.Tensor] = {}
    for n in sorted(scores):
        if tuple(scores[n].shape) != tuple(mask[n].shape):
            raise ValueError(f"{n}: score shape {list(scores[n].shape)} != mask shape "
                             f"{list(mask[n].shape)}")
        tensors[f"score.{n}"] = scores[n].detach().float().cpu().contiguous()
        tensors[f"mask.{n}"] = mask[n].detach().bool().cpu().contiguous()
    for n, a in (activations or {}).items():
        if n not in scores or a.ndim != 1 or a.shape[0] != scores[n].shape[-1]:
            raise ValueError(f"{n}: activations must be one value per column of a scored tensor")
        tensors[f"act.{n}"] = a.detach().float().cpu().contiguous()
    meta = {"format": FORMAT, "version": VERSION, **_check_meta(metadata or {})}
    blob = _serialize(tensors, meta)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write the scores file {path}: {e.strerror or e}") from e
    write_atomic(path, blob)
    return path


def load_scores(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                           dict[str, str]]:
    """``(scores, mask, metadata)`` from a file written by :func:`save_scores`, validated."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read the scores file {path}: {e.strerror or e}") from e
    bad = f"{path} is not a cwp-export scores file"
    try:
        tensors = load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8:8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise InputError(f"{bad} (not a readable safetensors file: {e}); write it again with "
                         f"cwp-export") from e
    if meta.get("format") != FORMAT:
        raise InputError(f"{bad} (format {meta.get('format')!r}); give a file written by "
                         f"cwp-export's scorer")
    if meta.get("version") != VERSION:
        raise InputError(f"{path} is a scores file of version {meta.get('version')!r}; this "
                         f"cwp-export reads version {VERSION}; score the model again")
    scores, mask = {}, {}
    for key, t in tensors.items():
        kind, _, name = key.partition(".")
        if kind == "score" and name and t.dtype == torch.float32:
            scores[name] = t
        elif kind == "mask" and name and t.dtype == torch.bool:
            mask[name] = t
        elif kind == "act" and name and t.dtype == torch.float32:
            continue  # see load_activations
        else:
            raise InputError(f"{bad} (unexpected tensor {key!r} of type {t.dtype}); the file is "
                             f"damaged or from another tool")
    if set(scores) != set(mask):
        odd = min(set(scores) ^ set(mask))
        raise InputError(f"{path}: tensor {odd!r} has a score or a mask but not both; the file "
                         f"is damaged")
    for n, s in scores.items():
        if s.shape != mask[n].shape:
            raise InputError(f"{path}: score and mask of {n!r} differ in shape; the file is "
                             f"damaged")
    if not scores:
        raise InputError(f"{path} holds no scored tensors")
    return scores, mask, dict(meta)


def load_activations(path: str | Path) -> dict[str, torch.Tensor]:
    """The per-column activation importances of a scores file ({} when it has none)."""
    from safetensors.torch import load

    load_scores(path)  # validates the file
    tensors = load(Path(path).read_bytes())
    return {k[4:]: t for k, t in tensors.items() if k.startswith("act.")}
