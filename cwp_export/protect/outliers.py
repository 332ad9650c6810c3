"""Outlier columns and rows of a quantized weight, restored by one low-rank (LoRA) pair.

DESIGN.md section 4, mechanism 3. A weight ``W`` is stored quantized; ``W_q = dequant(Q(W))`` is
what llama.cpp multiplies with. For a set of columns ``C`` and rows ``R`` this module builds
``A`` and ``B`` with ``rank = |C| + |R|`` such that

    W_q + B @ A == W   on every element of the columns C and of the rows R,
    W_q + B @ A == W_q everywhere else (B @ A is exactly 0 there),

up to the precision the pair is later stored in (exact in float32 arithmetic: every element of
``B @ A`` is a single product with 1.0).

* Columns: ``A_c = I[C, :]`` (one-hot selection rows, ``|C| × in``) and
  ``B_c = (W - W_q)[:, C]`` (``out × |C|``). ``B_c @ A_c`` adds the residual on columns C only.
* Rows: with the columns already fixed, ``W1 = W_q + B_c @ A_c``, ``A_r = (W - W1)[R, :]``
  (``|R| × in``, zero on the columns C, so the overlap C × R is not counted twice) and
  ``B_r = I[:, R]`` (one-hot, ``out × |R|``).
* ``A = cat(A_c, A_r)`` along rows, ``B = cat(B_c, B_r)`` along columns.

Layout conventions
------------------
Every tensor here is in PyTorch ``nn.Linear`` layout and in GGUF's *numpy* order: ``W`` is
``[out, in]`` (one row per output feature; ``y = W @ x``), ``A`` is ``[rank, in]`` and ``B`` is
``[out, rank]``, so the adapted product is ``W_q @ x + B @ (A @ x)``. ggml lists dimensions the
other way round (``ne[0]`` is the row length, the fastest-varying one): the same ``W`` has
``ne = [in, out]``, ``A`` has ``ne = [in, rank]`` and ``B`` has ``ne = [rank, out]``. The weight
must already be in the GGUF model's layout (for llama-style Q/K weights that is *after* the
rotary row permutation the converter applies), so row indices name rows of the GGUF tensor.

For ``token_embd.weight`` the same convention holds with ``out = n_vocab`` rows (one per token)
and ``in = n_embd``; :mod:`cwp_export.formats.lora` stores that pair the way llama.cpp's
embedding-lookup path expects.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import InputError


@dataclass(frozen=True)
class PairStats:
    """Size of one outlier pair: ``rank = n_columns + n_rows``, ``A`` is ``[rank, n_in]`` and
    ``B`` is ``[n_out, rank]``."""

    n_out: int
    n_in: int
    n_columns: int
    n_rows: int

    @property
    def rank(self) -> int:
        return self.n_columns + self.n_rows

    @property
    def params(self) -> int:
        """Values stored for the pair (A and B together)."""
        return self.rank * (self.n_in + self.n_out)

    def nbytes(self, a_type: str = "F32", b_type: str = "F32") -> int:
        """Tensor bytes of the pair with A stored as ``a_type`` and B as ``b_type`` (ggml type
        names; quantized types need rows of whole blocks). Excludes the file's header and padding."""
        return _tensor_bytes(self.rank, self.n_in, a_type) + _tensor_bytes(self.n_out, self.rank, b_type)

    @property
    def bytes_by_type(self) -> dict[str, int]:
        """Bytes for the storage choices the LoRA writer offers: all F32, all F16 and Q8_0 A with
        F16 B (``None``-free: a Q8_0 entry is left out when ``n_in`` is not a multiple of 32)."""
        out = {"F32": self.nbytes("F32", "F32"), "F16": self.nbytes("F16", "F16")}
        if self.n_in % GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0] == 0:
            out["Q8_0+F16"] = self.nbytes("Q8_0", "F16")
        return out


