"""The protected export: scores → plan → model GGUF + outlier adapter GGUF + plan.json.

``cwp-export MODEL --protect 1%`` runs :func:`protected_export`:

1. scores and the critical mask (computed, or read from ``--scores`` after checking that they
   belong to this checkpoint); the mask is re-drawn for ``--protect`` with one global threshold;
2. per scored tensor, where its critical mass sits (:mod:`.stats`), then the plan
   (:mod:`.plan`): outlier columns/rows for the adapter and type upgrades within the budget;
3. the model file: every tensor quantized as the plain preset quantizes it (or, with
   ``weighted_rounding``, with per-element importance: the column's mean squared activation,
   times ``1 + critical_weight`` on critical weights the adapter does not restore); while each
   tensor with outliers streams through, its dequantized values are kept until the pair can be
   built;
4. the adapter (:mod:`..formats.lora`), ``plan.json`` with the exact coverage, the manifest.

``ideal=True`` writes instead the paper's unstructured protection as an F32 model: every tensor
quantized and dequantized as planned, then every critical weight restored. Comparing it with the
exported pair shows what the llama.cpp-loadable mechanisms give up.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import convert, quant
from ..errors import InputError
from ..formats.lora import lora_target, write_lora_adapter
from ..formats.manifest import write_atomic_text
from ..formats.scores import load_activations, load_scores
from ..score.mask import global_threshold_mask
from . import plan as planner
from .outliers import outlier_pair
from .stats import CRITICAL_WEIGHT, coverage, dequantize, element_importance, relative_mse, \
    tensor_stats

DEFAULT_MAX_SIZE_INCREASE = 0.05
# per-file overhead of the adapter beyond tensor data, kept out of the budget: header, tensor
# infos and alignment (an over-estimate; the written total is checked against the budget)
_ADAPTER_OVERHEAD = 4096
_PER_PAIR_OVERHEAD = 2 * (96 + 32)


@dataclass
class ProtectedResult:
    plan: planner.Plan
    coverage: dict[str, Any]
    sizes: dict[str, int]
    files: list[dict[str, Any]] = field(default_factory=list)
    plan_path: Path | None = None


def _scores_for(conv: convert.Conversion, scores_path, fraction: float, progress: bool,
                score_options: dict[str, Any], outdir: Path, dry_run: bool):
    """(scores, mask, activations, metadata, written scores path or None)."""
    if scores_path is not None:
        scores, _, meta = load_scores(scores_path)
        act = load_activations(scores_path)
        fp = conv.source.fingerprint()
        if meta.get("model_fingerprint") != fp:
            raise InputError(f"the scores file {scores_path} was computed for another checkpoint "
                             f"({meta.get('model_name', '?')}, fingerprint "
                             f"{str(meta.get('model_fingerprint'))[:12]}…, this model "
                             f"{fp[:12]}…); score this model with cwp-export score")
        written = None
    else:
        from ..score.pipeline import score_model

        result = score_model(conv.source.path, protect=fraction, progress=progress,
                             **score_options)
        if result is None:  # pragma: no cover - export is not run under torchrun
            raise InputError("run the export in one process; use torchrun for cwp-export score")
        scores, act, meta = result.scores, result.activations, result.metadata
        written = None if dry_run else result.save(outdir / "scores.safetensors")
    names = {t.spec.name: t for t in conv.tensors}
    for n, s in scores.items():
        t = names.get(n)
        if t is None or tuple(s.shape) != tuple(t.spec.shape) or s.ndim != 2:
            raise InputError(f"the scores name tensor {n!r} of shape {list(s.shape)}, which this "
                             f"model's GGUF does not have; score this model again")
    mask = global_threshold_mask(scores, fraction)
    return scores, mask, act, meta, written


def _weight(conv: convert.Conversion, t: convert.PlannedTensor) -> torch.Tensor:
    x = conv.source.load(t.spec.source)
    if t.spec.transform is not None:
        x = t.spec.transform(x)
    return x.float()


def build_plan(conv: convert.Conversion, scores, mask, fraction: float,
               max_size_increase: float, adapter_types: tuple[str, str],
               progress: bool = True) -> planner.Plan:
    base_bytes = sum(t.nbytes for t in convert.build_writer(conv).tensors)
    plain_file = convert.build_writer(conv).data_size()
    header = plain_file - base_bytes
    n_pairs_max = len(scores)
    overhead = _ADAPTER_OVERHEAD + n_pairs_max * _PER_PAIR_OVERHEAD + 64 * len(conv.tensors)
    budget = math.floor(plain_file * (1.0 + max_size_increase)) - header - overhead
    if budget < base_bytes:
        least = math.ceil(1000 * (base_bytes + header + overhead) / plain_file - 1000) / 10
        raise InputError(f"--max-size-increase {100 * max_size_increase:g}% leaves no room for "
                         f"protection over the plain {conv.outtype} file ({plain_file:,} bytes; "
                         f"the adapter's header alone needs {overhead:,}); allow more than "
                         f"{least:g}%")
    by_name = {t.spec.name: t for t in conv.tensors}
    allow_rows = adapter_types[0] != "Q8_0"  # a Q8_0 A would round the dense row residuals
    stats = []
    from tqdm.auto import tqdm

    for name in tqdm(sorted(scores), desc="planning", unit="tensor", leave=False,
                     disable=None if progress else True):
        t = by_name[name]
        st = tensor_stats(name, _weight(conv, t), scores[name], mask[name], t.qtype.name)
        if not lora_target(name) or not t.qtype.is_quantized:
            st.col_mass, st.row_mass = [], []
        elif not allow_rows:
            st.row_mass = []
        stats.append(st)
    return planner.plan(stats, base_preset=conv.outtype, fraction=fraction, budget_bytes=budget,
                        base_bytes=base_bytes, rel_mse=relative_mse(),
                        adapter_types=adapter_types)


class _PairCollector:
    """Keeps one tensor's original and dequantized rows as they stream, then builds its pair."""

    def __init__(self, name: str, shape: tuple[int, int], type_name: str, columns, rows):
        self.name, self.shape, self.type_name = name, shape, type_name
        self.columns, self.rows = list(columns), list(rows)
        self.w = torch.empty(shape, dtype=torch.float32)
        self.q = torch.empty(shape, dtype=torch.float32)
        self.pair = None

    def __call__(self, start: int, chunk: torch.Tensor, blob: bytes) -> None:
        n = chunk.shape[0]
        self.w[start:start + n] = chunk.float()
        self.q[start:start + n] = dequantize(blob, self.type_name, tuple(chunk.shape))
        if start + n == self.shape[0]:
            self.pair = outlier_pair(self.w, self.q, self.columns, self.rows, name=self.name)
            self.w = self.q = None  # free


