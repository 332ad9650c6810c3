"""Model sources: find a Hugging Face checkpoint and read its tensors lazily.

A source is a local folder or a hub id resolved through huggingface_hub's cache. Only safetensors
weights are read (a single file or shards listed in ``model.safetensors.index.json``); pickle files
are never opened. Headers are parsed and checked here, before any output is written, so truncated or
corrupt files are refused up front with a clear message. Tensor data is memory-mapped one tensor at
a time.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

# safetensors dtype name → (bytes per element, torch dtype name)
_ST_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}
_MAX_HEADER = 100 * 1024 * 1024


class _LazyTorchDtypes(dict):
    """safetensors dtype name → torch dtype, filled on first use (keeps torch out of imports)."""

    def __missing__(self, key: str):
        import torch

        self.update({"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                     "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                     "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool})
        return self[key]


_TORCH_DTYPES = _LazyTorchDtypes()


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: file, dtype, shape, byte range inside the file's data section
    (which begins at byte ``data_start`` of the file)."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    data_start: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate a safetensors header without reading tensor data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise InputError(f"{path} is not a safetensors file (shorter than 8 bytes); "
                                 f"re-download or re-save the checkpoint")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise InputError(f"{path} is truncated or corrupt (header length {n} exceeds the "
                                 f"file size {size}); re-download or re-save the checkpoint")
            header = json.loads(f.read(n).decode("utf-8"))
    except InputError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"{path} has a corrupt safetensors header ({e.__class__.__name__}); "
                         f"re-download or re-save the checkpoint") from e
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    if not isinstance(header, dict):
        raise InputError(f"{path} has a corrupt safetensors header; re-download or re-save the checkpoint")
    data_size = size - 8 - n
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: corrupt header entry for tensor {name!r}; re-download or "
                             f"re-save the checkpoint") from e
        if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
            raise InputError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        ref = TensorRef(name, path, dtype, shape, start, end, 8 + n)
        if end < start or ref.nbytes != ref.numel * _ST_DTYPES[dtype]:
            raise InputError(f"{path}: tensor {name!r} has a byte range that does not match its "
                             f"shape {list(shape)} and dtype {dtype}; the file is corrupt")
        if end > data_size:
            raise InputError(f"{path} is truncated: tensor {name!r} ends at byte {end} of a "
                             f"{data_size}-byte data section; re-download or re-save the checkpoint")
        refs[name] = ref
    _check_with_safetensors(path)
    return refs


def _check_with_safetensors(path: Path) -> None:
    """Let the safetensors library validate the header too (offset gaps or overlaps, trailing
    bytes, metadata types), so what it would refuse at load time is refused here, up front."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np"):
            pass
    except Exception as e:  # SafetensorError and whatever else the parser raises
        raise InputError(f"{path} is not a valid safetensors file ({e}); re-download or re-save "
                         f"the checkpoint") from e


