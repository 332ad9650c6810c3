"""Affine (scale + min) types: Q4_1, Q5_1, Q2_K, Q4_K, Q5_K, matching ggml byte for byte.

Every block stores ``x ≈ d·q − m`` (legacy types store ``-m`` directly as fp16, K-types store
4- or 6-bit multiples of a super-block ``dmin``). The algorithms are ggml's (``ggml-quants.c``):

* without importance: ``quantize_row_q4_1_ref`` / ``q5_1_ref`` (plain min/max), and for the K-types
  ``quantize_row_qX_K_ref``: a weighted scale/min search per sub-block (``make_qkx2_quants``) whose
  scales and mins are then quantized linearly against their maxima;
* with importance (llama.cpp's imatrix, one weight per column): ``quantize_row_*_impl``: the search
  uses ``make_qkx3_quants`` with weights ``qw·sqrt(sigma2 + x²)`` and the K-types quantize their
  sub-block scales and mins with ``make_qp_quants``;
* with one importance per element: the imatrix algorithm with the per-column weight replaced by the
  element's own (ggml has no such mode; it is the natural generalisation).

Everything is vectorised over all blocks of the tensor at once (in bounded chunks); the loops
that remain run over candidates or positions inside a block, never over blocks. Bytes are decided
by details that are reproduced exactly:

* fp32 arithmetic in C's evaluation order (ggml-base is built without FMA contraction), with
  *sequential* fp32 accumulation where C sums in a loop (``seq_sum0``: a pairwise or fp64 sum
  differs in the last bit and flips roundings);
* the scale/min search is path dependent: when a candidate improves the error, C replaces ``min``
  by the fitted min and all later candidates use it (offset and range), so candidates are visited
  in order (vectorised over groups), keeping C's strict ``<`` (the first best wins);
* ``nearest_int`` (round half to even, including its bit pattern out of range; NaN → 0), uint8
  wrap-around where C stores an int into a byte, which zero (+0 or −0) a min/max scan keeps,
  fp16 NaN as 0x7E00;
* correctly rounded ``sqrtf`` (PyTorch's CPU fp32 sqrt is not, so it goes through fp64) and
  divisions by constants against device tensors (PyTorch turns ``cuda_tensor / python_scalar``
  into a multiplication by the reciprocal).

Performance: every step is a handful of PyTorch ops over all blocks, so a GPU runs it fast. On
CPU the searches (``_qkx_chunk``, ``_qp_script``) run as TorchScript: the same ATen ops in the
same order, but the loops run in C++ without the GIL, so the row bands that
``QuantType.encode`` hands to one worker per thread run in parallel. One thread then reaches
about ggml's single-threaded speed for Q4_K (see ``tools/bench_quant.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from . import QuantType, register
from .cfloat import (nearest_int, nearest_int_clamped, nearest_int_float, script, seq_acc,
                     seq_sum0)

QK = 32      # legacy block size
QK_K = 256   # K-type super-block size

# Elements per chunk of the scale/min search (bounds its [n, groups] temporaries) and
# elements per top-level chunk of rows (bounds whole-tensor temporaries for huge tensors). On CPU
# both stay small enough that one thread's temporaries (~10 × 1 MiB) sit in the shared L3 next to
# the other thread's and reuse heap memory (whole-tensor temporaries of a 6M-weight matrix cost
# ~20% in page faults; 2^19/2^20 chunks cost a third of the 2-thread speed), and large enough that
# the per-op overhead stays small.
SEARCH_CHUNK = {"cpu": 1 << 18, "cuda": 1 << 24}
ROW_CHUNK = {"cpu": 1 << 18, "cuda": 1 << 25}


# ----------------------------------------------------------------------------------------------
# fp32 helpers with C semantics

def _f32(v: float) -> np.float32:
    return np.float32(v)


_CONSTS: dict[tuple[float, str], torch.Tensor] = {}


def _const(v: float, device: torch.device) -> torch.Tensor:
    key = (float(v), str(device))
    t = _CONSTS.get(key)
    if t is None:
        t = _CONSTS[key] = torch.tensor(float(_f32(v)), dtype=torch.float32, device=device)
    return t


def _div(a: torch.Tensor | float, b: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """IEEE fp32 ``a / b``. Constants become device tensors: PyTorch evaluates ``t / scalar`` on
    CUDA as ``t * (1/scalar)`` and ``scalar / t`` as ``reciprocal(t) * scalar`` (two roundings)."""
    if not isinstance(a, torch.Tensor):
        a = _const(a, like.device)
    if not isinstance(b, torch.Tensor):
        b = _const(b, like.device)
    return a / b


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 sqrtf. PyTorch's CPU float32 sqrt is not (it is off by an ulp for
    ~17% of inputs on AVX-512 builds); a float64 square root rounded to fp32 is exact."""
    return torch.sqrt(v.to(torch.float64)).to(torch.float32)