def _ideal_hook(type_name: str, mask: torch.Tensor):
    """Chunk hook of the ideal mode: dequantize, restore critical weights, emit F32 bytes."""
    def hook(start: int, chunk: torch.Tensor, blob: bytes) -> bytes:
        deq = dequantize(blob, type_name, tuple(chunk.shape))
        m = mask[start:start + chunk.shape[0]]
        return torch.where(m, chunk.float(), deq).numpy().astype("<f4").tobytes()
    return hook


def protected_export(conv: convert.Conversion, outdir: Path, fraction: float, *,
                     scores_path: str | os.PathLike | None = None,
                     max_size_increase: float = DEFAULT_MAX_SIZE_INCREASE,
                     adapter_a_type: str = "Q8_0", critical_weight: float = CRITICAL_WEIGHT,
                     dry_run: bool = False, ideal: bool = False, progress: bool = True,
                     score_options: dict[str, Any] | None = None,
                     weighted_rounding: bool = False, echo=None) -> ProtectedResult:
    """Plan and (unless ``dry_run``) write the protected model, adapter and plan.json.
    By default every tensor is rounded as the plain preset rounds it and the adapter and the type
    upgrades protect; ``weighted_rounding=True`` also weights the rounding of the scored tensors
    (column activation × (1 + ``critical_weight``) on critical weights the adapter does not
    restore)."""
    if conv.outtype in convert.FLOAT_TYPES:
        raise InputError(f"--protect needs a quantized --quant (e.g. Q4_K_M); {conv.outtype} "
                         f"keeps every weight at {conv.outtype} already")
    if not 0 < fraction <= 1:
        raise InputError("--protect must be above 0 for a protected export")
    if not 0 <= max_size_increase <= 10:
        raise InputError(f"--max-size-increase {max_size_increase!r} must be between 0% and "
                         f"1000%")
    if adapter_a_type not in ("F32", "F16", "Q8_0"):
        raise InputError(f"--adapter-type {adapter_a_type!r} is not F32, F16 or Q8_0")
    if critical_weight < 0 or not math.isfinite(critical_weight):
        raise InputError(f"--critical-weight {critical_weight!r} must be a finite number ≥ 0")
    say = echo or (lambda s: None)
    scores, mask, act, meta, scores_written = _scores_for(
        conv, scores_path, fraction, progress, dict(score_options or {}), outdir, dry_run)
    by_name = {t.spec.name: t for t in conv.tensors}
    if adapter_a_type == "Q8_0" and any(by_name[n].spec.shape[1] % 32 for n in scores):
        adapter_a_type = "F16"  # some rows do not hold whole Q8_0 blocks
    plan_ = build_plan(conv, scores, mask, fraction, max_size_increase,
                       (adapter_a_type, "F16"), progress)
    cov = coverage(scores, mask, plan_)
    sizes = {"plain_model": convert.build_writer(conv).data_size()}
    doc: dict[str, Any] = {"plan": plan_.to_json(), "coverage": cov,
                           "scores": {"file": str(scores_path or scores_written or ""),
                                      "scorer": meta.get("scorer"),
                                      "model_fingerprint": meta.get("model_fingerprint")},
                           "critical_weight": critical_weight, "ideal": ideal,
                           "weighted_rounding": weighted_rounding}
    result = ProtectedResult(plan_, cov, sizes)
    if dry_run:
        return result

    tensors = []
    collectors: dict[str, _PairCollector] = {}
    for t in conv.tensors:
        name = t.spec.name
        if name not in scores:
            tensors.append(t)
            continue
        qt = quant.get(plan_.types[name])
        m = mask[name]
        col = act.get(name)
        cols, rows = plan_.columns.get(name, []), plan_.rows.get(name, [])
        imp = None
        if weighted_rounding:
            weighted = m
            if (cols or rows) and not ideal:
                # the adapter restores these weights exactly: their rounding needs no extra care,
                # and weighting them would only pull their blocks' scales away from the rest
                weighted = m.clone()
                if cols:
                    weighted[:, cols] = False
                if rows:
                    weighted[rows, :] = False

            def imp(a: int, b: int, w=weighted, col=col) -> torch.Tensor:
                return element_importance(w[a:b], col, critical_weight)

        if ideal:
            tensors.append(replace(t, qtype=quant.get("F32"), encode_type=qt,
                                   element_importance=imp, on_chunk=_ideal_hook(qt.name, m)))
            continue
        hook = None
        if cols or rows:
            hook = collectors[name] = _PairCollector(name, t.spec.shape, qt.name, cols, rows)
        tensors.append(replace(t, qtype=qt, element_importance=imp, on_chunk=hook))
    conv2 = replace(conv, tensors=tensors)
    stem = f"{conv.source.name}-{conv.outtype}-cwp"
    model_path = outdir / (f"{stem}-ideal.gguf" if ideal else f"{stem}.gguf")
    files = []
    size, sha = convert.write(conv2, model_path, progress=progress)
    files.append({"path": model_path.name, "role": "ideal" if ideal else "model",
                  "quant": conv.outtype, "size": size, "sha256": sha})
    sizes["model"] = size
    if collectors:
        adapter_path = outdir / f"{stem}-outliers.gguf"
        pairs = {n: collectors[n].pair for n in sorted(collectors)}
        a_size, a_sha = write_lora_adapter(adapter_path, conv.adapter.gguf_arch, pairs,
                                           a_type=adapter_a_type, b_type="F16",
                                           base_model_name=conv.source.name,
                                           base_model=model_path)
        files.append({"path": adapter_path.name, "role": "adapter", "size": a_size,
                      "sha256": a_sha, "a_type": adapter_a_type, "b_type": "F16"})
        sizes["adapter"] = a_size
    total = sizes["model"] + sizes.get("adapter", 0)
    sizes["total"] = total
    sizes["budget"] = math.floor(sizes["plain_model"] * (1.0 + max_size_increase))
    if not ideal and total > sizes["budget"]:  # the planner keeps a margin; this is a bug
        raise AssertionError(f"protected files ({total:,} bytes) exceed the budget "
                             f"({sizes['budget']:,})")
    if scores_written is not None:
        files.append({"path": scores_written.name, "role": "scores",
                      "size": scores_written.stat().st_size})
    doc["sizes"] = sizes
    doc["files"] = [f["path"] for f in files]
    plan_path = outdir / "plan.json"
    write_atomic_text(plan_path, json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False)
                      + "\n")
    result.files, result.sizes, result.plan_path = files, sizes, plan_path
    say(format_plan(plan_, cov, sizes))
    return result


