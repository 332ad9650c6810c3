"""A streaming, atomic GGUF (version 3) writer.

Only this module knows the GGUF byte layout. Tensor data is produced one tensor at a time by a
callable, so peak memory stays near the largest tensor instead of the whole model. The file is
written under a temporary name in the destination folder and renamed into place only once it is
complete; on any error the temporary file is removed, so a half-written ``.gguf`` never exists
under its final name.

Layout (little endian)::

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv     × (string key | u32 value type | value)
    n_tensors× (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset)
    padding to ``general.alignment`` (default 32)
    tensor data, each tensor starting at an aligned offset
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Sequence

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import OutputError

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class KV:
    """One metadata entry. ``sub_type`` is the element type when ``vtype`` is ARRAY."""

    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


# A tensor's data: all its bytes at once, or an iterator of consecutive pieces (so a large tensor
# never needs to exist twice in memory, once as values and once as encoded bytes).
Producer = Callable[[], "bytes | memoryview | Iterable[bytes | memoryview]"]


@dataclass(frozen=True)
class TensorEntry:
    """A tensor to write: ``shape`` in PyTorch/numpy order (outermost first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    produce: Producer

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.ggml_type)


def tensor_nbytes(shape: Sequence[int], ggml_type: GGMLQuantizationType) -> int:
    """Bytes a tensor of ``shape`` takes in ``ggml_type`` (rows must hold whole blocks)."""
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    n = 1
    for d in shape:
        n *= int(d)
    if shape and shape[-1] % block:
        raise ValueError(
            f"row length {shape[-1]} is not a multiple of the {ggml_type.name} block size {block}"
        )
    return n // block * type_size


def _pad(n: int, align: int) -> int:
    return (align - n % align) % align


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(v: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None) -> bytes:
    if vtype == GGUFValueType.STRING:
        return _string(v)
    if vtype == GGUFValueType.ARRAY:
        if sub_type is None:
            raise ValueError("array metadata needs an element type")
        items = list(v)
        head = struct.pack("<IQ", int(sub_type), len(items))
        if sub_type == GGUFValueType.STRING:
            return head + b"".join(_string(x) for x in items)
        if sub_type == GGUFValueType.ARRAY:
            raise ValueError("nested metadata arrays are not supported")
        fmt = _SCALAR_FORMATS[sub_type]
        return head + struct.pack("<" + fmt[1] * len(items), *items)
    return struct.pack(_SCALAR_FORMATS[vtype], v)


def encode_kv(kv: KV) -> bytes:
    return _string(kv.key) + struct.pack("<I", int(kv.vtype)) + _value(kv.value, kv.vtype, kv.sub_type)


class GGUFWriter:
    """Collects metadata and tensor entries, then writes the file in one atomic pass."""

    def __init__(self, alignment: int = DEFAULT_ALIGNMENT):
        self.alignment = alignment
        self._kv: dict[str, KV] = {}
        self._tensors: list[TensorEntry] = []
        self._names: set[str] = set()

    # -- metadata -----------------------------------------------------------------------------
    def add(self, key: str, value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> None:
        if key in self._kv:
            raise ValueError(f"duplicate metadata key {key!r}")
        self._kv[key] = KV(key, value, vtype, sub_type)

    def add_string(self, key: str, value: str) -> None:
        self.add(key, value, GGUFValueType.STRING)

    def add_u32(self, key: str, value: int) -> None:
        self.add(key, int(value), GGUFValueType.UINT32)

    def add_i32(self, key: str, value: int) -> None:
        self.add(key, int(value), GGUFValueType.INT32)

    def add_f32(self, key: str, value: float) -> None:
        self.add(key, float(value), GGUFValueType.FLOAT32)

    def add_bool(self, key: str, value: bool) -> None:
        self.add(key, bool(value), GGUFValueType.BOOL)

    def add_array(self, key: str, values: Iterable[Any], sub_type: GGUFValueType) -> None:
        self.add(key, list(values), GGUFValueType.ARRAY, sub_type)

    @property
    def metadata(self) -> dict[str, KV]:
        return dict(self._kv)

    # -- tensors ------------------------------------------------------------------------------
    def add_tensor(self, name: str, shape: Sequence[int], ggml_type: GGMLQuantizationType,
                   produce: Producer) -> None:
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        if len(name.encode()) >= 64:
            raise ValueError(f"tensor name {name!r} is longer than GGUF's 63-byte limit")
        entry = TensorEntry(name, tuple(int(d) for d in shape), GGMLQuantizationType(ggml_type), produce)
        tensor_nbytes(entry.shape, entry.ggml_type)  # refuses rows that do not hold whole blocks
        self._names.add(name)
        self._tensors.append(entry)

    @property
    def tensors(self) -> list[TensorEntry]:
        return list(self._tensors)

    # -- output -------------------------------------------------------------------------------
    def _header(self) -> tuple[bytes, list[int]]:
        kvs = list(self._kv.values())
        if self.alignment != DEFAULT_ALIGNMENT and "general.alignment" not in self._kv:
            kvs.append(KV("general.alignment", self.alignment, GGUFValueType.UINT32))
        parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self._tensors), len(kvs))]
        parts += [encode_kv(kv) for kv in kvs]
        offsets, offset = [], 0
        for t in self._tensors:
            offsets.append(offset)
            ne = list(reversed(t.shape))
            parts.append(_string(t.name) + struct.pack("<I", len(ne))
                         + struct.pack("<" + "Q" * len(ne), *ne)
                         + struct.pack("<IQ", int(t.ggml_type), offset))
            offset += t.nbytes + _pad(t.nbytes, self.alignment)
        head = b"".join(parts)
        return head + b"\0" * _pad(len(head), self.alignment), offsets

    def data_size(self) -> int:
        """Total size of the file this writer would produce, in bytes."""
        head, _ = self._header()
        return len(head) + sum(t.nbytes + _pad(t.nbytes, self.alignment) for t in self._tensors)

    def write(self, path: str | os.PathLike,
              progress: Callable[[TensorEntry], None] | None = None) -> tuple[int, str]:
        """Write the file atomically; return its size in bytes and its sha256 (hex)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        head, _ = self._header()
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                def put(b: bytes | memoryview) -> None:
                    f.write(b)
                    digest.update(b)

                put(head)
                for t in self._tensors:
                    data = t.produce()
                    pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
                    n = 0
                    for piece in pieces:
                        n += len(piece)
                        if n > t.nbytes:
                            break
                        put(piece)
                    if n != t.nbytes:
                        raise ValueError(f"tensor {t.name}: produced {n} bytes, expected {t.nbytes}")
                    put(b"\0" * _pad(t.nbytes, self.alignment))
                    del data, pieces
                    if progress is not None:
                        progress(t)
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
            os.replace(tmp, path)
        except OSError as e:
            _unlink_quietly(tmp)
            raise output_error(path, e) from e
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return size, digest.hexdigest()


def _unlink_quietly(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass


def output_error(path: Path, e: OSError) -> OutputError:
    if e.errno == errno.ENOSPC:
        return OutputError(f"no space left on the device while writing {path}; free some space or "
                           f"choose another output directory with -o")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {path}: permission denied; choose a writable output "
                           f"directory with -o")
    return OutputError(f"cannot write {path}: {e.strerror or e}; check the output directory given with -o")
