"""llama.cpp's quantization presets: which GGML type each tensor of a model gets.

A preset such as ``Q4_K_M`` is not one type but a mixture: llama-quantize starts from the preset's
default type and then, tensor by tensor, gives some tensors more bits (the output head, ``attn_v``
and ``ffn_down`` in chosen layers, ...) and falls back to a legacy 32-block type where a row does
not hold whole 256-element K-quant blocks. This module reproduces that choice (llama.cpp's
``llama_tensor_get_type`` in ``src/llama-quant.cpp``, as vendored by llama-cpp-python 0.3.36) for
dense models of the architectures cwp-export converts, so our files carry exactly the tensor types
llama-quantize would have chosen.

Rules, for the presets here (``new`` starts as the preset's default type; ``i``/``n`` count the
tensors of a kind in llama.cpp's loader order, blocks ascending, which for a dense model is the
layer index and the layer count; ``more_bits(i, n)`` = first eighth, last eighth, and every third
layer in between):

* not quantized: 1-D tensors (F32 here) and tensors whose name does not end in ``weight`` or ends
  in ``_norm.weight`` (kept in the input's type);
* ``output.weight``, and ``token_embd.weight`` when there is no ``output.weight`` (tied): Q8_0 if
  the row length is not a multiple of the default type's block (or the arch is falcon), otherwise
  Q6_K unless the default is Q8_0;
* ``attn_v`` (and fused ``attn_qkv``/``attn_kv_b``): Q2_K → Q4_K if n_head/n_head_kv ≥ 4 else Q3_K;
  Q3_K_M → Q5_K for the first two, Q4_K after; Q4_K_M/Q5_K_M → Q6_K where ``more_bits``; Q4_K_S →
  Q5_K for the first four; then on a 70B model (llama with 80 layers and GQA, qwen2 with 80 layers)
  Q3_K/Q4_K → Q5_K;
* ``ffn_down``: Q2_K → Q3_K; Q3_K_M → Q5_K in the first sixteenth, else Q4_K; Q4_K_M/Q5_K_M →
  Q6_K where ``more_bits``; Q4_K_S → Q5_K in the first eighth;
* ``attn_output``: Q2_K → Q3_K; Q3_K_M → Q4_K;
* everything else (attn_q, attn_k, ffn_gate, ffn_up, untied token_embd): the default type;
* finally, when the row length is not a multiple of the chosen type's block: Q2_K/Q3_K → Q4_0,
  Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0 (a 32-block type stays), and F16 when even that does not
  fit (row length not a multiple of 32).

Only plain data and ``gguf`` constants are used here (no torch); importing it through the
``cwp_export.quant`` package does import torch, as that package's ``__init__`` does.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ..errors import InputError

PRESETS: tuple[str, ...] = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q3_K_M",
                            "Q2_K")

# general.file_type each preset announces.
FILE_TYPES: dict[str, LlamaFileType] = {
    "Q8_0": LlamaFileType.MOSTLY_Q8_0,
    "Q6_K": LlamaFileType.MOSTLY_Q6_K,
    "Q5_K_M": LlamaFileType.MOSTLY_Q5_K_M,
    "Q5_K_S": LlamaFileType.MOSTLY_Q5_K_S,
    "Q4_K_M": LlamaFileType.MOSTLY_Q4_K_M,
    "Q4_K_S": LlamaFileType.MOSTLY_Q4_K_S,
    "Q3_K_M": LlamaFileType.MOSTLY_Q3_K_M,
    "Q2_K": LlamaFileType.MOSTLY_Q2_K,
}

# llama_ftype_get_default_type
DEFAULT_TYPES: dict[str, str] = {
    "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K", "Q4_K_M": "Q4_K",
    "Q4_K_S": "Q4_K", "Q3_K_M": "Q3_K", "Q2_K": "Q2_K",
}

# tensor_type_fallback: K-quant (256-element blocks) → legacy 32-element-block type.
FALLBACKS: dict[str, str] = {
    "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}

# Types a plan may name: everything the presets produce, plus the float types.
TYPES: tuple[str, ...] = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K",
                          "Q5_1", "Q5_0", "Q4_1", "Q4_0")

# Architectures whose tensor names and rules are covered (GGUF arch names).
ARCHS: tuple[str, ...] = ("llama", "qwen2", "qwen3", "gemma3")


@dataclass(frozen=True)
class TensorInfo:
    name: str                 # GGUF name, e.g. "blk.3.attn_v.weight"
    shape: tuple[int, ...]    # PyTorch order: (rows, n_per_row)


def block_size(type_name: str) -> int:
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]


def file_type(preset: str) -> int:
    """The ``general.file_type`` value a file quantized with ``preset`` carries."""
    return int(FILE_TYPES[_preset(preset)])


def _preset(preset: str) -> str:
    p = str(preset).upper()
    if p not in PRESETS:
        raise InputError(f"unknown quantization preset {preset!r}; choose one of "
                         f"{', '.join(PRESETS)}")
    return p


def _layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: dimensions up to the last one larger than 1, counted in ggml order."""
    ne = list(reversed(shape))
    n = 1
    for i, d in enumerate(ne):
        if d > 1:
            n = i + 1
    return n


def _quantizable(t: TensorInfo) -> bool:
    """llama.cpp's tensor_allows_quantization, for the tensors of the supported architectures."""
    return (_n_dims(t.shape) >= 2 and t.name.endswith("weight")
            and "_norm.weight" not in t.name and "ffn_gate_inp.weight" not in t.name)