@dataclass
class ModelSource:
    """A resolved checkpoint folder with its config and a lazy index of its tensors."""

    path: Path
    name: str
    config: dict[str, Any]
    tensors: dict[str, TensorRef] = field(repr=False)

    def fingerprint(self, windows: int = 8, window: int = 4096) -> str:
        """sha256 over config.json, every safetensors header entry and ``windows`` evenly spaced
        byte windows of every tensor's data: identifies the checkpoint cheaply (a fine-tune of
        the same architecture changes it too). A scores file records it, an export checks it."""
        import hashlib

        h = hashlib.sha256()
        h.update((self.path / "config.json").read_bytes())
        handles: dict[Path, Any] = {}
        try:
            for name in sorted(self.tensors):
                r = self.tensors[name]
                h.update(f"{name}|{r.dtype}|{r.shape}|{r.file.name}|{r.start}|{r.end}\n".encode())
                f = handles.get(r.file) or handles.setdefault(r.file, open(r.file, "rb"))
                span = r.nbytes
                for k in range(windows if span > window else 1):
                    off = (span - min(span, window)) * k // max(1, windows - 1)
                    f.seek(r.data_start + r.start + off)
                    h.update(f.read(min(span, window)))
        except OSError as e:
            raise InputError(f"cannot read {self.path}: {e.strerror or e}") from e
        finally:
            for f in handles.values():
                f.close()
        return h.hexdigest()

    def load(self, name: str):
        """Read one tensor into memory as a torch tensor.

        The tensor's byte range is read with plain file reads, not a memory map: a map kept open
        would leave every page of the checkpoint resident, so peak memory would grow with the
        whole model instead of staying near the largest tensor.
        """
        import torch

        ref = self.tensors[name]
        buf = bytearray(ref.nbytes)
        try:
            with open(ref.file, "rb") as f:
                f.seek(ref.data_start + ref.start)
                got = f.readinto(buf)
        except OSError as e:
            raise InputError(f"cannot read tensor {name!r} from {ref.file}: {e.strerror or e}") from e
        if got != ref.nbytes:
            raise InputError(f"{ref.file} is truncated: tensor {name!r} could not be read in full; "
                             f"re-download or re-save the checkpoint")
        if ref.nbytes == 0:
            return torch.empty(ref.shape, dtype=_TORCH_DTYPES[ref.dtype])
        return torch.frombuffer(buf, dtype=_TORCH_DTYPES[ref.dtype]).reshape(ref.shape)

    def file(self, name: str) -> Path | None:
        p = self.path / name
        return p if p.is_file() else None

    def read_json(self, name: str) -> dict[str, Any] | None:
        p = self.file(name)
        if p is None:
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{p} is not valid JSON ({e.__class__.__name__}); fix or re-download it") from e


def _resolve_path(model: str | os.PathLike) -> Path:
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InputError(f"{p} is a file; give the checkpoint folder that holds config.json "
                             f"and *.safetensors")
        return p
    text = str(model)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:  # pragma: no cover - dependency is declared
            raise InputError("huggingface_hub is not installed; pip install huggingface_hub") from e
        try:
            return Path(snapshot_download(
                text, allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]))
        except Exception as e:  # network, auth, missing repo: all reported the same way
            raise InputError(
                f"cannot get {text!r} from the Hugging Face hub or its local cache "
                f"({e.__class__.__name__}); download it first or give a local folder") from e
    raise InputError(f"model {text!r} not found: give a local checkpoint folder or a hub id like "
                     f"'org/name'")


def open_source(model: str | os.PathLike) -> ModelSource:
    """Resolve ``model`` and index its safetensors weights, refusing anything unusable."""
    path = _resolve_path(model)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{path} has no config.json; give a Hugging Face checkpoint folder "
                         f"(saved with save_pretrained)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{cfg_path} is not valid JSON ({e.__class__.__name__}); fix or "
                         f"re-download it") from e
    if not isinstance(config, dict):
        raise InputError(f"{cfg_path} does not hold a JSON object; fix or re-download it")

    files = _weight_files(path)
    tensors: dict[str, TensorRef] = {}
    for f in files:
        for name, ref in read_safetensors_header(f).items():
            if name in tensors:
                raise InputError(f"tensor {name!r} appears in both {tensors[name].file.name} and "
                                 f"{f.name}; the checkpoint is inconsistent")
            tensors[name] = ref
    name = path.resolve().name
    if "snapshots" in path.parts:  # hub cache: models--org--name/snapshots/<rev>
        for part in path.parts:
            if part.startswith("models--"):
                name = part.split("--")[-1]
    return ModelSource(path=path, name=name, config=config, tensors=tensors)


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({path / v for v in weight_map.values()})
        except (OSError, KeyError, TypeError, AttributeError, UnicodeDecodeError,
                json.JSONDecodeError, RecursionError) as e:
            raise InputError(f"{index} is corrupt (no weight_map); re-download "
                             f"the checkpoint") from e
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InputError(f"{path} is missing shard(s) {', '.join(missing)} listed in "
                             f"{index.name}; download the complete checkpoint")
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in path.iterdir()
                     if p.suffix in (".bin", ".pt", ".pth", ".ckpt") and p.is_file())
    if pickles:
        raise InputError(f"{path} has only pickle weights ({', '.join(pickles)}); cwp-export never "
                         f"unpickles files: re-save the model with save_pretrained(..., "
                         f"safe_serialization=True) from a trusted environment")
    raise InputError(f"{path} has no *.safetensors weights; give a folder saved with save_pretrained")