def format_plan(plan_: planner.Plan, cov: dict[str, Any], sizes: dict[str, int]) -> str:
    """What the plan does, in a few lines (the dry run prints it too)."""
    n_cols = sum(len(v) for v in plan_.columns.values())
    n_rows = sum(len(v) for v in plan_.rows.values())
    plain = sizes.get("plain_model", plan_.base_bytes)
    lines = [
        f"critical weights: {cov['critical_weights']:,} of {plan_.scored_weights:,} scored "
        f"({100 * plan_.fraction:g}%)",
        f"outliers: {n_cols:,} columns + {n_rows:,} rows in {len(set(plan_.columns) | set(plan_.rows))}"
        f" tensors, restoring {plan_.restored_weights:,} weights "
        f"({100 * plan_.restored_weights / max(1, plan_.scored_weights):.2f}%), adapter "
        f"{plan_.adapter_bytes / 2**20:.2f} MiB of tensor data ({'/'.join(plan_.adapter_types)})",
        f"type upgrades: {len(plan_.upgrades)} tensors"
        + ("" if not plan_.upgrades else " (" + ", ".join(
            f"{n.removesuffix('.weight')} {p[0]}→{p[-1]}"
            for n, p in list(sorted(plan_.upgrades.items()))[:4])
            + (", …" if len(plan_.upgrades) > 4 else "") + ")"),
        f"coverage of the critical set (by score mass / by count): exact "
        f"{100 * cov['exact']['mass']:.1f}% / {100 * cov['exact']['weights']:.1f}%, ≥8-bit "
        f"{100 * cov['8bit']['mass']:.1f}% / {100 * cov['8bit']['weights']:.1f}%, "
        f"importance-weighted only {100 * cov['importance_only']['mass']:.1f}% / "
        f"{100 * cov['importance_only']['weights']:.1f}%",
    ]
    if "total" in sizes:
        lines.append(f"size: model + adapter {sizes['total'] / 2**20:.2f} MiB = "
                     f"{100 * (sizes['total'] / plain - 1):+.2f}% over the plain "
                     f"{plan_.base_preset} file ({plain / 2**20:.2f} MiB; budget "
                     f"{100 * (sizes['budget'] / plain - 1):+.1f}%)")
    else:
        est = plan_.model_bytes + plan_.adapter_bytes
        lines.append(f"tensor data: model + adapter {est / 2**20:.2f} MiB vs "
                     f"{plan_.base_bytes / 2**20:.2f} MiB plain ({100 * (est / plan_.base_bytes - 1):+.2f}%)")
    return "\n".join(lines)
