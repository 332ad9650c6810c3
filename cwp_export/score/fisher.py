"""Diagonal Fisher estimates: the mean over samples of the squared per-sample gradient.

Two exact ways to get per-sample gradients:

- ``"hooks"`` (default when it applies): one forward/backward per batch; for each chosen weight
  that belongs to exactly one ``nn.Linear`` (so not a tied embedding/head), the per-sample
  gradient is ``Σ_t g_t x_tᵀ`` over that sample's positions, built from the layer's input ``x`` and
  output gradient ``g``. Exact because the samples of a batch do not interact (causal model, right
  padding; the loss of a sample depends on its own sequences only).
- ``"loop"``: one backward per sample. Needed for embeddings and tied weights; also the reference
  the hooks path is tested against.

Gradients are squared and summed in float32 for the chosen parameters only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..errors import InputError

Progress = Callable[[int, int | None], None] | None


def linear_weight_names(model: Any, include_embeddings: bool = False) -> list[str]:
    """Names of the 2-D weights of the transformer blocks' linear layers (plus, optionally, the
    token embedding and an untied output head), in ``named_parameters`` order."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    out = []
    for name, p in model.named_parameters():
        if p.ndim != 2:
            continue
        in_block = ".layers." in name or ".h." in name
        if (in_block and id(p) in linear) or (include_embeddings and not in_block):
            out.append(name)
    return out


def _owners(model: Any) -> dict[int, list[torch.nn.Module]]:
    owners: dict[int, list[torch.nn.Module]] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(m)
    return owners