def _tensor_bytes(rows: int, row_len: int, type_name: str) -> int:
    try:
        t = GGMLQuantizationType[type_name.upper()]
    except KeyError:
        raise InputError(f"unknown ggml type {type_name!r}; use F32, F16 or Q8_0") from None
    block, size = GGML_QUANT_SIZES[t]
    if row_len % block:
        raise InputError(f"rows of {row_len} values do not hold whole {t.name} blocks of {block}; "
                         f"use F32 or F16")
    return rows * (row_len // block) * size


@dataclass(frozen=True)
class OutlierPair:
    """One LoRA pair restoring ``columns`` and ``rows`` of a weight: ``W_q + B @ A``."""

    A: torch.Tensor  # [rank, in], float32
    B: torch.Tensor  # [out, rank], float32
    columns: tuple[int, ...]
    rows: tuple[int, ...]
    stats: PairStats

    def delta(self) -> torch.Tensor:
        """``B @ A``: what the pair adds to ``W_q`` ([out, in], float32)."""
        return self.B @ self.A


def _indices(name: str, idx: Sequence[int] | torch.Tensor | None, limit: int, what: str) -> list[int]:
    if idx is None:
        return []
    if isinstance(idx, torch.Tensor):
        if idx.ndim > 1:
            raise InputError(f"{name}: {what} must be a 1-D list of indices, got shape "
                             f"{tuple(idx.shape)}; flatten it")
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise InputError(f"{name}: {what} must be integer indices, got dtype {idx.dtype}; "
                             f"pass e.g. mask.nonzero().flatten() instead of a mask")
        values = [int(i) for i in idx.tolist()]
    else:
        values = []
        for i in idx:
            try:
                if isinstance(i, bool):
                    raise TypeError
                values.append(operator.index(i))
            except TypeError:
                raise InputError(f"{name}: {what} must be integer indices, got {i!r}; pass ints") from None
    bad = [i for i in values if not 0 <= i < limit]
    if bad:
        raise InputError(f"{name}: {what} index {bad[0]} is out of range for size {limit}; use "
                         f"indices 0..{limit - 1} (no negative indices)")
    if len(set(values)) != len(values):
        seen: set[int] = set()
        dup = next(i for i in values if i in seen or seen.add(i))
        raise InputError(f"{name}: {what} index {dup} is given more than once; pass each index once")
    return values


def outlier_pair(weight: torch.Tensor, dequantized: torch.Tensor,
                 columns: Sequence[int] | torch.Tensor | None = None,
                 rows: Sequence[int] | torch.Tensor | None = None,
                 name: str = "weight") -> OutlierPair:
    """Build the pair restoring ``columns`` and ``rows`` of ``weight`` on top of ``dequantized``.

    ``weight`` is the original W and ``dequantized`` its quantization W_q, both ``[out, in]``
    (GGUF numpy layout, see the module docstring); they are used as float32. ``columns`` index
    the input dimension, ``rows`` the output dimension; each order is kept (A's k-th row selects
    ``columns[k]``; the row part follows). Empty sets give a rank-0 pair. ``name`` only labels
    errors.
    """
    if not isinstance(weight, torch.Tensor) or not isinstance(dequantized, torch.Tensor):
        raise InputError(f"{name}: weight and dequantized weight must be torch tensors; convert "
                         f"numpy arrays with torch.from_numpy")
    if weight.ndim != 2:
        raise InputError(f"{name}: weight must be 2-D [out, in], got shape {tuple(weight.shape)}; "
                         f"1-D tensors (norms, biases) are kept in F32 and need no pair")
    if tuple(weight.shape) != tuple(dequantized.shape):
        raise InputError(f"{name}: weight shape {tuple(weight.shape)} differs from the dequantized "
                         f"shape {tuple(dequantized.shape)}; pass both in the same [out, in] layout")
    if weight.is_complex() or dequantized.is_complex():
        raise InputError(f"{name}: complex tensors are not supported; pass real float tensors")
    w = weight.detach().to(device="cpu", dtype=torch.float32)
    wq = dequantized.detach().to(device="cpu", dtype=torch.float32)
    for label, t in (("weight", w), ("dequantized weight", wq)):
        if not torch.isfinite(t).all():
            raise InputError(f"{name}: the {label} holds NaN/Inf values; pass finite tensors")
    n_out, n_in = w.shape
    cols = _indices(name, columns, n_in, "column")
    rws = _indices(name, rows, n_out, "row")

    residual = w - wq
    c_idx = torch.tensor(cols, dtype=torch.long)
    r_idx = torch.tensor(rws, dtype=torch.long)

    a_c = torch.zeros(len(cols), n_in)
    a_c[torch.arange(len(cols)), c_idx] = 1.0
    b_c = residual[:, c_idx].clone()

    # The rows' residual after the columns are fixed: exactly zero on the columns C.
    fixed = wq.clone()
    fixed[:, c_idx] = wq[:, c_idx] + b_c
    a_r = (w - fixed)[r_idx, :].clone()
    a_r[:, c_idx] = 0.0
    b_r = torch.zeros(n_out, len(rws))
    b_r[r_idx, torch.arange(len(rws))] = 1.0

    a = torch.cat([a_c, a_r], dim=0).contiguous()
    b = torch.cat([b_c, b_r], dim=1).contiguous()
    stats = PairStats(n_out=n_out, n_in=n_in, n_columns=len(cols), n_rows=len(rws))
    return OutlierPair(a, b, tuple(cols), tuple(rws), stats)


def top_residual_columns(weight: torch.Tensor, dequantized: torch.Tensor, k: int,
                         activation_sq: torch.Tensor | None = None) -> list[int]:
    """The ``k`` columns with the largest squared residual ``sum_i (W - W_q)[i, j]^2``, weighted
    by ``activation_sq[j]`` (E[x_j^2]) when given (DESIGN.md section 4: the activation-weighted
    choice is the one that matters). Ties break toward the lower index; sorted ascending."""
    r2 = (weight.float() - dequantized.float()).pow(2).sum(0)
    if activation_sq is not None:
        if tuple(activation_sq.shape) != (weight.shape[1],):
            raise InputError(f"activation_sq has shape {tuple(activation_sq.shape)}; expected "
                             f"({weight.shape[1]},), one value per input column")
        r2 = r2 * activation_sq.float()
    k = max(0, min(int(k), r2.numel()))
    order = torch.sort(r2, descending=True, stable=True).indices[:k]
    return sorted(int(j) for j in order)