def _nearest_int_arith(v: torch.Tensor) -> torch.Tensor:
    """:func:`nearest_int` for TorchScript (no bit view), as int32."""
    return nearest_int_float(v).to(torch.int32)


def _fp16_round(v: torch.Tensor) -> torch.Tensor:
    """GGML_FP32_TO_FP16 then back: round to nearest even, overflow to inf."""
    return v.to(torch.float16).to(torch.float32)


def _fp16_bytes(v: torch.Tensor) -> torch.Tensor:
    """[G] fp32 → [G, 2] little-endian fp16 bytes (uint8). NaN becomes ggml's 0x7E00 | sign (the
    F16C path of PyTorch would keep payload bits)."""
    h = v.to(torch.float16).reshape(-1, 1).view(torch.int16)
    h = torch.where(torch.isnan(v).reshape(-1, 1), (h & -0x8000) | 0x7E00, h)
    return h.view(torch.uint8)


def _minmax(x: torch.Tensor, signed_zero: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max over dim 0 as C's ``if (v < min) min = v`` scan keeps them: among equal values
    the first wins, which only shows when the extreme is a zero (+0 or −0 decides fp16 bytes)."""
    mn, mx = x.amin(0), x.amax(0)
    if signed_zero:
        first = x.gather(0, (x == 0).to(torch.uint8).argmax(0, keepdim=True))[0]
        mn = torch.where(mn == 0, first, mn)
        mx = torch.where(mx == 0, first, mx)
    return mn, mx


def _row_chunks(n_rows: int, n_per_row: int, device: torch.device) -> list[tuple[int, int]]:
    step = max(1, ROW_CHUNK.get(device.type, ROW_CHUNK["cuda"]) // max(1, n_per_row))
    return [(r, min(n_rows, r + step)) for r in range(0, n_rows, step)]


def _columns(t: torch.Tensor, n: int) -> torch.Tensor:
    """[rows, n_per_row] → [n, G] position-major groups of n consecutive elements."""
    return t.reshape(-1, n).t().contiguous()


def _prepare(x: torch.Tensor, importance: torch.Tensor | None) -> tuple[torch.Tensor,
                                                                      torch.Tensor | None]:
    x = x.to(torch.float32)
    if importance is not None:
        importance = importance.to(device=x.device, dtype=torch.float32)
        if importance.ndim == 1:
            importance = importance.expand(x.shape)
    return x, importance


# ----------------------------------------------------------------------------------------------
# make_qkx2_quants / make_qkx3_quants: weighted scale + min search

def _qkx(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int,
         use_mad: bool, signed_zero: bool = False) -> tuple[torch.Tensor, torch.Tensor,
                                                            torch.Tensor]:
    """Scale/min search of ``make_qkx2_quants`` (== ``make_qkx3_quants`` with weights) for groups
    x, w of shape [n, G] (position-major). Returns (scale [G], min [G] (C's ``-the_min``),
    L [n, G] float).

    The candidates cannot be evaluated independently: when one improves the error, C replaces
    ``min`` by the fitted min, and every later candidate uses it both as the offset (``x - min``)
    and in the range (``max - min``). So the candidate loop stays sequential, vectorised over the
    groups, which is also the cheapest order (no candidate is evaluated twice)."""
    n, G = x.shape
    out_scale = torch.empty(G, dtype=torch.float32, device=x.device)
    out_min = torch.empty_like(out_scale)
    out_L = torch.empty_like(x)
    chunk = max(1, SEARCH_CHUNK.get(x.device.type, SEARCH_CHUNK["cuda"]) // n)
    nums = [float(_f32(rmin) + _f32(rdelta) * _f32(s) + _f32(nmax)) for s in range(nstep + 1)]
    for g0 in range(0, G, chunk):
        g1 = min(G, g0 + chunk)
        sc, mn, L = _qkx_chunk_fast(x[:, g0:g1], w[:, g0:g1], nmax, nums, use_mad, signed_zero)
        out_scale[g0:g1], out_min[g0:g1], out_L[:, g0:g1] = sc, mn, L
    return out_scale, out_min, out_L


def _levels(x: torch.Tensor, mx: torch.Tensor, dmin: torch.Tensor, flat: torch.Tensor,
            iscale: torch.Tensor, mn: torch.Tensor, nmax: int) -> torch.Tensor:
    """``MAX(0, MIN(nmax, nearest_int(iscale*(x - min))))`` as float. Where every |v| stays within
    2²²−1 that is round-half-even; otherwise (a group whose scale blew up, inf, NaN) the exact
    bit pattern of ``nearest_int`` is reproduced. Flat groups (max <= min: C returns before the
    search) are left out of that check: their levels are never taken and end up 0."""
    # largest |x - mn| of a group: max(|mx - mn|, |dmin - mn|); as dmin <= mx, one of the two
    # differences below is that maximum and the other is not larger (NaN propagates)
    span = torch.maximum(mx - mn, mn - dmin)
    v = (x - mn) * iscale
    if bool(((iscale.abs() * span <= 4194303.0) | flat).all()):
        return v.round_().clamp_(0, nmax)
    return _nearest_int_arith(v).clamp_(0, nmax).to(torch.float32)


def _group_error(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor,
                 L: torch.Tensor, use_mad: bool) -> torch.Tensor:
    """``Σ w·|scale·L + min − x|`` (or squared), each group summed in order."""
    diff = scale * L
    diff += mn
    diff -= x
    diff = diff.abs_() if use_mad else diff.mul_(diff)
    return seq_sum0(diff.mul_(w))


def _qkx_chunk(x: torch.Tensor, w: torch.Tensor, nmax: int, nums: list[float], use_mad: bool,
               signed_zero: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The search for one chunk of groups (TorchScript-compatible: scripted below)."""
    n, G = x.shape
    dmin, mx = _minmax(x, signed_zero)
    # C: sum_w = w[0], sum_x = w[0]*x[0], then += for i >= 1
    sum_w = seq_acc(w[:1].clone(), w[1:])
    wx = w * x
    sum_x = seq_acc(wx[:1].clone(), wx[1:])
    mn = torch.where(dmin > 0, 0.0, dmin)
    flat = mx <= mn
    one = torch.ones((), dtype=torch.float32, device=x.device)
    iscale = (one * float(nmax)) / (mx - mn)
    scale = one / iscale
    best = _group_error(x, w, scale, mn, _levels(x, mx, dmin, flat, iscale, mn, nmax), use_mad)
    # The levels of the winner are recomputed at the end from its (iscale, min) instead of being
    # copied out of every improving candidate.
    sel_iscale, sel_min = iscale, mn
    buf = torch.empty((n, 3, G), dtype=torch.float32, device=x.device)
    wl, wl2, wlx = buf[:, 0], buf[:, 1], buf[:, 2]
    for num in nums:
        isc = (one * num) / (mx - mn)
        lq = _levels(x, mx, dmin, flat, isc, mn, nmax)
        torch.mul(lq, w, out=wl)
        torch.mul(wl, lq, out=wl2)
        torch.mul(wl, x, out=wlx)
        sums = seq_sum0(buf)                    # sum_l, sum_l2, sum_xl, each left to right
        s_l, s_l2, s_xl = sums[0], sums[1], sums[2]
        D = sum_w * s_l2 - s_l * s_l
        ts = (sum_w * s_xl - sum_x * s_l) / D
        tm = (s_l2 * sum_x - s_l * s_xl) / D
        pos = tm > 0
        tm = torch.where(pos, 0.0, tm)
        ts = torch.where(pos, s_xl / s_l2, ts)
        mad = _group_error(x, w, ts, tm, lq, use_mad)
        take = (D > 0) & (mad < best)           # C: strict <, so the first best candidate stays
        best = torch.where(take, mad, best)
        scale = torch.where(take, ts, scale)
        sel_iscale = torch.where(take, isc, sel_iscale)
        sel_min = torch.where(take, mn, sel_min)
        mn = torch.where(take, tm, mn)
    L = _levels(x, mx, dmin, flat, sel_iscale, sel_min, nmax)
    scale = torch.where(flat, 0.0, scale)
    L = torch.where(flat, 0.0, L)
    return scale, mn, L


_qkx_chunk_fast = script(_qkx_chunk)


# ----------------------------------------------------------------------------------------------
# make_qp_quants: quantize positive sub-block scales (or mins) against a super-block scale

def _qp(x: torch.Tensor, w: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_qp_quants`` for groups x, w of shape [n, G]. Returns (scale [G], L [n, G] int32 as
    the uint8 C stores)."""
    nums = [float(_f32(0.1) * _f32(s) + _f32(nmax)) for s in range(-4, 5) if s != 0]
    return _qp_fast(x, w, nmax, nums, float(_f32(1e-15)))


def _qp_script(x: torch.Tensor, w: torch.Tensor, nmax: int, nums: list[float],
               eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    one = torch.ones((), dtype=torch.float32, device=x.device)
    mx = torch.zeros_like(x[0])
    for i in range(n):                      # MAX(max, x[i]) from 0, NaN semantics included
        mx = torch.where(mx > x[i], mx, x[i])
    zero = mx < eps
    iscale = (one * float(nmax)) / mx
    Lu = (_nearest_int_arith(iscale * x) & 0xFF).to(torch.float32)
    scale = one / iscale
    d = x - scale * Lu
    best = seq_sum0(w * d * d)
    isc = torch.tensor(nums, dtype=torch.float32, device=x.device)[:, None] / mx[None]  # [8, G]
    lq = _nearest_int_arith(isc[None] * x[:, None]).clamp_(max=nmax).to(torch.float32)
    d = x[:, None] - (one / isc)[None] * lq
    mse = seq_sum0(w[:, None] * d * d)
    mse = torch.where(torch.isnan(mse), torch.full_like(mse, float("inf")), mse)
    bi = mse.argmin(0, keepdim=True)
    take = mse.gather(0, bi)[0] < best
    iscale = torch.where(take, isc.gather(0, bi)[0], iscale)
    li = _nearest_int_arith(iscale * x).clamp_(max=nmax)
    lf = li.to(torch.float32)
    wx = w * x
    sumlx = seq_sum0(wx * lf)
    suml2 = seq_sum0(w * lf * lf)
    L = li & 0xFF
    Lf = L.to(torch.float32)
    for _ in range(5):  # a pass without change leaves the state as it was: no need to break early
        for i in range(n):
            wi, xi, wxi, li_ = w[i], x[i], wx[i], Lf[i]
            slx = sumlx - wxi * li_
            sl2 = suml2 - wi * li_ * li_
            ok = (slx > 0) & (sl2 > 0)
            new_l = _nearest_int_arith(xi * sl2 / slx).clamp_(max=nmax)
            ok &= new_l != L[i]
            nf = new_l.to(torch.float32)
            slx = slx + wxi * nf
            sl2 = sl2 + wi * nf * nf
            ok &= slx * slx * suml2 > sumlx * sumlx * sl2
            L[i] = torch.where(ok, new_l & 0xFF, L[i])
            Lf[i] = L[i].to(torch.float32)
            sumlx = torch.where(ok, slx, sumlx)
            suml2 = torch.where(ok, sl2, suml2)
    out = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    out = torch.where(zero, torch.zeros_like(out), out)
    L = torch.where(zero[None], torch.zeros_like(L), L)
    return out, L


_qp_fast = script(_qp_script)


# ----------------------------------------------------------------------------------------------
# Q4_1 / Q5_1

def _legacy_ref(x: torch.Tensor, nbits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_row_q{4,5}_1_ref on [32, G]: (d, m, L int32 [32, G])."""
    nmax = (1 << nbits) - 1
    mn, mx = _minmax(x, signed_zero=True)
    d = _div(mx - mn, float(nmax), x)
    idv = torch.where(d != 0, _div(1.0, d, x), 0.0)
    v = ((x - mn) * idv + 0.5).trunc_().to(torch.int32)
    if nbits == 4:
        L = ((v & 0xFF) ^ 0x80) - 0x80      # (int8_t) then MIN(15, ·)
        L = L.clamp_(max=15) & 0xFF
    else:
        L = v & 0xFF                         # (uint8_t)
    return d, mn, L


def _legacy_impl(x: torch.Tensor, qw: torch.Tensor, sigma2: torch.Tensor,
                 nbits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_row_q{4,5}_1_impl on [32, G] with per-element weights qw and per-group sigma2."""
    wt = qw * _sqrt(sigma2[None] + x * x)
    scale, mn, L = _qkx(x, wt, (1 << nbits) - 1, -0.9, 0.05, 36, False, signed_zero=True)
    return scale, mn, L.to(torch.int32)


def _encode_legacy(x: torch.Tensor, importance: torch.Tensor | None, nbits: int) -> bytes:
    x, importance = _prepare(x, importance)
    nrows, n_per_row = x.shape
    if n_per_row % QK:
        raise ValueError(f"rows of {n_per_row} values do not split into blocks of {QK}")
    parts = []
    for r0, r1 in _row_chunks(nrows, n_per_row, x.device):
        xr = x[r0:r1]
        xc = _columns(xr, QK)                                     # [32, G]
        if importance is None:
            d, m, L = _legacy_ref(xc, nbits)
        else:
            xt = xr.t().contiguous()
            sigma2 = _div(seq_sum0(xt * xt), float(n_per_row), x)  # per row
            sigma2 = sigma2.repeat_interleave(n_per_row // QK)
            d, m, L = _legacy_impl(xc, _columns(importance[r0:r1], QK), sigma2, nbits)
        lo = L[:16] | (L[16:] << 4) if nbits == 4 else (L[:16] & 15) | ((L[16:] & 15) << 4)
        fields = [_fp16_bytes(d), _fp16_bytes(m)]
        if nbits == 5:
            hb = (L >> 4) & 1                                     # [32, G]
            shifts = torch.arange(32, device=x.device, dtype=torch.int64)[:, None]
            qh = (hb.to(torch.int64) << shifts).sum(0)            # exact integer sum
            qh = torch.stack([(qh >> (8 * k)) & 0xFF for k in range(4)], 1)
            fields.append(qh.to(torch.uint8))
        fields.append(lo.t().to(torch.uint8))
        parts.append(torch.cat(fields, 1).cpu().numpy())
    return np.concatenate(parts).tobytes() if parts else b""


def encode_q4_1(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _encode_legacy(x, importance, 4)


def encode_q5_1(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _encode_legacy(x, importance, 5)


# ----------------------------------------------------------------------------------------------
# K-types

def _pack_k4(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K 12-byte scales from ls, lm [8, G] (ints as the uint8s C holds) → [12, G]."""
    s = torch.empty((12,) + tuple(ls.shape[1:]), dtype=torch.int32, device=ls.device)
    s[0:4] = (ls[0:4] | ((ls[4:8] >> 4) << 6)) & 0xFF
    s[4:8] = (lm[0:4] | ((lm[4:8] >> 4) << 6)) & 0xFF
    s[8:12] = (ls[4:8] & 0xF) | ((lm[4:8] & 0xF) << 4)
    return s


def _unpack_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """get_scale_min_k4 for all 8 sub-blocks: [12, G] → (sc, m) [8, G]."""
    sc = torch.cat([s[0:4] & 63, (s[8:12] & 0xF) | ((s[0:4] >> 6) << 4)])
    m = torch.cat([s[4:8] & 63, (s[8:12] >> 4) | ((s[4:8] >> 6) << 4)])
    return sc, m


def _requantize(x: torch.Tensor, L: torch.Tensor, d: torch.Tensor, dm: torch.Tensor,
                nmax: int) -> torch.Tensor:
    """L = clamp(nearest_int((x + dm)/d)) per sub-block; sub-blocks with d == 0 keep their L.
    x, L: [n, G]; d, dm: [G]."""
    live = d != 0
    v = (x + dm[None]) / torch.where(live, d, torch.ones_like(d))[None]
    q = nearest_int_clamped(v, 0, nmax).to(torch.int32)
    return torch.where(live[None], q, L)


def _k_superblock_sumsq(xr: torch.Tensor) -> torch.Tensor:
    """Σ x² over each 256-value super-block, sequentially: [rows, n_per_row] → [n_super]."""
    return seq_sum0(_columns(xr * xr, QK_K))


def _k_sub(nsub: int, G_sb: int, v: torch.Tensor) -> torch.Tensor:
    """[G_sb*nsub] (sub-blocks in order) → [nsub, G_sb]."""
    return v.reshape(G_sb, nsub).t()


def _running_max(v: torch.Tensor) -> torch.Tensor:
    """C's ``m = 0; if (v > m) m = v;`` over dim 0: the largest value above +0, NaN ignored."""
    m = torch.nan_to_num(v, nan=-torch.inf).amax(0)
    return torch.where(m > 0, m, 0.0)


def _encode_k(x: torch.Tensor, importance: torch.Tensor | None, kind: str) -> bytes:
    x, importance = _prepare(x, importance)
    nrows, n_per_row = x.shape
    if n_per_row % QK_K:
        raise ValueError(f"rows of {n_per_row} values do not split into super-blocks of {QK_K}")
    sub = 16 if kind == "Q2_K" else 32
    nsub = QK_K // sub
    nmax = {"Q2_K": 3, "Q4_K": 15, "Q5_K": 31}[kind]
    parts = []
    for r0, r1 in _row_chunks(nrows, n_per_row, x.device):
        xr = x[r0:r1]
        G_sb = xr.numel() // QK_K
        xc = _columns(xr, sub)                                   # [sub, G_sb*nsub]
        if importance is None:
            if kind == "Q2_K":
                wt = xc.abs()
                scales, mins, L = _qkx(xc, wt, 3, -0.5, 0.1, 15, True)
            else:
                av_x = _sqrt(_div(seq_sum0(xc * xc), 32.0, x))
                wt = av_x[None] + xc.abs()
                rmin, nstep = (-1.0, 20) if kind == "Q4_K" else (-0.5, 15)
                scales, mins, L = _qkx(xc, wt, nmax, rmin, 0.1, nstep, False)
            mins = -mins
            sc_ = _k_sub(nsub, G_sb, scales)
            mi_ = _k_sub(nsub, G_sb, mins)
            max_scale = _running_max(sc_)
            max_min = _running_max(mi_)
            if kind == "Q2_K":
                q = 15.0
                inv_s = _div(q, max_scale, x)
                ls = nearest_int(inv_s[None] * sc_) & 0xFF
                ls = torch.where(max_scale[None] > 0, ls, 0)
                d = torch.where(max_scale > 0, _div(max_scale, q, x), 0.0)
                inv_m = _div(q, max_min, x)
                lm = nearest_int(inv_m[None] * mi_)
                packed = torch.where(max_min[None] > 0, (ls | (lm << 4)) & 0xFF, ls)
                dmin = torch.where(max_min > 0, _div(max_min, q, x), 0.0)
            else:
                inv_s = torch.where(max_scale > 0, _div(63.0, max_scale, x), 0.0)
                inv_m = torch.where(max_min > 0, _div(63.0, max_min, x), 0.0)
                ls = (nearest_int(inv_s[None] * sc_) & 0xFF).clamp_(max=63)
                lm = (nearest_int(inv_m[None] * mi_) & 0xFF).clamp_(max=63)
                packed = _pack_k4(ls, lm)
                d = _div(max_scale, 63.0, x)
                dmin = _div(max_min, 63.0, x)
        else:
            qwc = _columns(importance[r0:r1], sub)
            sumx2 = _k_superblock_sumsq(xr)                      # [G_sb]
            if kind == "Q2_K":
                sigma2 = _div(sumx2, float(QK_K), x)
            else:
                sigma2 = _div(2.0 * sumx2, float(QK_K), x)
            s2 = sigma2.repeat_interleave(nsub)
            wt = qwc * _sqrt(s2[None] + xc * xc)
            sw = seq_sum0(wt)
            scales, mins, L = _qkx(xc, wt, nmax, -0.9, 0.05, 36, False)
            mins = -mins
            qmax = 15 if kind == "Q2_K" else 63
            sw_ = _k_sub(nsub, G_sb, sw)
            d, ls = _qp(_k_sub(nsub, G_sb, scales), sw_, qmax)
            dmin, lm = _qp(_k_sub(nsub, G_sb, mins), sw_, qmax)
            if kind == "Q2_K":
                packed = (ls | (lm << 4)) & 0xFF
            else:
                if kind == "Q5_K":
                    ls, lm = ls.clamp(max=63), lm.clamp(max=63)
                packed = _pack_k4(ls, lm)
        d16, dmin16 = _fp16_round(d), _fp16_round(dmin)
        if kind == "Q2_K":
            sc, m = packed & 0xF, packed >> 4
        else:
            sc, m = _unpack_k4(packed)
        dsub = (d16[None] * sc.to(torch.float32)).t().reshape(-1)      # [G_sb*nsub]
        msub = (dmin16[None] * m.to(torch.float32)).t().reshape(-1)
        Li = _requantize(xc, L.to(torch.int32), dsub, msub, nmax)      # [sub, G_sb*nsub]
        Lb = Li.t().reshape(G_sb, QK_K)                                  # values in order
        if kind == "Q2_K":
            Lq = Lb.reshape(G_sb, 2, 4, 32)
            qs = (Lq[:, :, 0] | (Lq[:, :, 1] << 2) | (Lq[:, :, 2] << 4) | (Lq[:, :, 3] << 6))
            fields = [packed.t(), qs.reshape(G_sb, 64), _fp16_bytes(d), _fp16_bytes(dmin)]
        else:
            Lq = Lb.reshape(G_sb, 4, 2, 32)
            lo = Lq & 0xF
            ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(G_sb, 128)
            fields = [_fp16_bytes(d), _fp16_bytes(dmin), packed.t()]
            if kind == "Q5_K":
                hb = (Lq >> 4) & 1                                       # [G, 4, 2, 32]
                qh = torch.zeros((G_sb, 32), dtype=torch.int32, device=x.device)
                for c in range(4):
                    qh |= hb[:, c, 0] << (2 * c)
                    qh |= hb[:, c, 1] << (2 * c + 1)
                fields.append(qh)
            fields.append(ql)
        parts.append(torch.cat([f.to(torch.uint8) for f in fields], 1).cpu().numpy())
    return np.concatenate(parts).tobytes() if parts else b""


def encode_q2_k(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _encode_k(x, importance, "Q2_K")


def encode_q4_k(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _encode_k(x, importance, "Q4_K")


def encode_q5_k(x: torch.Tensor, importance: torch.Tensor | None = None) -> bytes:
    return _encode_k(x, importance, "Q5_K")


Q4_1 = register(QuantType("Q4_1", T.Q4_1, encode_q4_1))
Q5_1 = register(QuantType("Q5_1", T.Q5_1, encode_q5_1))
Q2_K = register(QuantType("Q2_K", T.Q2_K, encode_q2_k))
Q4_K = register(QuantType("Q4_K", T.Q4_K, encode_q4_k))
Q5_K = register(QuantType("Q5_K", T.Q5_K, encode_q5_k))