def _batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def accumulate_fisher(model: Any, items: Iterable[dict[str, Any]], loss_fn: Callable,
                      param_names: Sequence[str], batch_size: int = 4,
                      progress: Progress = None, method: str = "auto",
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean over ``items`` of the squared gradient of each item's loss, per chosen parameter.

    ``loss_fn(model, batch) -> tensor[len(batch)]`` gives per-item losses (see
    :func:`.losses.make_loss`). ``items`` is consumed as a stream, ``batch_size`` at a time.
    ``progress(done, total)`` is called after each batch (``total`` is None for a stream of
    unknown length). The model is put in eval mode; its ``requires_grad`` flags are restored.
    """
    acc: dict[str, torch.Tensor] = {}
    done = fisher_sums(model, items, loss_fn, param_names, acc, batch_size=batch_size,
                       progress=progress, method=method, seed=seed)
    if done == 0:
        raise InputError("no calibration items: the Fisher estimate needs at least one")
    return {n: a / done for n, a in acc.items()}


def fisher_sums(model: Any, items: Iterable[dict[str, Any]], loss_fn: Callable,
                param_names: Sequence[str], into: dict[str, torch.Tensor], *,
                scale: float = 1.0, batch_size: int = 4, progress: Progress = None,
                method: str = "auto", seed: int = 0) -> int:
    """Add ``scale · Σ_items (∂loss/∂W)²`` into ``into[name]`` (float32, created when missing)
    for each chosen parameter; return the number of items seen.

    One accumulator can thus collect a weighted sum of several losses' Fisher estimates (the
    ``cwp`` score needs no accumulator per loss). Arguments as in :func:`accumulate_fisher`.
    """
    if batch_size < 1:
        raise InputError(f"batch size {batch_size} must be at least 1")
    if method not in ("auto", "hooks", "loop"):
        raise ValueError(method)
    params = dict(model.named_parameters())
    unknown = [n for n in param_names if n not in params]
    if unknown or not param_names:
        raise InputError(f"the model has no parameter {unknown[0]!r}" if unknown
                         else "no parameters chosen for the Fisher estimate")
    owners = _owners(model)
    hookable = all(len(owners.get(id(params[n]), [])) == 1
                   and isinstance(owners[id(params[n])][0], torch.nn.Linear)
                   and owners[id(params[n])][0].weight is params[n] for n in param_names)
    if method == "hooks" and not hookable:
        raise InputError("the hooks method needs every chosen parameter to be the weight of one "
                         "nn.Linear (not tied); use method='loop'")
    use_hooks = hookable and method != "loop"
    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]

    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    flags = {n: p.requires_grad for n, p in params.items()}
    chosen = {id(params[n]) for n in param_names}
    for p in params.values():
        p.requires_grad_(id(p) in chosen)
    for n in param_names:
        if n not in into:
            into[n] = torch.zeros(params[n].shape, dtype=torch.float32, device=params[n].device)
    acc = into
    done = 0
    try:
        for batch in _batches(items, batch_size):
            if use_hooks:
                _hooks_batch(model, batch, loss_fn, {n: owners[id(params[n])][0]
                                                    for n in param_names}, acc, scale)
            else:
                _loop_batch(model, batch, loss_fn, {n: params[n] for n in param_names}, acc,
                            scale)
            done += len(batch)
            if progress is not None:
                progress(done, total)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
            p.grad = None
        model.train(was_training)
    return done


def _loop_batch(model, batch, loss_fn, params: dict[str, torch.Tensor], acc, scale) -> None:
    plist = list(params.values())
    for item in batch:
        loss = loss_fn(model, [item])[0]
        grads = torch.autograd.grad(loss, plist, allow_unused=True)
        for (n, _), g in zip(params.items(), grads):
            if g is not None:
                acc[n].add_(g.float().square(), alpha=scale)


# Per-item gradients of one layer are formed this many elements at a time (bounds the
# [items, out, in] temporary for big layers).
_PER_ITEM_ELEMENTS = 1 << 25


def _hooks_batch(model, batch, loss_fn, modules: dict[str, torch.nn.Module], acc, scale) -> None:
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []

    def fwd(name):
        def hook(mod, args, out):
            inputs[name] = args[0].detach()
            if out.requires_grad:
                outputs[name] = out
        return hook

    for n, m in modules.items():
        handles.append(m.register_forward_hook(fwd(n)))
    try:
        losses = loss_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
    # the sequence → item map: encode again (cheap) to learn how many rows each item used
    rows = [len(loss_fn.encode(it).ids) for it in batch] if hasattr(loss_fn, "encode") \
        else [1] * len(batch)
    names = [n for n in modules if n in outputs]
    # gradients w.r.t. the layers' outputs only: the weight gradients (summed over the batch)
    # are never formed, the per-item ones below replace them
    grads = torch.autograd.grad(losses.sum(), [outputs[n] for n in names], allow_unused=True)
    outputs.clear()
    for n, g in zip(names, grads):
        if g is None:
            continue  # this weight does not influence the loss
        x, g = inputs.pop(n), g.detach()
        if x.shape[0] != sum(rows):
            raise RuntimeError(f"{n}: {x.shape[0]} rows but {sum(rows)} sequences")
        _add_per_item_squares(acc[n], g, x, rows, scale)


def _add_per_item_squares(acc: torch.Tensor, g: torch.Tensor, x: torch.Tensor, rows: list[int],
                          scale: float) -> None:
    """``acc += scale · Σ_items (Σ_{item's positions} g_t x_tᵀ)²`` for one linear layer."""
    g = g.float().reshape(g.shape[0], -1, g.shape[-1])  # [sequences, T, out]
    x = x.float().reshape(x.shape[0], -1, x.shape[-1])  # [sequences, T, in]
    if len(set(rows)) == 1:
        # the sequences of one item are adjacent and equal in number: join their positions
        r = rows[0]
        g = g.reshape(len(rows), r * g.shape[1], g.shape[2])
        x = x.reshape(len(rows), r * x.shape[1], x.shape[2])
        step = max(1, _PER_ITEM_ELEMENTS // (g.shape[2] * x.shape[2]))
        for i in range(0, len(rows), step):
            per_item = torch.bmm(g[i:i + step].transpose(1, 2), x[i:i + step])
            acc.add_(per_item.square_().sum(0), alpha=scale)
        return
    row_item = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows))
    per_row = torch.bmm(g.transpose(1, 2), x)
    per_item = torch.zeros(len(rows), *per_row.shape[1:], dtype=torch.float32,
                           device=per_row.device)
    per_item.index_add_(0, row_item.to(per_row.device), per_row)
    acc.add_(per_item.square_().sum(0), alpha=scale)


def cwp_scores(F_fair: dict[str, torch.Tensor], F_safe: dict[str, torch.Tensor],
               F_gen_text: dict[str, torch.Tensor], F_gen_instruct: dict[str, torch.Tensor],
               beta: float) -> dict[str, torch.Tensor]:
    """``F_fair + F_safe − β·(F_gen_text + F_gen_instruct)``, per parameter (all four must name
    the same parameters with the same shapes)."""
    names = list(F_fair)
    for label, d in (("safety", F_safe), ("general text", F_gen_text),
                     ("general instruct", F_gen_instruct)):
        if set(d) != set(names):
            raise InputError(f"the {label} Fisher covers other tensors than the fairness Fisher")
        for n in names:
            if d[n].shape != F_fair[n].shape:
                raise InputError(f"{n}: {label} Fisher has shape {list(d[n].shape)}, fairness "
                                 f"{list(F_fair[n].shape)}")
    b = float(beta)
    return {n: (F_fair[n].float() + F_safe[n].float()
                - b * (F_gen_text[n].float() + F_gen_instruct[n].float())) for n in names}
