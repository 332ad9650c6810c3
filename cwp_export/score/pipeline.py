"""The scoring stage end to end: model + calibration data → GGUF-named scores, mask and summary.

Memory: the model in float32 (4 bytes per parameter) + one float32 accumulator per scored weight
(4 bytes each; the ``cwp`` score collects its four Fisher terms in one accumulator) + the
activations of one batch for the backward pass + one [items, out, in] per-item gradient block of
at most 128 MiB. For a model that does not fit with all accumulators, score a subset of the layers
per pass (``layers_per_pass``): every pass runs the data again and keeps accumulators for its
layers only.

Data parallel: run under ``torchrun --nproc-per-node N`` (gloo on CPU, NCCL on GPU). Rank r
takes items r, r+N, r+2N, ... of every calibration set; the accumulated sums are all-reduced and
rank 0 writes the file. The result equals a one-process run up to float32 summation order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import InputError
from ..formats.scores import save_scores, to_gguf_names
from . import calibration, scorers
from .fisher import fisher_sums, linear_weight_names
from .losses import SAFETY_TARGETS, encode, encode_text, make_loss
from .mask import global_threshold_mask, summary

CHAT_KINDS = ("safety", "general_instruct")


@dataclass
class ScoreResult:
    """GGUF-named scores and mask, the metadata written with them, and the summary."""

    scores: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    activations: dict[str, torch.Tensor] = field(default_factory=dict)  # E[x²] per column
    path: Path | None = None

    def save(self, path: str | os.PathLike) -> Path:
        self.path = save_scores(path, self.scores, self.mask, self.metadata, self.activations)
        return self.path


class _World:
    """This process's place in a data-parallel run (rank 0 of 1 when not under torchrun)."""

    def __init__(self, device: torch.device):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.owned = False
        if self.size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                self.owned = True

    def shard(self, items: list[Any]) -> list[Any]:
        return items[self.rank::self.size]

    def all_reduce(self, tensors: Iterable[torch.Tensor]) -> None:
        if self.size > 1:
            import torch.distributed as dist

            for t in tensors:
                dist.all_reduce(t)

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


