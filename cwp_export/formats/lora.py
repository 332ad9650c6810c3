"""LoRA adapter GGUF files as llama.cpp loads them (``--lora``, llama-cpp-python's ``lora_path``).

Used for the outlier pairs of :mod:`cwp_export.protect.outliers` (DESIGN.md section 4): the model
file stays a plain model and the adapter next to it restores chosen columns/rows exactly.

What llama.cpp (the version llama-cpp-python 0.3.36 bundles) does with such a file, read from its
``src/llama-adapter.cpp`` and ``src/llama-graph.cpp``:

* Metadata: ``general.type`` must be ``"adapter"``, ``adapter.type`` must be ``"lora"`` and
  ``general.architecture`` must name the base model's architecture, or loading fails.
  ``adapter.lora.alpha`` is read as a FLOAT32 (absent = 0).
* Tensors: every name must end in ``.lora_a`` or ``.lora_b`` (``*_norm.weight`` tensors are
  skipped, anything else is an error); the two halves of a pair must both exist and the base name
  must be a tensor of the loaded model, or loading fails.
* Scale: each pair is added as ``scale * B @ (A @ x)`` with
  ``scale = alpha ? lora_scale * alpha / rank : lora_scale``, where ``rank`` is ``ne[0]`` of
  ``lora_b`` and ``lora_scale`` is the user's adapter scale (1.0 by default in llama-cpp-python).
  So with ``alpha = 0`` (this writer's default) every pair is applied with the user's scale,
  1.0, whatever its rank: outlier pairs of different ranks restore their weights exactly.
  With ``alpha != 0`` llama.cpp multiplies each pair by ``alpha / rank``; this writer stores the
  pairs as given, so the caller must then pre-scale them.
* Shapes (ggml ``ne`` order; numpy shapes are reversed). For a linear weight ``W`` with
  ``ne = [in, out]`` (numpy ``[out, in]``) llama.cpp checks ``lora_a.ne[0] == in``,
  ``lora_b.ne[1] == out`` and ``lora_a.ne[1] == lora_b.ne[0]`` (the rank). So ``lora_a`` is
  numpy ``[rank, in]`` = our ``A`` and ``lora_b`` is numpy ``[out, rank]`` = our ``B``:
  PyTorch layout, stored as is.
* Where pairs act: linear weights go through ``build_lora_mm`` (``W @ x`` plus the pairs found
  under the weight's *tensor name*): attention q/k/v/output, the feed-forward gate/up/down and
  ``output.weight``. Norms and biases never do (a 1-D pair would be loaded and silently ignored).
* ``token_embd.weight`` is applied on the embedding *lookup* path (``build_inp_embd``):
  ``delta = lora_b @ get_rows(lora_a, tokens)``, and the shape check is ``W.ne[0] (n_embd) ==
  lora_b.ne[1]`` and ``W.ne[1] (n_vocab) == lora_a.ne[1]``. A and B are flipped: for our
  ``W[vocab, embd] + B @ A`` this writer stores ``lora_a = B`` (numpy ``[vocab, rank]``) and
  ``lora_b = A^T`` (numpy ``[embd, rank]``), and the reader flips them back.
* A tied output head (no ``output.weight`` in the model: llama.cpp reuses ``token_embd.weight``
  as the head under the *same* tensor name). An ``output.weight`` pair is then rejected at load
  ("does not exist in base model"), and a ``token_embd.weight`` pair is also looked up by the
  head's matrix product, where its flipped shapes cannot multiply (ggml aborts the process with a
  failed GGML_ASSERT in ggml_mul_mat). So a tied head cannot be adapted at all, and the
  embedding only when the model has its own ``output.weight``.
* A rejected adapter is not a clean error in llama-cpp-python 0.3.36: llama.cpp logs the
  reason and returns NULL, but the binding's result is a NULL pointer *object*, which its
  ``is None`` check misses, so the first decode crashes (segfault). Hence the refusals here.
* Types: the loader accepts any ggml type whose block divides ``ne[0]`` (the row length), and
  the CPU matrix product converts the activations to the weight type's dot-product partner
  first: F32 pairs multiply F32 activations exactly; an F16 ``A`` rounds the activations to
  F16; a Q8_0 ``A`` quantizes them to Q8_0 blocks (as the Q4/Q8 base weights already do). This
  writer offers F32, F16 and Q8_0 for ``A`` (Q8_0 keeps a one-hot 1.0 to within 1e-4, but rounds
  a dense residual ``A`` of row pairs to 8 bits) and F32 or F16 for ``B``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, MODEL_ARCH_NAMES, GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from .. import quant
from ..errors import InputError
from .gguf_writer import GGUFWriter

A_TYPES = ("F32", "F16", "Q8_0")
B_TYPES = ("F32", "F16")
TOKEN_EMBD = "token_embd.weight"
OUTPUT = "output.weight"
# Weights llama.cpp multiplies through build_lora_mm for the architectures this project exports
# (llama, qwen2, qwen3, gemma3); token_embd.weight is handled on the lookup path.
_LINEAR = re.compile(r"blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight")


def lora_target(name: str) -> bool:
    """Whether llama.cpp applies a LoRA pair on tensor ``name`` (a GGUF model tensor name)."""
    return name in (TOKEN_EMBD, OUTPUT) or _LINEAR.fullmatch(name) is not None


def _as_float32(name: str, which: str, t: Any) -> torch.Tensor:
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t)
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name}: {which} must be a torch tensor or numpy array, got "
                         f"{type(t).__name__}; pass (A, B) tensors")
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise InputError(f"{name}: {which} has dtype {t.dtype}; pass a real float tensor")
    t = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: {which} holds NaN/Inf values; pass finite tensors")
    return t


def _check_type(t: str, allowed: tuple[str, ...], which: str) -> str:
    u = str(t).upper()
    if u not in allowed:
        raise InputError(f"{which} {t!r} is not supported for LoRA tensors; choose one of "
                         f"{', '.join(allowed)}")
    return u


def _base_info(base_model: str | os.PathLike) -> tuple[str, dict[str, tuple[int, ...]]]:
    """(architecture, {tensor name: numpy shape}) of a model GGUF."""
    try:
        reader = GGUFReader(str(base_model))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the base model {base_model} as GGUF ({e}); pass the model "
                         f"file the adapter is meant for") from e
    arch = _string_field(reader, "general.architecture") or ""
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    return arch, shapes


def _string_field(reader: GGUFReader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, str) else None


def write_lora_adapter(path: str | os.PathLike, arch: str,
                       pairs: Mapping[str, Any], *, alpha: float = 0.0,
                       a_type: str = "F32", b_type: str = "F32",
                       base_model_name: str | None = None,
                       base_model: str | os.PathLike | None = None) -> tuple[int, str]:
    """Write ``pairs`` ({GGUF tensor name: (A, B)}) as a llama.cpp LoRA adapter at ``path``.

    ``A`` is ``[rank, in]`` and ``B`` is ``[out, rank]`` for a base weight of numpy shape
    ``[out, in]`` (PyTorch layout; an :class:`~cwp_export.protect.outliers.OutlierPair` works as a
    value too); llama.cpp then computes ``W @ x + B @ (A @ x)``. ``alpha`` = 0 applies every
    pair with scale 1 (see the module docstring). ``a_type``/``b_type``: storage of A (F32, F16,
    Q8_0) and B (F32, F16). ``base_model_name`` is recorded as ``general.base_model.0.name``.
    ``base_model``: the model GGUF the adapter is for; when given, names, shapes and the
    architecture are checked against it, and ``token_embd.weight`` pairs are allowed only when it
    has its own ``output.weight``. Tensors are written in the order of ``pairs``; the same input
    gives the same bytes. The file is written atomically; returns (size, sha256).
    """
    a_type = _check_type(a_type, A_TYPES, "a_type")
    b_type = _check_type(b_type, B_TYPES, "b_type")
    if not isinstance(arch, str) or arch not in MODEL_ARCH_NAMES.values():
        raise InputError(f"unknown architecture {arch!r}; pass the base model's "
                         f"general.architecture (e.g. 'llama')")
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha must be a number, got {alpha!r}; use 0 to apply pairs with "
                         f"scale 1") from None
    if not math.isfinite(alpha):
        raise InputError(f"alpha must be finite, got {alpha}; use 0 to apply pairs with scale 1")
    if not pairs:
        raise InputError("no LoRA pairs to write; pass at least one {name: (A, B)}")

    base_shapes: dict[str, tuple[int, ...]] | None = None
    if base_model is not None:
        base_arch, base_shapes = _base_info(base_model)
        if base_arch != arch:
            raise InputError(f"the adapter architecture {arch!r} differs from the base model's "
                             f"{base_arch!r} ({base_model}); llama.cpp refuses the mismatch: pass "
                             f"arch={base_arch!r}")

    checked: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for name, pair in pairs.items():
        if hasattr(pair, "A") and hasattr(pair, "B"):
            pair = (pair.A, pair.B)
        if not isinstance(name, str):
            raise InputError(f"LoRA pair names must be GGUF tensor names (str), got {name!r}")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(f"{name}: a pair must be (A, B), got {type(pair).__name__}")
        a = _as_float32(name, "A", pair[0])
        b = _as_float32(name, "B", pair[1])
        _check_pair(name, a, b, a_type, base_shapes)
        checked.append((name, a, b))

    w = GGUFWriter()
    w.add_string("general.architecture", arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_f32("adapter.lora.alpha", alpha)
    if base_model_name:
        w.add_u32("general.base_model.count", 1)
        w.add_string("general.base_model.0.name", str(base_model_name))
    for name, a, b in checked:
        if name == TOKEN_EMBD:  # lookup path: lora_a = B [vocab, rank], lora_b = A^T [embd, rank]
            stored = ((f"{name}.lora_a", b, b_type), (f"{name}.lora_b", a.T.contiguous(), a_type))
        else:
            stored = ((f"{name}.lora_a", a, a_type), (f"{name}.lora_b", b, b_type))
        for tname, t, tt in stored:
            if tt == "F16" and bool((t.abs() > 65504.0).any()):
                which = "a_type" if (tname.endswith("lora_a")) != (name == TOKEN_EMBD) else "b_type"
                raise InputError(f"{tname} holds values beyond the F16 range (|x| > 65504); "
                                 f"store it with {which}='F32'")
            qt = quant.get(tt)
            w.add_tensor(tname, tuple(t.shape), qt.ggml_type, lambda t=t, qt=qt: qt.encode(t))
    return w.write(Path(path))


def _check_pair(name: str, a: torch.Tensor, b: torch.Tensor, a_type: str,
                base_shapes: dict[str, tuple[int, ...]] | None) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise InputError(f"{name}: A and B must be 2-D (A [rank, in], B [out, rank]), got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}; 1-D tensors (norms, biases) "
                         f"cannot carry a LoRA pair in llama.cpp")
    if not lora_target(name):
        raise InputError(f"{name}: llama.cpp applies LoRA pairs only to token_embd.weight, "
                         f"output.weight and blk.N.{{attn_q,attn_k,attn_v,attn_output,ffn_gate,"
                         f"ffn_up,ffn_down}}.weight; a pair on {name} would be rejected or "
                         f"ignored: leave it out")
    rank, n_in = a.shape
    n_out = b.shape[0]
    if b.shape[1] != rank:
        raise InputError(f"{name}: A is {tuple(a.shape)} ([rank, in]) but B is {tuple(b.shape)}; "
                         f"B must be [out, {rank}]")
    if rank == 0:
        raise InputError(f"{name}: the pair has rank 0 (no columns or rows); leave it out")
    if base_shapes is not None:
        if name not in base_shapes:
            hint = (" (the model ties its output head to token_embd.weight, which llama.cpp "
                    "cannot adapt)" if name == OUTPUT else "")
            raise InputError(f"{name}: no such tensor in the base model{hint}; llama.cpp "
                             f"refuses pairs for unknown tensors: leave it out")
        if base_shapes[name] != (n_out, n_in):
            raise InputError(f"{name}: the pair adapts a [{n_out}, {n_in}] weight but the base "
                             f"model's is {list(base_shapes[name])} (numpy order [out, in]); "
                             f"build the pair from that model's tensor")
    if name == TOKEN_EMBD:
        if base_shapes is None:
            raise InputError("token_embd.weight: pass base_model= so the writer can check that "
                             "the model has its own output.weight; with a tied head llama.cpp "
                             "would apply this pair to the head and abort")
        if OUTPUT not in base_shapes:
            raise InputError("token_embd.weight: the base model ties its output head to "
                             "token_embd.weight, and llama.cpp would apply this pair to the head "
                             "too, with shapes that abort the process; leave it out")
    row_len = rank if name == TOKEN_EMBD else n_in  # the row length of the tensor holding A
    block = GGML_QUANT_SIZES[GGMLQuantizationType[a_type]][0]
    if row_len % block:
        raise InputError(f"{name}: A is stored in rows of {row_len} values, not a multiple of the "
                         f"{a_type} block of {block}, which llama.cpp cannot load; use "
                         f"a_type='F16' or 'F32'")


def read_lora_adapter(path: str | os.PathLike) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read a LoRA adapter GGUF into {base tensor name: (A, B)} as float32 tensors in the layout
    :func:`write_lora_adapter` takes (A ``[rank, in]``, B ``[out, rank]``), dequantizing
    whatever types the file holds. Reads the file with gguf-py's reader, independently of the
    writer."""
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path} as GGUF ({e}); pass a LoRA adapter .gguf") from e
    gtype, atype = _string_field(reader, "general.type"), _string_field(reader, "adapter.type")
    if gtype != "adapter" or atype != "lora":
        raise InputError(f"{path} is not a LoRA adapter (general.type={gtype!r}, "
                         f"adapter.type={atype!r}); pass a file with general.type 'adapter' and "
                         f"adapter.type 'lora'")
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for t in reader.tensors:
        base, dot, part = t.name.rpartition(".")
        if not dot or part not in ("lora_a", "lora_b"):
            if t.name.endswith("_norm.weight"):
                continue  # llama.cpp skips these too
            raise InputError(f"{path}: tensor {t.name!r} is neither NAME.lora_a nor NAME.lora_b; "
                             f"the file is not a LoRA adapter")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        values = dequantize(np.asarray(t.data), GGMLQuantizationType(int(t.tensor_type)))
        halves.setdefault(base, {})[part] = torch.from_numpy(
            np.array(values, dtype=np.float32, order="C").reshape(shape))  # a copy, writable
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for base, h in halves.items():
        if set(h) != {"lora_a", "lora_b"}:
            raise InputError(f"{path}: the pair for {base} lacks {({'lora_a', 'lora_b'} - set(h)).pop()}; "
                             f"the file is incomplete")
        if base == TOKEN_EMBD:
            out[base] = (h["lora_b"].T.contiguous(), h["lora_a"])
        else:
            out[base] = (h["lora_a"], h["lora_b"])
    return out
