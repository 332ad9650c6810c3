"""The architecture adapter interface.

An adapter is the only place that knows a Hugging Face architecture's tensor names, its config
keys and the layout llama.cpp expects. It turns a config into GGUF hyperparameters and a source
tensor index into an ordered list of :class:`TensorSpec` (GGUF name, HF name, shape, transform).
Transforms are pure functions on torch tensors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar
from collections.abc import Callable, Sequence

from gguf import GGUFValueType

from ..errors import InputError

Transform = Callable[[Any], Any]  # torch.Tensor -> torch.Tensor


@dataclass(frozen=True)
class TensorSpec:
    """One GGUF tensor: where it comes from and how it is reshaped on the way."""

    name: str                       # GGUF name, e.g. "blk.0.attn_q.weight"
    source: str | None              # HF tensor name, or None for a generated tensor
    shape: tuple[int, ...]          # output shape, PyTorch order
    transform: Transform | None = None
    generate: Callable[[], Any] | None = None  # for generated tensors (no source)
    role: str = ""                  # e.g. "attn_q"; lets later stages reason about tensors

    @property
    def is_1d(self) -> bool:
        return len(self.shape) == 1


@dataclass(frozen=True)
class HParam:
    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


def u32(key: str, v: int) -> HParam:
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        n = -1
    if n != v or not 0 <= n < 2**32:
        raise InputError(f"config.json gives {v!r} for {key}, which must be a whole number in "
                         f"0..{2**32 - 1}; the checkpoint's config is corrupt")
    return HParam(key, n, GGUFValueType.UINT32)


def f32(key: str, v: float) -> HParam:
    try:
        return HParam(key, float(v), GGUFValueType.FLOAT32)
    except (TypeError, ValueError) as e:
        raise InputError(f"config.json gives {v!r} for {key}, which must be a number; the "
                         f"checkpoint's config is corrupt") from e


def permute_rope_rows(w, n_head: int):
    """Reorder Q/K rows from HF's rotate-half layout to llama.cpp's interleaved-pair layout.

    Within each head HF keeps the first halves of all rotary pairs, then the second halves;
    llama.cpp's LLaMA rope expects the two members of a pair next to each other.
    """
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
             .transpose(1, 2).reshape(w.shape))


@dataclass
class Config:
    """Typed access to a Hugging Face config dict with clear errors for missing keys."""

    raw: dict[str, Any]
    arch: str = ""

    def get(self, *keys: str, default: Any = None) -> Any:
        for k in keys:
            if self.raw.get(k) is not None:
                return self.raw[k]
        return default

    def need(self, *keys: str) -> Any:
        v = self.get(*keys)
        if v is None:
            raise InputError(f"config.json of this {self.arch} model has no {keys[0]!r}; the "
                             f"checkpoint's config is incomplete")
        return v

    def count(self, *keys: str, default: int | None = None) -> int:
        """A size or count (layers, heads, dims): a whole number > 0, else an InputError."""
        v = self.need(*keys) if default is None else self.get(*keys, default=default)
        whole = (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float)
                                                                   and v.is_integer())
        if not whole or v < 1:
            raise InputError(f"config.json of this {self.arch} model gives {v!r} for {keys[0]!r}, "
                             f"which must be a whole number > 0; the checkpoint's config is corrupt")
        return int(v)

    def rope(self, kind: str = "full_attention") -> dict[str, Any]:
        """Rope settings in one form for both config styles (``rope_parameters`` in transformers
        ≥5, or ``rope_theta`` + ``rope_scaling`` before it)."""
        params = self.raw.get("rope_parameters")
        if isinstance(params, dict) and params:
            if kind in params or {"full_attention", "sliding_attention"} & params.keys():
                params = params.get(kind) or {}
            out = dict(params)
        else:
            out = dict(self.raw.get("rope_scaling") or {})
            if kind == "sliding_attention":
                out = {}
                if self.raw.get("rope_local_base_freq") is not None:
                    out["rope_theta"] = self.raw["rope_local_base_freq"]
            elif self.raw.get("rope_theta") is not None:
                out["rope_theta"] = self.raw["rope_theta"]
        if "type" in out and "rope_type" not in out:
            out["rope_type"] = out["type"]
        return out


class ArchAdapter:
    """Base class: subclasses set the class attributes and override the hooks they need."""

    hf_architectures: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[str] = ""
    # HF per-layer suffix → (GGUF per-layer name, role)
    layer_map: ClassVar[dict[str, str]] = {}
    # tensors present in some checkpoints that carry no weights llama.cpp needs
    ignored: ClassVar[tuple[str, ...]] = (r".*\.rotary_emb\.inv_freq",)
    has_qkv_bias: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any]):
        self.cfg = Config(config, self.gguf_arch)
        c = self.cfg
        self.n_layer = c.count("num_hidden_layers", "n_layer")
        self.n_embd = c.count("hidden_size", "n_embd")
        self.n_ff = c.count("intermediate_size", "n_inner")
        self.n_head = c.count("num_attention_heads", "n_head")
        self.n_head_kv = c.count("num_key_value_heads", default=self.n_head)
        self.head_dim = c.count("head_dim", default=self.n_embd // self.n_head)
        self.vocab_size = c.count("vocab_size")
        self.tied = bool(c.get("tie_word_embeddings", default=self.default_tied))
        if self.n_head % self.n_head_kv:
            raise InputError(f"config.json: num_attention_heads={self.n_head} is not a multiple of "
                             f"num_key_value_heads={self.n_head_kv}")

    default_tied: ClassVar[bool] = False
    default_context_length: ClassVar[int | None] = None  # used when config.json has none
    always_head_dims: ClassVar[bool] = False              # write key/value_length even if implied

    # -- hyperparameters -------------------------------------------------------------------
    def hparams(self) -> list[HParam]:
        c, a = self.cfg, self.gguf_arch
        n_ctx = c.get("max_position_embeddings", default=self.default_context_length)
        out = [
            u32(f"{a}.context_length", n_ctx if n_ctx is not None else c.need("max_position_embeddings")),
            u32(f"{a}.embedding_length", self.n_embd),
            u32(f"{a}.block_count", self.n_layer),
            u32(f"{a}.feed_forward_length", self.n_ff),
            u32(f"{a}.attention.head_count", self.n_head),
            u32(f"{a}.attention.head_count_kv", self.n_head_kv),
            f32(f"{a}.attention.layer_norm_rms_epsilon", c.get("rms_norm_eps", default=1e-6)),
        ]
        if self.always_head_dims or c.get("head_dim") is not None:
            out += [u32(f"{a}.attention.key_length", self.head_dim),
                    u32(f"{a}.attention.value_length", self.head_dim)]
        out += self.rope_hparams()
        return out

    def rope_hparams(self) -> list[HParam]:
        a, rope = self.gguf_arch, self.cfg.rope()
        out = [f32(f"{a}.rope.freq_base", rope.get("rope_theta", 10000.0))]
        rtype = (rope.get("rope_type") or "default").lower()
        factor = rope.get("factor")
        if rtype == "linear" and factor is not None:
            out += [HParam(f"{a}.rope.scaling.type", "linear", GGUFValueType.STRING),
                    f32(f"{a}.rope.scaling.factor", factor)]
        elif rtype == "yarn" and factor is not None:
            out += [HParam(f"{a}.rope.scaling.type", "yarn", GGUFValueType.STRING),
                    f32(f"{a}.rope.scaling.factor", factor),
                    u32(f"{a}.rope.scaling.original_context_length",
                        rope.get("original_max_position_embeddings")
                        or self.cfg.need("max_position_embeddings"))]
        elif rtype not in ("default", "llama3"):
            raise InputError(f"rope type {rtype!r} in config.json is not supported by cwp-export "
                             f"for {self.gguf_arch}; supported: default, linear, yarn, llama3")
        return out

    # -- tensors ---------------------------------------------------------------------------
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF per-layer name → expected HF shape (for the shape check against config)."""
        q, kv, e, f = self.n_head * self.head_dim, self.n_head_kv * self.head_dim, self.n_embd, self.n_ff
        return {
            "attn_q.weight": (q, e), "attn_k.weight": (kv, e), "attn_v.weight": (kv, e),
            "attn_output.weight": (e, q), "attn_q.bias": (q,), "attn_k.bias": (kv,),
            "attn_v.bias": (kv,), "attn_q_norm.weight": (self.head_dim,),
            "attn_k_norm.weight": (self.head_dim,), "ffn_gate.weight": (f, e),
            "ffn_up.weight": (f, e), "ffn_down.weight": (e, f),
        }

    def layer_transform(self, gguf_suffix: str) -> Transform | None:
        return None

    def global_transform(self, gguf_name: str) -> Transform | None:
        return None

    def tensor_specs(self, source_shapes: dict[str, tuple[int, ...]]) -> list[TensorSpec]:
        """Map every source tensor to its GGUF tensor, checking names and shapes."""
        specs: list[TensorSpec] = []
        used: set[str] = set()
        expected = self.expected_shapes()

        def take(hf: str, gg: str, shape: tuple[int, ...], transform: Transform | None, role: str):
            if hf not in source_shapes:
                raise InputError(f"tensor {hf!r} is missing from the checkpoint; a "
                                 f"{self.hf_architectures[0]} with this config needs it")
            got = tuple(source_shapes[hf])
            if got != shape:
                raise InputError(f"tensor {hf!r} has shape {list(got)} but config.json implies "
                                 f"{list(shape)}; the weights do not match the config")
            used.add(hf)
            specs.append(TensorSpec(gg, hf, shape, transform, role=role))

        e = self.n_embd
        take("model.embed_tokens.weight", "token_embd.weight", (self.vocab_size, e),
             self.global_transform("token_embd.weight"), "token_embd")
        for i in range(self.n_layer):
            for hf_suffix, gg_suffix in self.layer_map.items():
                hf = f"model.layers.{i}.{hf_suffix}"
                optional = gg_suffix.endswith(".bias") and not self.has_qkv_bias
                if optional and hf not in source_shapes:
                    continue
                shape = expected.get(gg_suffix, (e,))
                take(hf, f"blk.{i}.{gg_suffix}", shape, self.layer_transform(gg_suffix),
                     gg_suffix.rsplit(".", 1)[0])
        take("model.norm.weight", "output_norm.weight", (e,),
             self.global_transform("output_norm.weight"), "output_norm")
        if "lm_head.weight" in source_shapes and not self.tied:
            take("lm_head.weight", "output.weight", (self.vocab_size, e), None, "output")
        elif not self.tied:
            raise InputError("tensor 'lm_head.weight' is missing and config.json says the "
                             "embeddings are not tied; the checkpoint is incomplete")
        else:
            used.add("lm_head.weight")
        specs += self.extra_tensors()

        unknown = [n for n in source_shapes if n not in used
                   and not any(re.fullmatch(p, n) for p in self.ignored)]
        if unknown:
            more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
            raise InputError(f"the checkpoint holds tensors a {self.hf_architectures[0]} does not "
                             f"have: {', '.join(sorted(unknown)[:3])}{more}; is config.json's "
                             f"architecture right?")
        return specs

    def extra_tensors(self) -> list[TensorSpec]:
        return []

    def n_vocab_rows(self) -> int:
        return self.vocab_size

    def rope_freqs_llama3(self) -> TensorSpec | None:
        """llama3-style rope scaling is stored by llama.cpp as a per-dimension factor tensor."""
        rope = self.cfg.rope()
        if (rope.get("rope_type") or "").lower() != "llama3":
            return None
        base = float(rope.get("rope_theta", 10000.0))
        dim = self.head_dim
        factor = float(rope.get("factor", 8.0))
        lo, hi = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
        old_ctx = float(rope.get("original_max_position_embeddings", 8192))
        def gen():
            # computed in float32 like transformers' llama3 rope initialisation
            import torch
            inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
            wavelen = 2 * math.pi / inv_freq
            smooth = (old_ctx / wavelen - lo) / (hi - lo)
            mid = 1.0 / ((1 - smooth) / factor + smooth)
            out = torch.where(wavelen < old_ctx / hi, torch.ones_like(wavelen), mid)
            return torch.where(wavelen > old_ctx / lo, torch.full_like(wavelen, factor), out)

        return TensorSpec("rope_freqs.weight", None, (dim // 2,), generate=gen, role="rope_freqs")


def arch_names(adapters: Sequence[type[ArchAdapter]]) -> list[str]:
    return sorted(a for cls in adapters for a in cls.hf_architectures)

