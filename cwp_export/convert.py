"""Hugging Face checkpoint → GGUF model file (the ``--protect 0`` path).

Sequences the stages: open the source, pick the architecture adapter, build the vocabulary, choose
a type per tensor (a float type for every matrix, or a llama.cpp quantization preset's per-tensor
mix, with optional tensor-by-tensor overrides), and stream every tensor through its transform and
encoder (with an optional per-column importance from an imatrix) into the writer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np
import torch
from gguf import LlamaFileType

from . import __version__, quant
from .arch import adapter_for
from .arch.base import ArchAdapter, TensorSpec
from .errors import InputError
from .formats.gguf_writer import GGUFWriter
from .formats.imatrix import load_imatrix
from .quant import presets
from .source import ModelSource, open_source
from .tokenizer import Vocab, load_vocab

# Float output types (every matrix in that type), and the file type each announces; the
# quantized outputs are llama.cpp's presets (quant.presets.PRESETS).
FLOAT_TYPES = {
    "F32": LlamaFileType.ALL_F32,
    "F16": LlamaFileType.MOSTLY_F16,
    "BF16": LlamaFileType.MOSTLY_BF16,
}
GGML_QUANT_VERSION = 2


def output_types() -> list[str]:
    return [*FLOAT_TYPES, *presets.PRESETS]


# (first row of the chunk, the chunk's float32 values, its encoded bytes) → bytes to write
# instead, or None to write the encoded bytes
ChunkHook = Callable[[int, torch.Tensor, bytes], "bytes | None"]


@dataclass(frozen=True)
class PlannedTensor:
    spec: TensorSpec
    qtype: quant.QuantType                # the type written to the file
    importance: np.ndarray | None = None  # per column (imatrix), or None
    # per element: (first row, end row) → [rows, row length] rounding weights (overrides the
    # per-column importance)
    element_importance: Callable[[int, int], torch.Tensor] | None = None
    encode_type: quant.QuantType | None = None  # encode with this type (default: qtype)
    on_chunk: ChunkHook | None = None


@dataclass
class Conversion:
    """Everything decided before a byte is written: what a dry run can show."""

    source: ModelSource
    adapter: ArchAdapter
    vocab: Vocab
    outtype: str
    tensors: list[PlannedTensor]

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.spec.shape) for t in self.tensors)


def choose_type(spec: TensorSpec, outtype: str) -> quant.QuantType:
    """Vectors stay F32 (llama.cpp computes norms and biases in F32); matrices take ``outtype``,
    falling back to F16 where rows do not hold whole quant blocks."""
    if spec.is_1d or spec.source is None:
        return quant.get("F32")
    qt = quant.get(outtype)
    if qt.is_quantized and spec.shape[-1] % qt.block_size:
        return quant.get("F16")
    return qt


def plan(model: str | os.PathLike, outtype: str = "F16", *,
         overrides: dict[str, str] | None = None,
         imatrix: str | os.PathLike | None = None) -> Conversion:
    """Decide everything about the output file without writing it.

    ``outtype`` is F32, F16, BF16 or a preset (Q8_0, Q6_K, Q5_K_M, ... Q2_K); ``overrides`` maps
    GGUF tensor names to types; ``imatrix`` is a llama.cpp importance-matrix file whose
    per-column importances weight the rounding of the tensors it covers.
    """
    outtype = outtype.upper()
    if outtype not in output_types():
        raise InputError(f"output type {outtype!r} is not supported; choose one of "
                         f"{', '.join(output_types())}")
    source = open_source(model)
    adapter = adapter_for(source.config)
    specs = adapter.tensor_specs({n: r.shape for n, r in source.tensors.items()})
    vocab = load_vocab(source.path, adapter.n_vocab_rows(), source.config)
    infos = [presets.TensorInfo(s.name, s.shape) for s in specs]
    if outtype in FLOAT_TYPES:
        types = {s.name: choose_type(s, outtype).name for s in specs}
    else:
        types = presets.plan_types(outtype, infos, arch=adapter.gguf_arch, n_layer=adapter.n_layer,
                                   n_head=adapter.n_head, n_head_kv=adapter.n_head_kv)
    for s in specs:  # generated tensors (rope factors) are data, not weights
        if s.source is None:
            types[s.name] = "F32"
    if overrides:
        types = presets.apply_overrides(types, overrides, tensors=infos)
    importance = load_imatrix(imatrix, {s.name: s.shape for s in specs}) if imatrix else {}
    tensors = [PlannedTensor(s, quant.get(types[s.name]), importance.get(s.name)) for s in specs]
    return Conversion(source, adapter, vocab, outtype, tensors)


def file_type(outtype: str) -> int:
    return int(FLOAT_TYPES[outtype]) if outtype in FLOAT_TYPES else presets.file_type(outtype)


def build_writer(conv: Conversion) -> GGUFWriter:
    w = GGUFWriter()
    w.add_string("general.architecture", conv.adapter.gguf_arch)
    w.add_string("general.type", "model")
    w.add_string("general.name", conv.source.name)
    w.add_u32("general.quantization_version", GGML_QUANT_VERSION)
    w.add_u32("general.file_type", file_type(conv.outtype))
    w.add_string("general.quantized_by", f"cwp-export {__version__}")
    for hp in conv.adapter.hparams():
        w.add(hp.key, hp.value, hp.vtype, hp.sub_type)
    for key, value, vtype, sub in conv.vocab.metadata():
        w.add(key, value, vtype, sub)
    for t in conv.tensors:
        w.add_tensor(t.spec.name, t.spec.shape, t.qtype.ggml_type, _producer(conv.source, t))
    return w


# Rows encoded per step: bounds the temporaries (masks, float32 copies, output bytes) of a large
# tensor to a few MiB, so peak memory stays near the source tensor itself.
CHUNK_ELEMENTS = 1 << 20


def _producer(source: ModelSource, t: PlannedTensor) -> Callable[[], Iterator[bytes]]:
    def produce() -> Iterator[bytes]:
        spec = t.spec
        x = spec.generate() if spec.source is None else source.load(spec.source)
        if spec.transform is not None:
            x = spec.transform(x)
        if tuple(x.shape) != spec.shape:  # adapter bug, not user error
            raise AssertionError(f"{spec.name}: transform gave shape {tuple(x.shape)}, "
                                 f"expected {spec.shape}")
        label = spec.name if spec.source is None else f"{spec.source} ({spec.name})"
        importance = None if t.importance is None else torch.from_numpy(t.importance)
        rows = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)
        step = max(1, CHUNK_ELEMENTS // max(1, rows.shape[1]))
        enc = t.encode_type or t.qtype
        for i in range(0, rows.shape[0], step):
            chunk = rows[i:i + step]
            quant.check_finite(label, chunk)
            if enc.name == "F16":
                quant.check_f16_range(label, chunk)
            imp = importance if t.element_importance is None \
                else t.element_importance(i, i + chunk.shape[0])
            blob = enc.encode(chunk, imp)
            if t.on_chunk is not None:
                blob = t.on_chunk(i, chunk, blob) or blob
            yield blob

    return produce


def output_path(outdir: Path, conv: Conversion) -> Path:
    return outdir / f"{conv.source.name}-{conv.outtype}.gguf"


def write(conv: Conversion, path: Path, progress: bool = True) -> tuple[int, str]:
    """Write the model GGUF to ``path`` atomically; return (size, sha256)."""
    writer = build_writer(conv)
    total = sum(t.nbytes for t in writer.tensors)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        # disable=None: no bar when stderr is not a terminal (logs stay clean)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=path.name, leave=False,
                   disable=None)
    try:
        def step(entry) -> None:
            if bar is not None:
                bar.set_postfix_str(entry.name, refresh=False)
                bar.update(entry.nbytes)

        return writer.write(path, progress=step)
    finally:
        if bar is not None:
            bar.close()

