"""Fisher estimates against a brute-force per-sample loop; the score combination."""

from __future__ import annotations

import pytest
import torch

from cwp_export import probes
from cwp_export.errors import InputError
from cwp_export.score import (
    accumulate_fisher,
    cwp_scores,
    linear_weight_names,
    make_loss,
)
from cwp_export.score import losses as L

SINGLE = {"fairness": L.fairness_loss, "safety": L.safety_loss,
          "general_text": L.general_text_loss, "general_instruct": L.general_instruct_loss}


def _brute_force(model, tok, kind, items, names):
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(params[n]) for n in names}
    for it in items:
        model.zero_grad(set_to_none=True)
        SINGLE[kind](model, tok, it).backward()
        for n in names:
            acc[n] += params[n].grad.square()
    model.zero_grad(set_to_none=True)
    return {n: a / len(items) for n, a in acc.items()}


def _close(a, b):
    for n in b:
        scale = b[n].abs().max()
        assert scale > 0, n
        assert (a[n] - b[n]).abs().max() <= 1e-4 * scale, n


@pytest.mark.parametrize("arch,kind", [("llama", "fairness"), ("qwen3", "fairness"),
                                       ("llama", "safety"), ("qwen3", "general_text"),
                                       ("llama", "general_instruct")])
def test_fisher_matches_brute_force(tiny_lm, arch, kind):
    model, tok, _ = tiny_lm(arch)
    langs = {"fairness": ["en", "tr"], "safety": ["en", "ko"]}.get(kind)
    items = probes.load(kind, langs)[::7][:3]
    names = linear_weight_names(model)
    assert names and all(".layers." in n and n.endswith("proj.weight") for n in names)
    expected = _brute_force(model, tok, kind, items, names)
    loss = make_loss(kind, tok)
    seen = []
    hooks = accumulate_fisher(model, items, loss, names, batch_size=2,
                              progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 3), (3, 3)]
    _close(hooks, expected)
    loop = accumulate_fisher(model, iter(items), loss, names, batch_size=2, method="loop")
    _close(loop, expected)
    assert all(v.dtype == torch.float32 for v in hooks.values())
    assert all(p.grad is None for p in model.parameters())


def test_fisher_embeddings_and_tied_head_use_the_loop(tiny_lm):
    model, tok, _ = tiny_lm("llama")  # tied embeddings: the head shares embed_tokens.weight
    items = probes.load("general_text", ["en"])[:3]
    names = linear_weight_names(model, include_embeddings=True)
    assert "model.embed_tokens.weight" in names
    expected = _brute_force(model, tok, "general_text", items, names)
    got = accumulate_fisher(model, items, make_loss("general_text", tok), names, batch_size=3)
    _close(got, expected)
    with pytest.raises(InputError, match="nn.Linear"):
        accumulate_fisher(model, items, make_loss("general_text", tok), names, method="hooks")


def test_fisher_is_deterministic_and_restores_the_model(tiny_lm):
    model, tok, _ = tiny_lm("qwen3")
    items = probes.load("safety", ["ar"])[:2]
    names = linear_weight_names(model)[:3]
    flags = [p.requires_grad for p in model.parameters()]
    a = accumulate_fisher(model, items, make_loss("safety", tok, "refusal"), names, seed=3)
    b = accumulate_fisher(model, items, make_loss("safety", tok, "refusal"), names, seed=3)
    assert list(a) == names
    assert all(torch.equal(a[n], b[n]) for n in names)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training


def test_fisher_bad_inputs(tiny_lm):
    model, tok, _ = tiny_lm("llama")
    loss = make_loss("general_text", tok)
    with pytest.raises(InputError, match="no parameter"):
        accumulate_fisher(model, [], loss, ["nope.weight"])
    with pytest.raises(InputError, match="no calibration items"):
        accumulate_fisher(model, [], loss, linear_weight_names(model)[:1])
    with pytest.raises(InputError, match="batch size"):
        accumulate_fisher(model, [], loss, linear_weight_names(model)[:1], batch_size=0)


def test_cwp_scores():
    f = {"a": torch.tensor([1.0, 2.0])}
    s = {"a": torch.tensor([0.5, 0.0])}
    t = {"a": torch.tensor([1.0, 1.0])}
    i = {"a": torch.tensor([0.0, 2.0])}
    torch.testing.assert_close(cwp_scores(f, s, t, i, 0.5)["a"], torch.tensor([1.0, 0.5]))
    with pytest.raises(InputError, match="other tensors"):
        cwp_scores(f, {"b": torch.zeros(2)}, t, i, 1.0)
    with pytest.raises(InputError, match="shape"):
        cwp_scores(f, {"a": torch.zeros(3)}, t, i, 1.0)


class _TwoLayer(torch.nn.Module):
    """y = w2 · (W1 x): the gradients are w2 xᵀ (for W1) and W1 x (for w2), by hand."""

    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(2, 2, bias=False)
        self.l2 = torch.nn.Linear(2, 1, bias=False)
        self.unused = torch.nn.Linear(2, 2, bias=False)  # its output never reaches the loss
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]))
            self.l2.weight.copy_(torch.tensor([[3.0, -2.0]]))
            self.unused.weight.fill_(1.0)

    def forward(self, x):
        self.unused(x)
        return self.l2(self.l1(x)).squeeze(-1)


def _two_layer_loss(model, batch):
    return model(torch.stack([it["x"] for it in batch]))


@pytest.mark.parametrize("method", ["hooks", "loop"])
def test_fisher_of_a_two_layer_model_by_hand(method):
    model = _TwoLayer()
    xs = [torch.tensor([1.0, 0.0]), torch.tensor([0.5, -2.0]), torch.tensor([3.0, 1.0])]
    items = [{"x": x} for x in xs]
    names = ["l1.weight", "l2.weight", "unused.weight"]
    got = accumulate_fisher(model, items, _two_layer_loss, names, batch_size=2, method=method)
    w1, w2 = model.l1.weight.detach(), model.l2.weight.detach()[0]
    # d y / d W1[i, j] = w2[i] x[j];  d y / d w2[i] = (W1 x)[i]
    exp1 = sum(torch.outer(w2, x).square() for x in xs) / 3
    exp2 = sum((w1 @ x).square()[None, :] for x in xs) / 3
    torch.testing.assert_close(got["l1.weight"], exp1)
    torch.testing.assert_close(got["l2.weight"], exp2)
    # a weight that cannot affect the loss scores exactly zero
    assert torch.equal(got["unused.weight"], torch.zeros(2, 2))


def test_fisher_sums_scale_and_accumulate():
    from cwp_export.score.fisher import fisher_sums

    model = _TwoLayer()
    items = [{"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([-1.0, 0.0])}]
    mean = accumulate_fisher(model, items, _two_layer_loss, ["l1.weight"])
    acc: dict[str, torch.Tensor] = {}
    assert fisher_sums(model, items, _two_layer_loss, ["l1.weight"], acc, scale=0.5) == 2
    fisher_sums(model, items, _two_layer_loss, ["l1.weight"], acc, scale=-0.25)
    torch.testing.assert_close(acc["l1.weight"], mean["l1.weight"] * 2 * 0.25)