def _category(name: str) -> str:
    """tensor_get_category (substring matches, in llama.cpp's order)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                     ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _use_more_bits(i: int, n: int) -> bool:
    # first eighth, last eighth, and every third layer in between (C integer arithmetic; the
    # modulo only runs when i >= n // 8, so its operand is never negative)
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(new: str, n_per_row: int) -> str:
    if n_per_row % block_size(new) == 0:
        return new
    new = FALLBACKS.get(new, new)  # types with 32-element blocks have nothing smaller
    return new if n_per_row % block_size(new) == 0 else "F16"


def plan_types(preset: str, tensors: list[TensorInfo], *, arch: str, n_layer: int, n_head: int,
               n_head_kv: int, n_expert: int = 0) -> dict[str, str]:
    """GGUF tensor name → type name llama-quantize gives it under ``preset`` (without imatrix,
    without user overrides)."""
    p = _preset(preset)
    if arch not in ARCHS:
        raise InputError(f"quantization presets are implemented for {', '.join(ARCHS)} models, "
                         f"not {arch!r}")
    if n_expert > 1:
        raise InputError(f"this model has {n_expert} experts; quantization presets are only "
                         f"implemented for dense (non-MoE) models")
    for what, v in (("n_layer", n_layer), ("n_head", n_head), ("n_head_kv", n_head_kv)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{what} must be a whole number > 0, got {v!r}")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"tensor names are repeated in the plan: {', '.join(dup[:3])}")

    default = DEFAULT_TYPES[p]
    n_gqa = n_head // n_head_kv
    is_70b = n_layer == 80 and (arch == "qwen2" or (arch == "llama" and n_head != n_head_kv))
    tied = "output.weight" not in names

    # llama.cpp walks tensors sorted by block number (non-block tensors first), then by name;
    # the attn_v and ffn_down rules count tensors of their kind in that order
    order = sorted(tensors, key=lambda t: (_layer(t.name), t.name))
    n_attn_v = sum(_category(t.name) == "attn_v" for t in tensors)
    i_attn_v = i_ffn_down = 0

    out: dict[str, str] = {}
    for t in order:
        if len(t.shape) == 1:
            out[t.name] = "F32"
            continue
        if not _quantizable(t):
            out[t.name] = "F16"  # kept as in the input: F16 in an F16 conversion
            continue
        n_per_row = t.shape[-1]
        cat = _category(t.name)
        new = default
        if cat == "output" or (tied and cat == "token_embd"):
            if n_per_row % block_size(default) != 0:
                new = "Q8_0"
            elif new != "Q8_0":
                new = "Q6_K"
        elif cat == "attn_v":
            if p == "Q2_K":
                new = "Q4_K" if n_gqa >= 4 else "Q3_K"
            elif p == "Q3_K_M":
                new = "Q5_K" if i_attn_v < 2 else "Q4_K"
            elif p in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_attn_v, n_attn_v):
                new = "Q6_K"
            elif p == "Q4_K_S" and i_attn_v < 4:
                new = "Q5_K"
            if is_70b and new in ("Q3_K", "Q4_K"):
                new = "Q5_K"
            i_attn_v += 1
        elif cat == "ffn_down":
            i = i_ffn_down
            if p == "Q2_K":
                new = "Q3_K"
            elif p == "Q3_K_M":
                new = "Q5_K" if i < n_layer // 16 else "Q4_K"
            elif p in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n_layer):
                new = "Q6_K"
            elif p == "Q4_K_S" and i < n_layer // 8:
                new = "Q5_K"
            i_ffn_down += 1
        elif cat == "attn_output":
            if p == "Q2_K":
                new = "Q3_K"
            elif p == "Q3_K_M":
                new = "Q4_K"
        out[t.name] = _fallback(new, n_per_row)
    return {name: out[name] for name in names}  # in the caller's order


def apply_overrides(plan: dict[str, str], overrides: dict[str, str], *,
                    tensors: list[TensorInfo] | None = None) -> dict[str, str]:
    """A copy of ``plan`` with some tensors given another type (tensor by tensor, exact names).

    With ``tensors`` the override is also checked against the tensor's shape: vectors stay F32,
    and a quantized type's block must divide the row length.
    """
    shapes = {t.name: tuple(t.shape) for t in tensors} if tensors is not None else {}
    out = dict(plan)
    for name, qtype in overrides.items():
        if name not in plan:
            close = difflib.get_close_matches(str(name), list(plan), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(f"type override names tensor {name!r}, which this model does not "
                             f"have{hint}")
        q = str(qtype).upper()
        if q not in TYPES:
            raise InputError(f"type override for {name}: unknown type {qtype!r}; choose one of "
                             f"{', '.join(TYPES)}")
        shape = shapes.get(name)
        if shape is not None:
            if len(shape) == 1 and q != "F32":
                raise InputError(f"type override for {name}: it is a vector, which llama.cpp "
                                 f"keeps in F32; it cannot be {q}")
            if len(shape) > 1 and shape[-1] % block_size(q):
                raise InputError(f"type override for {name}: rows of {shape[-1]} values do not "
                                 f"hold whole {q} blocks of {block_size(q)}; choose another type")
        out[name] = q
    return out


__all__ = ["ARCHS", "DEFAULT_TYPES", "FALLBACKS", "FILE_TYPES", "PRESETS", "TYPES", "TensorInfo",
           "apply_overrides", "block_size", "file_type", "plan_types"]
