"""The protection planner: pure, torch-free, JSON-serialisable.

Input: per scored tensor its shape, its type under the base preset, the mean square of its
weights, and where its critical score mass sits (per column, per row); the byte budget; the
protected fraction; the storage types of the adapter. Output: a :class:`Plan` naming

1. the outlier columns / rows of each tensor that the LoRA adapter restores exactly, chosen
   greedily by critical mass covered per stored parameter until about ``fraction`` of the scored
   weights are restored (or the budget is spent);
2. the tensors that move to a higher type (Q4_K → Q5_K → Q6_K → Q8_0 → F16, staying on types
   whose blocks fit the row), chosen greedily by expected critical error removed per added byte
   with what is left of the budget.

The error model: quantizing a tensor of mean square ``ms`` to type ``t`` leaves an expected
squared error of ``rel_mse[t] · ms`` per element (``rel_mse`` measured on Gaussian data by the
caller), so a step from t1 to t2 removes ``mass · ms · (rel_mse[t1] − rel_mse[t2])`` of critical
error, where ``mass`` is the critical score mass the adapter does not already restore. The greedy
choice of columns and rows ignores their overlap inside a tensor (a column and a row share one
weight); the coverage the export reports afterwards is exact.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import InputError

# Types a tensor may be raised through, in order of quality (error on the same data). A step
# goes to the next one that fits the row length, has more bits than the current type, and is
# not dominated (no better type that fits costs the same or fewer bits: with 256-multiple rows
# Q5_K makes Q5_0/Q5_1 pointless).
LADDER = ("Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "F16")


def type_nbytes(type_name: str, n_elements: int) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return n_elements // block * size


def bits_per_weight(type_name: str) -> float:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return 8.0 * size / block


def _fits(type_name: str, row: int) -> bool:
    return row % GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0] == 0


def next_type(current: str, row: int) -> str | None:
    """The next type up the ladder for rows of length ``row`` (None at the top)."""
    bpw = bits_per_weight(current)
    fitting = [t for t in LADDER if _fits(t, row)]
    start = LADDER.index(current) + 1 if current in LADDER else 0
    for k, t in enumerate(fitting):
        if LADDER.index(t) < start or bits_per_weight(t) <= bpw:
            continue
        if any(bits_per_weight(u) <= bits_per_weight(t) for u in fitting[k + 1:]):
            continue  # dominated by a better type of no more bits
        return t
    return None


@dataclass
class TensorStats:
    """What the planner knows of one scored tensor ([out, in] = [rows, columns], GGUF layout)."""

    name: str
    shape: tuple[int, int]
    base_type: str
    mean_square: float          # mean of W² (sets the scale of its quantization error)
    mass: float                 # critical score mass in the tensor
    critical: int               # critical weights in the tensor
    col_mass: list[float]       # critical mass per column (len = in)
    row_mass: list[float]       # critical mass per row (len = out)


@dataclass
class Plan:
    base_preset: str
    fraction: float
    budget_bytes: int
    base_bytes: int                          # the plain preset's model file (tensor data)
    types: dict[str, str]                    # every scored tensor → its final type
    upgrades: dict[str, list[str]]           # tensor → types it went through (base first)
    columns: dict[str, list[int]]            # tensor → outlier columns (sorted)
    rows: dict[str, list[int]]               # tensor → outlier rows (sorted)
    adapter_types: tuple[str, str]           # storage of A and B
    model_bytes: int = 0                     # tensor data of the protected model file
    adapter_bytes: int = 0                   # tensor data of the adapter
    restored_weights: int = 0                # weights the adapter restores (overlaps once)
    scored_weights: int = 0
    estimate: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["adapter_types"] = list(self.adapter_types)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["adapter_types"] = tuple(d["adapter_types"])
        return cls(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def a_type_for(a_type: str, inp: int) -> str:
    """A is [rank, in]: a quantized A needs whole blocks per row, else it is stored as F16."""
    return a_type if _fits(a_type, inp) else "F16"


def pair_bytes(out: int, inp: int, rank: int, a_type: str, b_type: str) -> int:
    """Bytes of one LoRA pair of ``rank`` for an [out, in] tensor: A [rank, in], B [out, rank].
    Quantized storage needs its block to divide the row (in for A, rank for B)."""
    return type_nbytes(a_type_for(a_type, inp), rank * inp) + type_nbytes(b_type, out * rank)


def plan(stats: list[TensorStats], *, base_preset: str, fraction: float, budget_bytes: int,
         base_bytes: int, rel_mse: dict[str, float], adapter_types: tuple[str, str] = ("Q8_0",
                                                                                     "F16"),
         outliers: bool = True, upgrades: bool = True) -> Plan:
    """Choose outliers, then type upgrades, within ``budget_bytes`` of tensor data.

    ``base_bytes`` is the size of all tensor data of the plain preset (scored or not);
    ``budget_bytes`` the limit for model + adapter tensor data.
    """
    if budget_bytes < base_bytes:
        raise InputError(f"the size budget ({budget_bytes:,} bytes) is smaller than the plain "
                         f"{base_preset} model ({base_bytes:,} bytes); raise "
                         f"--max-size-increase or choose a smaller --quant")
    a_type, b_type = adapter_types
    for t in (a_type, b_type):
        if t not in ("F32", "F16", "Q8_0"):
            raise InputError(f"adapter storage type {t} is not supported; use F32, F16 or Q8_0")
    missing = sorted({s.base_type for s in stats} - set(rel_mse))
    if missing:
        raise ValueError(f"no relative error for type {missing[0]}")
    by_name = {s.name: s for s in stats}
    spare = budget_bytes - base_bytes
    n_scored = sum(s.shape[0] * s.shape[1] for s in stats)
    target = math.floor(fraction * n_scored + 0.5)

    # -- 1. outliers: columns and rows by critical mass per stored parameter ----------------
    columns: dict[str, list[int]] = {}
    rows: dict[str, list[int]] = {}
    restored = 0
    if outliers and target > 0:
        cands: list[tuple[float, str, str, int]] = []
        for s in stats:
            out, inp = s.shape
            per_unit = out + inp  # parameters stored for one column or one row
            for j, m in enumerate(s.col_mass):
                if m > 0:
                    cands.append((-m / per_unit, s.name, "col", j))
            for i, m in enumerate(s.row_mass):
                if m > 0:
                    cands.append((-m / per_unit, s.name, "row", i))
        cands.sort()  # densest first; ties by name, kind, index: deterministic
        # block-aligned storage: the rank of a pair is padded to the B type's block at the end,
        # so account with a conservative per-unit cost and check the exact total afterwards
        for _, name, kind, idx in cands:
            if restored >= target:
                break
            s = by_name[name]
            out, inp = s.shape
            k = len(columns.get(name, [])) + len(rows.get(name, []))
            before = pair_bytes(out, inp, _padded(k, b_type), a_type, b_type) if k else 0
            after = pair_bytes(out, inp, _padded(k + 1, b_type), a_type, b_type)
            if after - before > spare:
                continue
            spare -= after - before
            (columns if kind == "col" else rows).setdefault(name, []).append(idx)
            restored += out if kind == "col" else inp

    adapter_bytes = 0
    for name in sorted(set(columns) | set(rows)):
        s = by_name[name]
        k = len(columns.get(name, [])) + len(rows.get(name, []))
        adapter_bytes += pair_bytes(s.shape[0], s.shape[1], _padded(k, b_type), a_type, b_type)
    # exact restored count: a column and a row of one tensor share one weight
    restored = sum(len(columns.get(n, [])) * by_name[n].shape[0]
                   + len(rows.get(n, [])) * by_name[n].shape[1]
                   - len(columns.get(n, [])) * len(rows.get(n, []))
                   for n in set(columns) | set(rows))

    # -- 2. type upgrades by critical error removed per added byte ------------------------------
    def uncovered(s: TensorStats) -> float:
        cols = sum(s.col_mass[j] for j in columns.get(s.name, []))
        rws = sum(s.row_mass[i] for i in rows.get(s.name, []))
        return max(0.0, s.mass - cols - rws)

    types = {s.name: s.base_type for s in stats}
    path = {s.name: [s.base_type] for s in stats}
    spare = budget_bytes - base_bytes - adapter_bytes
    if upgrades:
        heap: list[tuple[float, str, str]] = []
        rest = {s.name: uncovered(s) for s in stats}

        def push(s: TensorStats) -> None:
            cur = types[s.name]
            nxt = next_type(cur, s.shape[1])
            if nxt is None or nxt not in rel_mse or rest[s.name] <= 0:
                return
            n = s.shape[0] * s.shape[1]
            cost = type_nbytes(nxt, n) - type_nbytes(cur, n)
            gain = rest[s.name] * s.mean_square * (rel_mse[cur] - rel_mse[nxt])
            if cost > 0 and gain > 0:
                heapq.heappush(heap, (-gain / cost, s.name, nxt))

        for s in stats:
            push(s)
        while heap:
            _, name, nxt = heapq.heappop(heap)
            s = by_name[name]
            n = s.shape[0] * s.shape[1]
            cost = type_nbytes(nxt, n) - type_nbytes(types[name], n)
            if cost > spare:
                continue  # a cheaper step elsewhere may still fit
            spare -= cost
            types[name] = nxt
            path[name].append(nxt)
            push(s)

    base_scored = sum(type_nbytes(s.base_type, s.shape[0] * s.shape[1]) for s in stats)
    new_scored = sum(type_nbytes(types[s.name], s.shape[0] * s.shape[1]) for s in stats)
    model_bytes = base_bytes - base_scored + new_scored
    total_mass = sum(s.mass for s in stats) or 1.0
    covered = sum(s.mass - uncovered(s) for s in stats)
    eight = sum(uncovered(s) for s in stats if bits_per_weight(types[s.name]) >= 8)
    plan_ = Plan(base_preset=base_preset, fraction=fraction, budget_bytes=budget_bytes,
                 base_bytes=base_bytes, types=types,
                 upgrades={n: p for n, p in path.items() if len(p) > 1},
                 columns={n: sorted(v) for n, v in sorted(columns.items())},
                 rows={n: sorted(v) for n, v in sorted(rows.items())},
                 adapter_types=(a_type, b_type), model_bytes=model_bytes,
                 adapter_bytes=adapter_bytes, restored_weights=restored,
                 scored_weights=n_scored,
                 estimate={"mass_exact": min(1.0, covered / total_mass),
                           "mass_8bit": eight / total_mass})
    if model_bytes + adapter_bytes > budget_bytes:  # cannot happen; guards the arithmetic
        raise AssertionError("planner exceeded its budget")
    return plan_


def _padded(rank: int, b_type: str) -> int:
    """B is [out, rank] with rows of length rank: a quantized B needs whole blocks."""
    block = GGML_QUANT_SIZES[GGMLQuantizationType[b_type]][0]
    return -(-rank // block) * block
