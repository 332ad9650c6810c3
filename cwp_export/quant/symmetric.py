"""Symmetric (scale-only) GGML types: Q4_0, Q5_0, Q3_K, Q6_K and IQ4_NL, vectorised in PyTorch.

Every encoder follows ggml's ``quantize_<type>`` (``ggml-quants.c``) decision for decision, but
works on all blocks of all rows at once, on whatever device the tensor is on:

* ``importance=None``: ggml's no-imatrix algorithm (``quantize_row_<type>_ref``; for IQ4_NL the
  ``quantize_iq4_nl`` path with weights ``x²``, which is what ``ggml_quantize_chunk`` runs).
* per column (shape ``(n_per_row,)``): ggml's imatrix algorithm (``quantize_row_<type>_impl``)
  with that vector as ``quant_weights``.
* per element (the tensor's shape): the same imatrix algorithm with the per-column weight of each
  element replaced by its own weight (a generalisation; ggml has no equivalent).

Byte identity with ggml rests on reproducing its float32 arithmetic exactly:

* sums are accumulated left to right in float32 (:func:`_seq_sum`), as the C loops do (ggml is
  built without ``-ffast-math``, and the libggml-base we check against holds no FMA
  instructions, so every operation rounds on its own, in source order);
* PyTorch's own shortcuts are avoided where they round differently: ``torch.sqrt`` on CPU is not
  correctly rounded (see :func:`_sqrt`) and ``number / tensor`` multiplies by a reciprocal
  (see :func:`_div`);
* products keep the C evaluation order (``w*x[i]*l`` is ``(w*x)*l``);
* ``nearest_int`` is reproduced bit for bit with the same 1.5·2²³ magic-number addition
  (round half to even for ``|v| < 2²²``, and the same garbage beyond);
* candidate-scale searches are replayed in the C loop order with its strict comparisons, so the
  first best candidate wins exactly as in ggml;
* scales go through fp16 with round-to-nearest-even (``GGML_FP32_TO_FP16``).

Large tensors are processed in chunks of whole rows (the imatrix paths of Q4_0/Q5_0 need each
row's mean square); within a chunk every block is handled at once.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from . import QuantType, register
from .cfloat import nearest_int, nearest_int_clamped, nearest_int_float, script, seq_sum0

_F32 = torch.float32
GROUP_MAX_EPS = float(np.float32(1e-15))
QK_K = 256
# Elements per row chunk. A candidate search (make_qx_quants: Q6_K, Q3_K, the imatrix paths)
# works on a few float32 [19 candidates, blocks] buffers per chunk: on CPU 2^18 elements keep them
# near a core's cache. The one-pass legacy paths (Q4_0/Q5_0 without importance) only pay per-op
# overhead, so they take 2^19. On a GPU bigger chunks mean fewer kernel launches.
_CHUNK_CPU = 1 << 18
_CHUNK_CPU_ONE_PASS = 1 << 19
_CHUNK_CUDA = 1 << 23

KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


# --------------------------------------------------------------------------------------- helpers

def _div(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """IEEE float32 division ``a / b`` where one side may be a Python number.

    ``number / tensor`` in PyTorch is ``reciprocal() * number`` and CUDA divides by a CPU scalar
    through its reciprocal too; both round twice. Promoting the number to a 0-d tensor on the
    other operand's device gives a true element-wise division, as the C code does."""
    if not isinstance(a, torch.Tensor):
        a = torch.tensor(a, dtype=_F32, device=b.device)
    if not isinstance(b, torch.Tensor):
        b = torch.tensor(b, dtype=_F32, device=a.device)
    return torch.div(a, b)