class _Context:
    """What a scorer sees (see :mod:`.scorers`)."""

    def __init__(self, model, tokenizer, names, calib, *, beta, batch_size, seed, safety_target,
                 progress, world: _World):
        self.model, self.tokenizer, self.names, self.calib = model, tokenizer, names, calib
        self.beta, self.batch_size, self.seed = beta, batch_size, seed
        self.safety_target, self.progress, self.world = safety_target, progress, world
        self.params = dict(model.named_parameters())
        self.tokens = 0
        self._act: tuple[dict[str, torch.Tensor], int] | None = None

    def param(self, name: str) -> torch.Tensor:
        return self.params[name]

    def _bar(self, desc: str, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="item", leave=False,
                    disable=None if (self.progress and self.world.rank == 0) else True)

    def _targets(self, kind: str) -> list[str]:
        if kind != "safety":
            return ["affirmative"]
        return list(SAFETY_TARGETS) if self.safety_target == "both" else [self.safety_target]

    def fisher(self, weights: dict[str, float]) -> dict[str, torch.Tensor]:
        """``Σ_kind weight · F_kind`` (each F a mean over that kind's items)."""
        acc = {n: torch.zeros(self.params[n].shape, dtype=torch.float32,
                              device=self.params[n].device) for n in self.names}
        tokens = 0
        for kind, w in weights.items():
            items = self.calib[kind].items
            if not items or w == 0:
                continue
            shard = self.world.shard(items)
            targets = self._targets(kind)
            bar = self._bar(kind, len(shard) * len(targets))
            try:
                for k, target in enumerate(targets):
                    loss = make_loss(kind, self.tokenizer, target)
                    tokens += sum(len(s) for it in shard for s in loss.encode(it).ids)
                    base = k * len(shard)
                    fisher_sums(self.model, shard, loss, self.names, acc,
                                scale=w / (len(items) * len(targets)),
                                batch_size=self.batch_size, seed=self.seed,
                                progress=lambda done, total, b=bar, o=base: b.update(
                                    o + done - b.n))
            finally:
                bar.close()
        count = torch.tensor([tokens], dtype=torch.float64)
        self.world.all_reduce([*acc.values(), count])
        self.tokens += int(count.item())
        return acc

    def activation_squares(self) -> tuple[dict[str, torch.Tensor], int]:
        """Σ x_j² per input column of each scored linear layer over the general-text tokens
        (padding excluded), and the token count (computed once per context)."""
        if self._act is None:
            self._act = self._activation_squares()
        return self._act

    def _activation_squares(self) -> tuple[dict[str, torch.Tensor], int]:
        items = self.calib["general_text"].items
        if not items:
            raise InputError("this scorer needs general text (--calib-general); it is 'none'")
        modules = {n: m for n, m in self.model.named_modules()
                   if isinstance(m, torch.nn.Linear) and f"{n}.weight" in self.names}
        sq = {f"{n}.weight": torch.zeros(m.in_features, dtype=torch.float32,
                                         device=m.weight.device) for n, m in modules.items()}
        count = torch.zeros(1, dtype=torch.float64)
        shard = self.world.shard(items)
        mask_box: list[torch.Tensor] = []

        def hook(name):
            def fn(mod, args, out):
                x = args[0].detach().float() * mask_box[0][..., None]
                sq[name] += x.square().sum(dim=tuple(range(x.ndim - 1)))
            return fn

        handles = [m.register_forward_hook(hook(f"{n}.weight")) for n, m in modules.items()]
        dev = next(self.model.parameters()).device
        bar = self._bar("activations", len(shard))
        try:
            with torch.no_grad():
                for i in range(0, len(shard), self.batch_size):
                    seqs = [encode_text(self.tokenizer, it["text"])
                            for it in shard[i:i + self.batch_size]]
                    width = max(len(s) for s in seqs)
                    ids = torch.zeros(len(seqs), width, dtype=torch.long, device=dev)
                    att = torch.zeros(len(seqs), width, dtype=torch.long, device=dev)
                    for j, s in enumerate(seqs):
                        ids[j, :len(s)] = torch.tensor(s)
                        att[j, :len(s)] = 1
                    mask_box[:] = [att.float()]
                    self.model(input_ids=ids, attention_mask=att, use_cache=False)
                    count += int(att.sum())
                    bar.update(len(seqs))
        finally:
            for h in handles:
                h.remove()
            bar.close()
        self.world.all_reduce([*sq.values(), count])
        self.tokens += int(count.item())
        return sq, int(count.item())


def _layer_of(name: str) -> int | None:
    m = re.search(r"\.(?:layers|h)\.(\d+)\.", name) or re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _load_model(path: Path, device: torch.device, chat_template: str | None, progress: bool):
    import transformers as tf

    if not progress:
        tf.utils.logging.disable_progress_bar()
    try:
        tok = tf.AutoTokenizer.from_pretrained(path)
        model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except Exception as e:  # any failure to load the user's checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"transformers cannot load {path} for scoring ({first}); check the "
                         f"checkpoint folder") from e
    if chat_template is not None and chat_template != "plain":
        p = Path(chat_template).expanduser()
        try:
            tok.chat_template = p.read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"cannot read the chat template {p}: {e.strerror or e}") from e
    if chat_template == "plain":
        tok.chat_template = None
    return model.to(device).eval(), tok


def _check_chat(tokenizer, calib, chat_template: str | None, model_name: str) -> None:
    if chat_template == "plain" or getattr(tokenizer, "chat_template", None):
        return
    needing = [k for k in CHAT_KINDS if calib.get(k) is not None and calib[k].items]
    if needing:
        raise InputError(f"{model_name} has no chat template, and the {' and '.join(needing)} "
                         f"calibration puts requests in one; give a Jinja template with "
                         f"--chat-template FILE, or --chat-template plain for 'request + newline' "
                         f"as plain text")


