"""Outlier pairs: W_q + B·A restores the chosen columns and rows of W and changes nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from cwp_export import quant
from cwp_export.errors import InputError
from cwp_export.protect.outliers import PairStats, outlier_pair, top_residual_columns


def _quantized(out: int = 48, inp: int = 64, seed: int = 0, qtype: str = "Q4_0"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.05
    qt = quant.get(qtype)
    blob = np.frombuffer(qt.encode(w), np.uint8).reshape(out, -1)
    wq = torch.from_numpy(dequantize(blob, qt.ggml_type).astype(np.float32).copy())
    return w, wq


def _tol(w: torch.Tensor) -> float:
    # W_q + fl(W - W_q) may differ from W by the float32 rounding of the subtraction and addition
    return 2 * torch.finfo(torch.float32).eps * float(w.abs().max())


@pytest.mark.parametrize("cols, rows", [([3, 0, 63, 17], [5, 47, 0]), ([], [1, 2]), ([7, 8], []),
                                        (list(range(64)), []), ([], [])])
def test_restores_columns_and_rows_and_nothing_else(cols, rows):
    w, wq = _quantized()
    p = outlier_pair(w, wq, cols, rows)
    assert p.A.dtype == p.B.dtype == torch.float32
    assert p.A.shape == (len(cols) + len(rows), 64) and p.B.shape == (48, len(cols) + len(rows))
    assert p.stats.rank == len(cols) + len(rows)
    got = wq + p.delta()
    chosen = torch.zeros_like(w, dtype=torch.bool)
    chosen[:, cols] = True
    chosen[rows, :] = True
    assert torch.allclose(got[chosen], w[chosen], rtol=0, atol=_tol(w))
    # elsewhere B·A is exactly zero: the quantized weight is untouched, bit for bit
    assert torch.equal(p.delta()[~chosen], torch.zeros(int((~chosen).sum())))
    assert torch.equal(got[~chosen], wq[~chosen])


def test_overlap_of_columns_and_rows_is_counted_once():
    w, wq = _quantized()
    cols, rows = [3, 10], [4, 9]
    p = outlier_pair(w, wq, cols, rows)
    d = p.delta()
    for r in rows:
        for c in cols:
            # the column part already restored (r, c); the row part adds exactly zero there
            assert p.A[len(cols) + rows.index(r), c].item() == 0.0
            assert abs((wq[r, c] + d[r, c] - w[r, c]).item()) <= _tol(w)
    # the one-hot halves are exact selections, in the given order
    assert torch.equal(p.A[0], torch.nn.functional.one_hot(torch.tensor(3), 64).float())
    assert torch.equal(p.B[:, 2], torch.nn.functional.one_hot(torch.tensor(4), 48).float())
    assert p.columns == (3, 10) and p.rows == (4, 9)


def test_empty_sets_give_a_rank_zero_pair():
    w, wq = _quantized()
    p = outlier_pair(w, wq)
    assert p.A.shape == (0, 64) and p.B.shape == (48, 0)
    assert torch.equal(wq + p.delta(), wq)
    assert p.stats.params == 0 and p.stats.nbytes() == 0


def test_indices_as_tensors_and_numpy_integers():
    w, wq = _quantized()
    a = outlier_pair(w, wq, torch.tensor([3, 5]), np.array([1, 2]))
    b = outlier_pair(w, wq, [3, 5], [1, 2])
    assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)


def test_restoration_with_f16_storage_is_within_f16_precision():
    w, wq = _quantized(qtype="Q4_K", inp=256)
    cols = top_residual_columns(w, wq, 8)
    p = outlier_pair(w, wq, cols, [0, 1])
    got = wq + p.B.half().float() @ p.A.half().float()
    res = (w - wq)[:, cols]
    err = (got[:, cols] - w[:, cols]).abs()
    assert (err <= res.abs() * 2.0 ** -11 + 2.0 ** -24 + _tol(w)).all()


def test_stats_bytes():
    s = PairStats(n_out=576, n_in=1536, n_columns=15, n_rows=1)
    assert s.rank == 16 and s.params == 16 * (576 + 1536)
    assert s.nbytes("F32", "F32") == 4 * s.params
    assert s.nbytes("F16", "F16") == 2 * s.params
    assert s.nbytes("Q8_0", "F16") == 16 * 1536 // 32 * 34 + 2 * 576 * 16
    assert set(s.bytes_by_type) == {"F32", "F16", "Q8_0+F16"}
    assert "Q8_0+F16" not in PairStats(8, 40, 1, 0).bytes_by_type
    with pytest.raises(InputError, match="block"):
        PairStats(8, 40, 1, 0).nbytes("Q8_0", "F16")
    with pytest.raises(InputError, match="unknown ggml type"):
        s.nbytes("Q9_9")
    assert GGMLQuantizationType.Q8_0  # the names above are ggml type names


def test_top_residual_columns():
    w, _ = _quantized()
    wq = w.clone()
    wq[:, 3] += 0.5  # the column with the largest residual
    wq[:, 11] += 0.01
    assert top_residual_columns(w, wq, 1) == [3]
    assert top_residual_columns(w, wq, 2) == [3, 11]
    weights = torch.zeros(64)
    weights[11] = 1.0
    assert top_residual_columns(w, wq, 1, activation_sq=weights) == [11]
    assert top_residual_columns(w, wq, 0) == []
    assert len(top_residual_columns(w, wq, 1000)) == 64
    with pytest.raises(InputError, match="activation_sq"):
        top_residual_columns(w, wq, 1, activation_sq=torch.ones(3))


@pytest.mark.parametrize("kwargs, match", [
    (dict(columns=[64]), "column index 64 is out of range"),
    (dict(columns=[-1]), "out of range"),
    (dict(rows=[48]), "row index 48 is out of range"),
    (dict(columns=[1, 2, 1]), "column index 1 is given more than once"),
    (dict(rows=[0, 0]), "more than once"),
    (dict(columns=[1.5]), "integer indices"),
    (dict(columns=[True]), "integer indices"),
    (dict(columns=torch.tensor([0.0, 1.0])), "integer indices"),
    (dict(columns=torch.ones(64, dtype=torch.bool)), "mask.nonzero"),
    (dict(columns=torch.zeros(2, 2, dtype=torch.long)), "1-D"),
])
def test_bad_indices(kwargs, match):
    w, wq = _quantized()
    with pytest.raises(InputError, match=match):
        outlier_pair(w, wq, name="blk.0.attn_q.weight", **kwargs)


def test_bad_tensors():
    w, wq = _quantized()
    with pytest.raises(InputError, match=r"differs from the dequantized shape"):
        outlier_pair(w, wq.T, [0])
    with pytest.raises(InputError, match="2-D"):
        outlier_pair(w[0], wq[0], [0])
    with pytest.raises(InputError, match="torch tensors"):
        outlier_pair(w.numpy(), wq, [0])
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        outlier_pair(bad, wq, [0])
    with pytest.raises(InputError, match=r"^blk\.0\.ffn_up\.weight: "):
        outlier_pair(w, wq, [99], name="blk.0.ffn_up.weight")