def _seq_sum(p: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension left to right in float32, starting from +0 like a C loop."""
    return seq_sum0(p.movedim(-1, 0).contiguous())


def _first_absmax_scan(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(amax, max) along the last dim: the first element of largest magnitude, like
    ``if (fabsf(v) > amax) { amax = fabsf(v); max = v; }`` starting from 0."""
    ax = x.abs().nan_to_num_(nan=0.0, posinf=float("inf"))  # NaN never wins a `>` test
    idx = ax.argmax(dim=-1, keepdim=True)  # argmax returns the first maximal index
    amax = ax.gather(-1, idx).squeeze(-1)
    mx = x.gather(-1, idx).squeeze(-1)
    return amax, torch.where(amax > 0, mx, torch.zeros_like(mx))


def _first_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_first_absmax_scan` along the last dim, computed from the largest and
    smallest values: the sign of the extreme only depends on which comes first when +a and -a
    both occur, and only such blocks (and blocks holding NaN) take the scan (an argmax over
    rows of 32 is several times slower than amax and amin)."""
    hi = x.amax(-1)
    lo = x.amin(-1)
    amax = torch.maximum(hi, -lo).abs_()        # abs_: the maximum of +0 and -0 may be -0
    mx = torch.where(hi >= -lo, hi, lo)
    redo = ((hi == -lo) & (hi > 0)) | torch.isnan(amax)
    if bool(redo.any()):
        idx = redo.nonzero().squeeze(-1)
        a2, m2 = _first_absmax_scan(x[idx])
        amax[idx] = a2
        mx[idx] = m2
    return amax, torch.where(amax > 0, mx, torch.zeros_like(mx))


def _fp16_bytes(d: torch.Tensor) -> torch.Tensor:
    """``GGML_FP32_TO_FP16`` (round to nearest even; NaN → sign | 0x7E00) as uint8 pairs."""
    h = d.to(_F32).to(torch.float16)
    bits = h.view(torch.int16).to(torch.int32) & 0xFFFF
    sign = (d.to(_F32).view(torch.int32) >> 16) & 0x8000
    bits = torch.where(torch.isnan(d), sign | 0x7E00, bits)
    return torch.stack([bits & 0xFF, (bits >> 8) & 0xFF], dim=-1).to(torch.uint8)


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 ``sqrtf``. torch.sqrt on CPU is not (its vectorised kernel is off
    by one ulp for ~20% of inputs on AVX-512); a float64 root rounded to float32 always is."""
    return torch.sqrt(v.to(torch.float64)).to(_F32)


def _fp16_round(d: torch.Tensor) -> torch.Tensor:
    """``GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(d))``."""
    return d.to(_F32).to(torch.float16).to(_F32)


def _int8(v: torch.Tensor) -> torch.Tensor:
    """C conversion of an int to ``int8_t`` (two's-complement wrap)."""
    return ((v + 128) & 0xFF) - 128


def _weights(rows: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """Per-element quant weights of shape rows.shape (a column vector is broadcast)."""
    return importance.expand_as(rows) if importance.ndim == 1 else importance


def _encode(x: torch.Tensor, importance: torch.Tensor | None, align: int, fn,
            row_sigma2: bool = False) -> bytes:
    """Run ``fn(rows, importance_for_rows, sigma2_for_rows)`` over chunks of whole rows and join
    the block bytes. ``sigma2`` (each row's mean square, accumulated in order over the whole row
    as Q4_0/Q5_0's imatrix paths do) is computed once for the tensor when ``row_sigma2`` is set
    and importance is given, else None."""
    x = x.to(_F32)
    if x.shape[1] % align:
        raise ValueError(f"row length {x.shape[1]} is not a multiple of the block size {align}")
    if importance is not None:
        importance = importance.to(device=x.device, dtype=_F32)
    sigma2 = _row_sigma2(x) if row_sigma2 and importance is not None else None
    one_pass = row_sigma2 and importance is None
    per = _CHUNK_CUDA if x.is_cuda else _CHUNK_CPU_ONE_PASS if one_pass else _CHUNK_CPU
    step = max(1, per // max(1, x.shape[1]))
    parts = []
    for r in range(0, x.shape[0], step):
        imp = importance
        if importance is not None and importance.ndim == 2:
            imp = importance[r:r + step]
        s2 = None if sigma2 is None else sigma2[r:r + step]
        rows = x[r:r + step]
        parts.append(fn(rows, imp, s2).reshape(rows.shape[0], -1))
    out = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    return out.contiguous().cpu().numpy().tobytes()


# ------------------------------------------------------------------------ ggml's scale searches

def _candidate_iscale_numerators(nmax: int) -> list[float]:
    """Numerators of the candidate inverse scales of ``make_qx_quants`` in the C loop order:
    ``-nmax / max`` first, then ``-(nmax + 0.1f*is) / max`` for is = -9..9, is != 0."""
    out = [float(-nmax)]
    for s in range(-9, 10):
        if s:
            out.append(-float(np.float32(nmax) + np.float32(0.1) * np.float32(s)))
    return out


def make_qx_quants(x: torch.Tensor, nmax: int,
                   w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)`` over blocks along the last dim.

    ``w`` holds the weights (``qw``, or ``x*x`` where ggml passes NULL). Returns (scale, L) with
    L in [0, 2·nmax) as int64 (0 for an all-zero block, like ggml).

    All 19 candidate scales are tried at once: the blocks' elements are walked in order, each
    step quantizing one element of every block for every candidate ([candidates, blocks] slabs)
    and adding its terms to float32 accumulators, exactly as the C sums. The C loop's sequential
    choice (strict ``>``, so the first best candidate wins) is then replayed over the candidates.
    """
    lead, n = x.shape[:-1], x.shape[-1]
    scale, L = _qx_search(x.reshape(-1, n), w.reshape(-1, n), nmax,
                          _candidate_iscale_numerators(nmax), GROUP_MAX_EPS)
    return scale.reshape(lead), L.reshape(*lead, n)


def _qx_search_script(x: torch.Tensor, w: torch.Tensor, nmax: int, numerators: list[float],
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`make_qx_quants` on [B, n] blocks (TorchScript-compatible: scripted below)."""
    n = x.shape[1]
    amax, mx = _first_absmax(x)
    zero = amax < eps
    mx = torch.where(zero, torch.ones_like(mx), mx)
    nums = torch.tensor(numerators, dtype=torch.float32, device=x.device)
    # candidate-major [C, B] slabs: every op below runs over long contiguous rows of blocks
    iscale = nums.unsqueeze(-1) / mx                                   # [C, B]
    xt = x.t().contiguous()                                            # [n, B]
    wt = w.t().contiguous()
    wxt = wt * xt
    # |iscale·x| <= nmax + 0.9 here, where nearest_int is exactly round-half-even (torch.round)
    lv = torch.empty_like(iscale)
    tmp = torch.empty_like(iscale)
    sumlx = torch.empty_like(iscale)
    suml2 = torch.empty_like(iscale)
    for i in range(n):
        torch.mul(iscale, xt[i], out=lv).round_().clamp_(-nmax, nmax - 1)
        if i == 0:  # 0.0f + first term (turns -0 into +0 like the C accumulator)
            torch.mul(wxt[0], lv, out=sumlx).add_(0.0)
            torch.mul(wt[0], lv, out=suml2).mul_(lv).add_(0.0)
        else:
            sumlx.add_(torch.mul(wxt[i], lv, out=tmp))
            suml2.add_(torch.mul(wt[i], lv, out=tmp).mul_(lv))
    zero_f = torch.zeros_like(mx)
    # every candidate's scale (sumlx/suml2), best value (scale·sumlx) and sumlx² at once; only
    # the running comparison against the best so far stays sequential
    scales = sumlx / suml2                                             # [C, B]
    scales[0] = torch.where(suml2[0] != 0, scales[0], zero_f)          # C: 0 when suml2 == 0
    bests = scales * sumlx
    sq = sumlx * sumlx
    positive = suml2 > 0
    best = bests[0]
    choice = torch.zeros(mx.shape, dtype=torch.int64, device=x.device)
    for c in range(1, nums.numel()):
        take = positive[c] & (sq[c] > best * suml2[c])
        best = torch.where(take, bests[c], best)
        choice.masked_fill_(take, c)
    scale = scales.gather(0, choice.unsqueeze(0))[0]
    chosen = iscale.gather(0, choice.unsqueeze(0)).t()
    L = (chosen * x).round_().clamp_(-nmax, nmax - 1).to(torch.int64) + nmax
    L.masked_fill_(zero.unsqueeze(-1), 0)
    scale = torch.where(zero, zero_f, scale)
    return scale, L


_qx_search = script(_qx_search_script)


def make_q3_quants(x: torch.Tensor, nmax: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's ``make_q3_quants(n, nmax, x, L, do_rmse=true)`` over blocks along the last dim:
    a start at ``-nmax/max`` then up to five coordinate-descent passes, element by element.

    A block whose pass changed nothing would repeat the very same pass, so each later pass only
    revisits the blocks that changed in the one before (typically a fifth, then a twentieth).
    """
    lead, n = x.shape[:-1], x.shape[-1]
    scale, L = _q3_search(x.reshape(-1, n), nmax, GROUP_MAX_EPS)
    return scale.reshape(lead), L.reshape(*lead, n)


def _q3_search_script(x: torch.Tensor, nmax: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`make_q3_quants` on [G, n] blocks (TorchScript-compatible: scripted below)."""
    n = x.shape[1]
    amax, mx = _first_absmax(x)
    xt = x.t().contiguous()                                             # [n, G] element-major
    zero = amax < eps
    mx = torch.where(zero, torch.ones_like(mx), mx)
    iscale = torch.full_like(mx, float(-nmax)) / mx
    # |iscale·x| <= nmax here, where nearest_int is exactly round-half-even (torch.round)
    Lt = (iscale * xt).round_().clamp_(-nmax, nmax - 1)
    wt = xt * xt
    wxt = wt * xt
    sumlx = seq_sum0(wxt * Lt)
    suml2 = seq_sum0((wt * Lt) * Lt)
    active = torch.arange(x.shape[0], device=x.device)
    first = True
    for _ in range(5):
        if first:
            ax, aw, awx, aL, slx_all, sl2_all = xt, wt, wxt, Lt, sumlx, suml2
        else:
            ax, aw, awx, aL = xt[:, active], wt[:, active], wxt[:, active], Lt[:, active]
            slx_all, sl2_all = sumlx[active], suml2[active]
        changed = torch.zeros_like(slx_all, dtype=torch.bool)
        for i in range(n):
            xi, wi, wxi, Li = ax[i], aw[i], awx[i], aL[i]
            slx = slx_all - wxi * Li
            sl2 = sl2_all - (wi * Li).mul_(Li)
            new_l = nearest_int_float((xi * sl2).div_(slx)).clamp_(-nmax, nmax - 1)
            slx2 = slx + wxi * new_l
            sl22 = sl2 + (wi * new_l).mul_(new_l)
            # C: slx > 0 && new_l != L[i] && sl22 > 0 && slx2²·suml2 > sumlx²·sl22. For floats
            # a > b exactly when a - b > 0 (NaN-free or not), so one comparison of the minimum
            # does it (torch.minimum propagates NaN, which fails `> 0` as in C).
            gain = ((slx2 * slx2).mul_(sl2_all)).sub_((slx_all * slx_all).mul_(sl22))
            moved = (new_l - Li).abs_()
            take = torch.minimum(torch.minimum(slx, sl22), torch.minimum(gain, moved)) > 0
            aL[i] = torch.where(take, new_l, Li)
            slx_all = torch.where(take, slx2, slx_all)
            sl2_all = torch.where(take, sl22, sl2_all)
            changed |= take
        if first:
            sumlx, suml2 = slx_all, sl2_all
            active = changed.nonzero().squeeze(-1)
            first = False
        else:
            Lt[:, active] = aL
            sumlx[active] = slx_all
            suml2[active] = sl2_all
            active = active[changed]
        if active.numel() == 0:
            break
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    scale.masked_fill_(zero, 0.0)
    L = (Lt.t().to(torch.int64) + nmax).masked_fill_(zero.unsqueeze(-1), 0)
    return scale, L


_q3_search = script(_q3_search_script)


def _row_sigma2(rows: torch.Tensor) -> torch.Tensor:
    """``sum_x2 / n_per_row`` per row, accumulated in order (Q4_0/Q5_0 imatrix paths)."""
    return _div(_seq_sum(rows * rows), float(rows.shape[1]))


# ------------------------------------------------------------------------------------ Q4_0, Q5_0

def _legacy_levels(rows: torch.Tensor, importance: torch.Tensor | None,
                   sigma2: torch.Tensor | None, nmax: int):
    """(d [B], L [B, 32] in [0, 2·nmax)) for Q4_0 (nmax 8) / Q5_0 (nmax 16) blocks."""
    xb = rows.reshape(-1, 32)
    if importance is None:  # quantize_row_q{4,5}_0_ref
        _, mx = _first_absmax(xb)
        d = _div(mx, float(-nmax))
        inv = torch.where(d != 0, _div(1.0, d), torch.zeros_like(d))
        # MIN(2·nmax-1, (int8_t)(x*id + nmax + 0.5f)): truncation toward zero (the float→int
        # conversion); x*id >= -nmax·(1 + 2^-23), so the sum is never negative
        v = (xb * inv.unsqueeze(-1) + (nmax + 0.5)).nan_to_num_(0.0, 0.0, 0.0)
        return d, v.clamp_(0.0, 2 * nmax - 1).to(torch.int32)
    # quantize_row_q{4,5}_0_impl: weight = qw * sqrt(sigma2 + x²), sigma2 = mean x² of the row
    weight = _weights(rows, importance) * _sqrt(sigma2.unsqueeze(-1) + rows * rows)
    return make_qx_quants(xb, nmax, weight.reshape(-1, 32))


def _q4_0_blocks(rows: torch.Tensor, importance: torch.Tensor | None,
                 sigma2: torch.Tensor | None) -> torch.Tensor:
    d, L = _legacy_levels(rows, importance, sigma2, 8)
    qs = (L[:, :16] | (L[:, 16:] << 4)).to(torch.uint8)
    return torch.cat([_fp16_bytes(d), qs], dim=1)


def _q5_0_blocks(rows: torch.Tensor, importance: torch.Tensor | None,
                 sigma2: torch.Tensor | None) -> torch.Tensor:
    d, L = _legacy_levels(rows, importance, sigma2, 16)
    qs = ((L[:, :16] & 0x0F) | ((L[:, 16:] & 0x0F) << 4)).to(torch.uint8)
    hi = ((L >> 4) & 1).to(_F32)                                        # bit j of qh: L[j] >> 4
    pow2 = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0], device=L.device)
    qh = (hi.reshape(-1, 4, 8) @ pow2).to(torch.uint8)  # little-endian uint32 (exact: <= 255)
    return torch.cat([_fp16_bytes(d), qh, qs], dim=1)


def encode_q4_0(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _encode(x, importance, 32, _q4_0_blocks, row_sigma2=True)


def encode_q5_0(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _encode(x, importance, 32, _q5_0_blocks, row_sigma2=True)


# ------------------------------------------------------------------------------------------ Q3_K

def _requantize(xs: torch.Tensor, d: torch.Tensor, L: torch.Tensor, nmax: int) -> torch.Tensor:
    """Final pass of the K-quants: where a sub-block's effective scale ``d`` is non-zero,
    ``L = clamp(nearest_int(x/d), -nmax, nmax-1) + nmax``; elsewhere the search's L stays.
    Returns uint8 (all values fit: L < 2·nmax <= 64)."""
    dd = d.unsqueeze(-1)
    live = dd != 0
    v = xs / torch.where(live, dd, torch.ones_like(dd))
    fresh = nearest_int_clamped(v, -nmax, nmax - 1).add_(nmax).to(torch.uint8)
    return torch.where(live, fresh, L.to(torch.uint8))


def _q3_k_blocks(rows: torch.Tensor, importance: torch.Tensor | None, _=None) -> torch.Tensor:
    xs = rows.reshape(-1, 16, 16)                                       # [S, sub-block, 16]
    if importance is None:  # quantize_row_q3_K_ref
        scales, L = make_q3_quants(xs, 4)
        _, max_scale = _first_absmax(scales)
        nonzero = max_scale != 0
        safe = torch.where(nonzero, max_scale, torch.ones_like(max_scale))
        iscale = _div(-32.0, safe)
        ls = _int8(nearest_int(iscale.unsqueeze(-1) * scales)).clamp_(-32, 31) + 32
        ls = torch.where(nonzero.unsqueeze(-1), ls, torch.zeros_like(ls)).to(torch.int64)
        d = torch.where(nonzero, _div(1.0, iscale), torch.zeros_like(iscale))
    else:  # quantize_row_q3_K_impl
        xsb = rows.reshape(-1, QK_K)
        sigma2 = _div(2.0 * _seq_sum(xsb * xsb), float(QK_K))
        qw = _weights(rows, importance).reshape(-1, 16, 16)
        weight = qw * _sqrt(sigma2[:, None, None] + xs * xs)
        sw = _seq_sum(weight)                                            # [S, 16]
        scales, L = make_qx_quants(xs, 4, weight)
        d, ls = make_qx_quants(scales, 32, sw)                          # ls in [0, 64)
    dq = _fp16_round(d).unsqueeze(-1) * (ls - 32).to(_F32)              # [S, 16]
    L = _requantize(xs, dq, L, 4).reshape(-1, QK_K)
    # hmask[m] bit b: L[32 b + m] > 3; the low two bits go to qs
    high = (L > 3).to(torch.int64)
    L = L - 4 * high
    shifts = torch.arange(8, device=L.device)
    pairs = 2 * torch.arange(4, device=L.device)
    hmask = (high.reshape(-1, 8, 32) << shifts[:, None]).sum(dim=1)
    # qs[32h + l] = L[128h + l] | L[128h + l + 32] << 2 | L[128h + l + 64] << 4 | ... << 6
    qs = (L.reshape(-1, 2, 4, 32) << pairs[:, None]).sum(dim=2).reshape(-1, 64)
    # 6-bit scales: low nibbles of j and j+8 share scales[j]; the top two bits of j go to
    # scales[8 + j%4] at bit 2·(j/4)
    sc_low = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    sc_high = ((ls >> 4).reshape(-1, 4, 4) << pairs[:, None]).sum(dim=1)
    return torch.cat([hmask.to(torch.uint8), qs.to(torch.uint8), sc_low.to(torch.uint8),
                      sc_high.to(torch.uint8), _fp16_bytes(d)], dim=1)


def encode_q3_k(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _encode(x, importance, QK_K, _q3_k_blocks)


# ------------------------------------------------------------------------------------------ Q6_K

def _q6_k_blocks(rows: torch.Tensor, importance: torch.Tensor | None, _=None) -> torch.Tensor:
    xs = rows.reshape(-1, 16, 16)
    # ref: weights x²; impl: the raw quant_weights (ggml's sigma2 weighting is commented out there)
    w = xs * xs if importance is None else _weights(rows, importance).reshape(-1, 16, 16)
    scales, L = make_qx_quants(xs, 32, w)
    amax, max_scale = _first_absmax(scales)
    empty = amax < GROUP_MAX_EPS
    safe = torch.where(empty, torch.ones_like(max_scale), max_scale)
    iscale = _div(-128.0, safe)
    d = _div(1.0, iscale)
    sc = _int8(nearest_int(iscale.unsqueeze(-1) * scales).clamp_(max=127)).to(torch.int64)
    dq = _fp16_round(d).unsqueeze(-1) * sc.to(_F32)
    L = _requantize(xs, dq, L, 32).reshape(-1, 2, 4, 32)               # [S, half, quarter, l]
    low, high = L & 0xF, L >> 4                                         # uint8
    ql = torch.cat([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], dim=2)
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    out = torch.cat([ql.reshape(-1, 128), qh.reshape(-1, 64), (sc & 0xFF).to(torch.uint8),
                     _fp16_bytes(d)], dim=1)
    return torch.where(empty.unsqueeze(-1), torch.zeros_like(out), out)  # memset(0) blocks


def encode_q6_k(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _encode(x, importance, QK_K, _q6_k_blocks)


# ---------------------------------------------------------------------------------------- IQ4_NL

def _iq4nl_thresholds() -> np.ndarray:
    """Exact float32 switch points of ``best_index_int8(16, kvalues_iq4nl, x)``.

    Between grid points lo < hi the C code picks ``lo`` iff ``x - lo < hi - x`` in float32; both
    sides are monotonic in x, so there is a smallest float t_k from which ``hi`` wins, and the
    index is simply the number of thresholds <= x (NaN aside)."""
    f = np.float32

    def picks_hi(v: np.float32, lo: np.float32, hi: np.float32) -> bool:
        return not (f(v - lo) < f(hi - v))

    out = []
    for lo, hi in itertools.pairwise(f(v) for v in KVALUES_IQ4NL):
        t = f((lo + hi) / 2)
        while picks_hi(np.nextafter(t, lo), lo, hi):
            t = np.nextafter(t, lo)
        while not picks_hi(t, lo, hi):
            t = np.nextafter(t, hi)
        out.append(t)
    return np.array(out, dtype=np.float32)


_IQ4NL_THRESHOLDS = _iq4nl_thresholds()


def _iq4nl_tables() -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables indexed by ``floor(2·x) + 240`` (clamped): the thresholds are multiples of
    0.5, so ``x >= t`` exactly when ``floor(2·x) >= 2·t``. Returns (index, grid value) tables."""
    t2 = _IQ4NL_THRESHOLDS.astype(np.float64) * 2
    assert np.all(t2 == np.round(t2)) and -240 < t2.min() and t2.max() < 240
    k = np.arange(-240, 241, dtype=np.float64)
    idx = (k[:, None] >= t2[None, :]).sum(axis=1)
    return idx.astype(np.int64), np.array(KVALUES_IQ4NL, dtype=np.float32)[idx]


_IQ4NL_INDEX, _IQ4NL_VALUE = _iq4nl_tables()


def _iq4nl_slot(x2: torch.Tensor) -> torch.Tensor:
    """Table row for ``x2 = 2·x`` (NaN, as ggml's search, lands on the last grid point)."""
    return x2.nan_to_num(nan=240.0).floor_().clamp_(-240, 240).add_(240).to(torch.int64)


def _best_index_iq4nl(v: torch.Tensor) -> torch.Tensor:
    """ggml's ``best_index_int8(16, kvalues_iq4nl, v)``: the nearer grid point, the upper one
    on a tie; anything <= the first value gives 0, >= the last (or NaN) gives 15."""
    table = torch.from_numpy(_IQ4NL_INDEX).to(v.device)
    return table[_iq4nl_slot(v * 2.0)]


def _iq4_nl_blocks(rows: torch.Tensor, importance: torch.Tensor | None, _=None) -> torch.Tensor:
    """``quantize_iq4_nl`` (what ggml_quantize_chunk runs, with or without quant_weights):
    per block of 32, ``ntry = 7``, i.e. 16 candidate scales, weights x² or qw·sqrt(sigma2 + x²)
    with sigma2 = 2·mean(x²) of the block."""
    ntry = 7
    dev = rows.device
    qtable = torch.from_numpy(_IQ4NL_VALUE).to(dev)
    xb = rows.reshape(-1, 32)
    if importance is None:
        weight = xb * xb
    else:
        sigma2 = _seq_sum(xb * xb) * (2.0 / 32)
        weight = _weights(rows, importance).reshape(-1, 32) * _sqrt(sigma2[:, None] + xb * xb)
    amax, mx = _first_absmax(xb)
    zero = amax < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    # candidates: id = 1/(-max/values[0]) first, then id = (itry + values[0]) / max, itry in ±ntry
    d0 = _div(-mx, float(KVALUES_IQ4NL[0]))
    ids = torch.stack([_div(1.0, d0)] + [_div(float(itry + KVALUES_IQ4NL[0]), mx)
                                         for itry in range(-ntry, ntry + 1)], dim=-1)  # [B, C]
    ids2 = ids * 2.0  # (2·id)·x == 2·(id·x) exactly: the table wants the doubled product
    xt = xb.t().contiguous()
    wt = weight.t().contiguous()
    al = torch.empty_like(ids)
    wq = torch.empty_like(ids)
    tmp = torch.empty_like(ids)
    sumqx = torch.empty_like(ids)
    sumq2 = torch.empty_like(ids)
    for i in range(32):  # sumqx += w*q*x, sumq2 += w*q*q in element order
        torch.mul(ids2, xt[i].unsqueeze(-1), out=al)  # finite x, |id| < 2^57: no NaN here
        slot = al.floor_().clamp_(-240, 240).add_(240).to(torch.int64)
        q = qtable.index_select(0, slot.reshape(-1)).reshape(ids.shape)
        torch.mul(wt[i].unsqueeze(-1), q, out=wq)
        if i == 0:
            torch.mul(wq, xt[0].unsqueeze(-1), out=sumqx).add_(0.0)
            torch.mul(wq, q, out=sumq2).add_(0.0)
            continue
        sumqx.add_(torch.mul(wq, xt[i].unsqueeze(-1), out=tmp))
        sumq2.add_(torch.mul(wq, q, out=tmp))
    zero_f = torch.zeros_like(mx)
    d = torch.where(sumq2[:, 0] > 0, sumqx[:, 0] / sumq2[:, 0], zero_f)
    best = d * sumqx[:, 0]
    for c in range(1, ids.shape[1]):
        sx, s2 = sumqx[:, c], sumq2[:, c]
        take = (s2 > 0) & (sx * sx > best * s2)
        nd = sx / s2
        d = torch.where(take, nd, d)
        best = torch.where(take, nd * sx, best)
    d = torch.where(zero, zero_f, d)
    inv = torch.where(d != 0, _div(1.0, d), zero_f)
    L = _best_index_iq4nl(inv.unsqueeze(-1) * xb)
    qs = (L[:, :16] | (L[:, 16:] << 4)).to(torch.uint8)
    return torch.cat([_fp16_bytes(d), qs], dim=1)


def encode_iq4_nl(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _encode(x, importance, 32, _iq4_nl_blocks)


Q4_0 = register(QuantType("Q4_0", T.Q4_0, encode_q4_0))
Q5_0 = register(QuantType("Q5_0", T.Q5_0, encode_q5_0))
Q3_K = register(QuantType("Q3_K", T.Q3_K, encode_q3_k))
Q6_K = register(QuantType("Q6_K", T.Q6_K, encode_q6_k))
IQ4_NL = register(QuantType("IQ4_NL", T.IQ4_NL, encode_iq4_nl))