def _check_items(kind: str, tokenizer, items: list[dict[str, Any]], target: str) -> None:
    """Encode every item once up front so a bad item fails before hours of scoring."""
    targets = list(SAFETY_TARGETS) if (kind == "safety" and target == "both") else [target]
    for it in items:
        for t in targets:
            if kind == "safety" and not isinstance(it.get(t), str):
                raise InputError(f"safety item {it.get('id', '?')!r} has no {t!r} answer; give "
                                 f"--safety-target {'refusal' if t == 'affirmative' else 'affirmative'}"
                                 f" or items with both answers")
            encode(kind, tokenizer, it, t)


def score_model(model: str | os.PathLike, *, scorer: str = "cwp", protect: float = 0.01,
                beta: float = 1.0, languages: Sequence[str] | None = None,
                calib: dict[str, Sequence[str]] | None = None,
                safety_target: str = "affirmative", max_per_language: int | None = None,
                batch_size: int = 8, seed: int = 0, layers: Sequence[int] | None = None,
                layers_per_pass: int | None = None, device: str | None = None,
                chat_template: str | None = None, progress: bool = True) -> ScoreResult | None:
    """Score every linear weight of the transformer blocks of ``model`` (a checkpoint folder or
    a cached hub id) and mark the top ``protect`` fraction under one global threshold.

    ``calib`` maps a calibration kind (fairness, safety, general_text, general_instruct) to
    source specs (see :mod:`.calibration`). Returns None on ranks other than 0 of a torchrun.
    """
    from ..arch import adapter_for
    from ..source import open_source

    sc = scorers.get(scorer)
    if safety_target not in (*SAFETY_TARGETS, "both"):
        raise InputError(f"--safety-target {safety_target!r} is unknown; choose affirmative, "
                         f"refusal or both")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size} must be at least 1")
    if layers_per_pass is not None and layers_per_pass < 1:
        raise InputError(f"--layers-per-pass {layers_per_pass} must be at least 1")
    if not 0 <= protect <= 1:
        raise InputError(f"the protected fraction {protect!r} is outside 0..1")
    languages = calibration.check_languages(languages)
    calib = dict(calib or {})
    unknown = set(calib) - set(calibration.DEFAULT_LANGUAGES)
    if unknown:
        raise InputError(f"unknown calibration kind {sorted(unknown)[0]!r}")
    sets = {k: (calibration.resolve(k, calib.get(k), languages, max_per_language)
                if k in sc.needs else calibration.CalibrationSet(k, [], ["unused"]))
            for k in calibration.DEFAULT_LANGUAGES}

    source = open_source(model)
    adapter = adapter_for(source.config)
    dev = torch.device(device) if device else torch.device(
        f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device; use "
                         "--device cpu")
    hf_model, tok = _load_model(source.path, dev, chat_template, progress)
    _check_chat(tok, sets, chat_template, source.name)
    for k, cs in sets.items():
        _check_items(k, tok, cs.items, safety_target)

    names = linear_weight_names(hf_model)
    if layers is not None:
        wanted = set(int(x) for x in layers)
        n_layer = 1 + max(_layer_of(n) or 0 for n in names)
        bad = sorted(x for x in wanted if not 0 <= x < n_layer)
        if bad:
            raise InputError(f"--layers names layer {bad[0]}, the model has layers 0..{n_layer - 1}")
        names = [n for n in names if _layer_of(n) in wanted]
    by_layer: dict[int | None, list[str]] = {}
    for n in names:
        by_layer.setdefault(_layer_of(n), []).append(n)
    order = sorted(by_layer, key=lambda x: -1 if x is None else x)
    step = layers_per_pass or len(order)
    passes = [[n for lay in order[i:i + step] for n in by_layer[lay]]
              for i in range(0, len(order), step)]

    world = _World(dev)
    try:
        torch.manual_seed(seed)
        hf_scores: dict[str, torch.Tensor] = {}
        hf_act: dict[str, torch.Tensor] = {}
        tokens = 0
        for group in passes:
            ctx = _Context(hf_model, tok, group, sets, beta=beta, batch_size=batch_size,
                           seed=seed, safety_target=safety_target, progress=progress,
                           world=world)
            got = sc.fn(ctx)
            hf_scores.update({n: t.detach().float().cpu() for n, t in got.items()})
            if sets["general_text"].items:
                # the columns' mean squared activations: the imatrix part of the export's
                # importance-weighted rounding (a forward pass over the general text)
                sq, count = ctx.activation_squares()
                hf_act.update({n: (sq[n] / max(1, count)).cpu() for n in group})
            tokens += ctx.tokens
            del got
        if world.rank != 0:
            return None
    finally:
        world.close()

    shapes = {n: r.shape for n, r in source.tensors.items()}
    scores = to_gguf_names(adapter, shapes, hf_scores)
    gguf_name = {s.source: s.name for s in adapter.tensor_specs(shapes) if s.source is not None}
    act = {gguf_name[n]: a for n, a in hf_act.items()}  # columns keep their order
    mask = global_threshold_mask(scores, protect)
    summ = summary(scores, mask)
    summ["layers"] = layer_summary(summ)
    meta = {
        "tool": f"cwp-export {__version__}", "scorer": scorer, "beta": float(beta),
        "safety_target": safety_target, "fraction": float(protect), "seed": int(seed),
        "model_name": source.name, "model_fingerprint": source.fingerprint(),
        "architecture": adapter.gguf_arch, "languages": {k: s.languages for k, s in sets.items()
                                                         if s.items},
        "data": {k: s.describe() for k, s in sets.items() if k in sc.needs},
        "calibration_tokens": int(tokens), "world_size": world.size, "batch_size": batch_size,
        "layers": sorted({_layer_of(n) for n in names if _layer_of(n) is not None}),
        "torch": torch.__version__, "summary": summ,
    }
    return ScoreResult(scores, mask, meta, summ, act)


def layer_summary(summ: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per block: weights, critical weights, their share, and the block's share of the mass."""
    out: dict[str, dict[str, float]] = {}
    for name, row in summ["tensors"].items():
        lay = _layer_of(name)
        key = "other" if lay is None else str(lay)
        d = out.setdefault(key, {"weights": 0, "critical": 0, "mass_share": 0.0})
        d["weights"] += row["weights"]
        d["critical"] += row["critical"]
        d["mass_share"] += row["mass_share"]
    for d in out.values():
        d["critical_share"] = d["critical"] / max(1, d["weights"])
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == "other", int(kv[0])
                                                    if kv[0].isdigit() else 0)))


def format_summary(summ: dict[str, Any], top: int = 8) -> str:
    """A short table: critical share and mass per tensor kind, the heaviest layers, and how
    concentrated the mask is in columns and rows."""
    kinds: dict[str, dict[str, float]] = {}
    for name, row in summ["tensors"].items():
        kind = re.sub(r"^blk\.\d+\.", "", name).removesuffix(".weight")
        d = kinds.setdefault(kind, {"w": 0, "c": 0, "m": 0.0, "cols": 0.0, "rows": 0.0})
        d["w"] += row["weights"]
        d["c"] += row["critical"]
        d["m"] += row["mass_share"]
        # concentration, weighted by the tensor's share of the mass
        d["cols"] += row.get("top1pct_cols", 0.0) * row["mass_share"]
        d["rows"] += row.get("top1pct_rows", 0.0) * row["mass_share"]
    lines = [f"critical weights: {summ['critical']:,} of {summ['weights']:,} "
             f"({100 * summ['critical_share']:.3f}%)",
             f"{'tensor':<14}{'critical %':>11}{'mass %':>9}{'top-1% cols':>13}"
             f"{'top-1% rows':>13}"]
    for kind, d in sorted(kinds.items(), key=lambda kv: -kv[1]["m"]):
        m = d["m"] or 1.0
        lines.append(f"{kind:<14}{100 * d['c'] / max(1, d['w']):>11.3f}{100 * d['m']:>9.1f}"
                     f"{100 * d['cols'] / m:>12.1f}%{100 * d['rows'] / m:>12.1f}%")
    layers = summ.get("layers", {})
    heavy = sorted(layers.items(), key=lambda kv: -kv[1]["mass_share"])[:top]
    if heavy:
        lines.append("heaviest layers (mass %): " + ", ".join(
            f"{k}: {100 * v['mass_share']:.1f}" for k, v in heavy))
    return "\n".join(lines)
