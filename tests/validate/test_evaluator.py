"""Evaluator: batched log-likelihoods and greedy generation in llama-cpp-python.

Checked against transformers (float32, the same checkpoint) and against itself: one request per
call, no prefix sharing, small batches that split groups and long requests. The fast tests use a
tiny random Llama exported to F32; the slow ones SmolLM2-135M-Instruct in seven languages.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cwp_export.errors import InputError
from cwp_export.testing import PROMPTS, make_tiny_model
from cwp_export.validate.evaluator import Evaluator, _plan_group

# ---------------------------------------------------------------------------------------------
# helpers


def hf_token_logprobs(model, ids: list[int], n_cont: int) -> np.ndarray:
    """Per-token log-probabilities of the last ``n_cont`` of ``ids`` under a transformers model."""
    import torch

    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    tgt = torch.tensor(ids[len(ids) - n_cont:])[:, None]
    return lp[len(ids) - n_cont - 1:-1].gather(1, tgt)[:, 0].double().numpy()


def hf_encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split with a Hugging Face tokenizer (no BOS: these models' GGUFs
    say add_bos_token = false)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    if not context:
        return [tok.bos_token_id], tok(continuation, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return whole[:len(ctx)], whole[len(ctx):]


def hf_greedy(model, ids: list[int], max_new: int, eog: tuple[int, ...]) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new, eos_token_id=list(eog),
                             pad_token_id=eog[0])
    gen = out[0, len(ids):].tolist()
    for i, t in enumerate(gen):
        if t in eog:
            return gen[:i]
    return gen


def max_diff(a, b) -> float:
    return max(abs(x.logprob - y.logprob) for x, y in zip(a, b, strict=True))


def tiny_requests(ev: Evaluator) -> list[tuple[str, str]]:
    """Sentence halves in seven languages, whole sentences after an empty context (pairs that
    share their start), two continuations of one chat prompt, and a duplicate."""
    reqs = []
    for text in PROMPTS.values():
        cut = len(text) // 2
        reqs.append((text[:cut], text[cut:]))
        reqs.append(("", text))
    prompt = ev.chat_prompt("Where is the doctor?")
    reqs += [(prompt, "At 10:30."), (prompt, "Nobody knows."), (PROMPTS["en"][:20], " nurse")]
    reqs.append(reqs[0])
    return reqs


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cwp_export.api import export

    root = tmp_path_factory.mktemp("eval-tiny")
    folder = make_tiny_model("llama", root / "hf")
    gguf = export(folder, quant="F32", outdir=root / "out", progress=False, argv=[]).model_path
    return folder, gguf


@pytest.fixture(scope="module")
def tiny_hf(tiny):
    import torch
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(tiny[0]))
    model = tf.AutoModelForCausalLM.from_pretrained(str(tiny[0]), dtype=torch.float32).eval()
    return tok, model


@pytest.fixture(scope="module")
def ev(tiny):
    with Evaluator(tiny[1], n_ctx=256, n_threads=2) as e:
        yield e


# ---------------------------------------------------------------------------------------------
# planning (pure Python)


def test_plan_shares_prefixes_once_with_nested_sequence_sets():
    inputs = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7], [1, 2, 7], [9]]
    first_out = [1, 3, 0, 2, 0]
    plan, rows = _plan_group(inputs, first_out, share=True)
    # 1 2 shared by items 0-3, 3 by 0-1, 7 by 2-3: 4 + 2 + 1 + 0 + 1 tokens
    assert plan.tokens == [1, 2, 3, 4, 5, 6, 7, 9]
    assert plan.seqs[:3] == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1]]
    assert plan.seqs[6] == [2, 3]
    for j, seq in enumerate(inputs):  # every needed position of every item has a row
        assert len(rows[j]) == len(seq) - first_out[j] and min(rows[j]) >= 0
    assert sum(plan.out) == max(max(r) for r in rows) + 1
    # each sequence's positions are consecutive and its co-owner sets only shrink
    for s in range(len(inputs)):
        mine = [(p, set(o)) for p, o in zip(plan.pos, plan.seqs) if s in o]
        assert [p for p, _ in mine] == list(range(len(inputs[s])))
        assert all(b <= a for (_, a), (_, b) in zip(mine, mine[1:]))
    plain, _ = _plan_group(inputs, first_out, share=False)
    assert len(plain.tokens) == sum(map(len, inputs))


# ---------------------------------------------------------------------------------------------
# tiny model (fast)


def test_backend_info_and_quiet_loading(tiny, capfd):
    capfd.readouterr()
    with Evaluator(tiny[1], n_ctx=128, n_threads=1) as e:
        e.loglik([("Hello", " world")])
        e.generate(["Hello"], max_tokens=3, chat=False)
        info = e.backend
    assert not capfd.readouterr().err, "llama.cpp logged to stderr"
    assert info["device"] == "cpu" and info["n_threads"] == 1 and info["kv_cache"] == "F32"
    assert isinstance(info["gpu_offload_available"], bool) and info["system_info"]


def test_tokenization_and_loglik_match_transformers(ev, tiny_hf):
    tok, model = tiny_hf
    worst = 0.0
    reqs = tiny_requests(ev)
    results = ev.loglik(reqs, per_token=True)
    for (c, x), r in zip(reqs, results):
        ctx, cont = ev.encode_pair(c, x)
        assert (ctx, cont) == hf_encode_pair(tok, c, x), (c, x)
        assert r.n_tokens == len(cont) and r.token_ids == tuple(cont)
        ref = hf_token_logprobs(model, ctx + cont, len(cont))
        worst = max(worst, np.abs(ref - np.array(r.token_logprobs)).max())
        assert r.logprob == pytest.approx(sum(r.token_logprobs))
    print(f"tiny F32: max |d logp| per token vs transformers = {worst:.2e}")
    assert worst < 1e-3


def test_batched_equals_one_by_one_and_sharing_equals_none(tiny, ev):
    reqs = tiny_requests(ev)
    batched = ev.loglik(reqs)
    single = [ev.loglik([r])[0] for r in reqs]
    unshared = ev.loglik(reqs, share_prefixes=False)
    with Evaluator(tiny[1], n_ctx=256, n_batch=16, n_seq_max=3, n_threads=2) as small:
        split = small.loglik(reqs)  # many groups, long requests decoded in several batches
    d = {"single": max_diff(batched, single), "unshared": max_diff(batched, unshared),
         "n_batch=16": max_diff(batched, split)}
    print(f"tiny F32 batched vs: {d}")
    assert all(v <= 1e-4 for v in d.values()), d
    assert [r.is_greedy for r in batched] == [r.is_greedy for r in single]


def test_token_logprobs_scores_every_token(ev):
    text = PROMPTS["fr"]
    lps = ev.token_logprobs(text)
    assert [t for t, _ in lps] == ev.tokenize(text, add_bos=False)
    (whole,) = ev.loglik([("", text)])
    assert sum(v for _, v in lps) == pytest.approx(whole.logprob, abs=1e-4)
    assert all(v <= 0 for _, v in lps)


def test_greedy_flag_agrees_with_generation(ev):
    prompt = PROMPTS["en"][:30]
    (gen,) = ev.generate_tokens([prompt], max_tokens=6, chat=False)
    assert gen, "the tiny model ended at once"
    ctx = ev.tokenize(prompt)
    (hit,) = ev.loglik_tokens([(ctx, gen)])
    assert hit.is_greedy
    other = list(gen)
    other[-1] = (other[-1] + 1) % ev.n_vocab
    (miss,) = ev.loglik_tokens([(ctx, other)])
    assert not miss.is_greedy and miss.logprob < hit.logprob


def test_long_requests_are_left_truncated(tiny):
    with Evaluator(tiny[1], n_ctx=16, n_threads=2) as e, Evaluator(tiny[1], n_ctx=64, n_threads=2) as big:
        ctx = e.tokenize(" ".join(PROMPTS.values()))[:40]
        cont = ctx[5:9]
        (r,) = e.loglik_tokens([(ctx, cont)])
        assert r.truncated and r.n_tokens == 4
        # what is left: the last n_ctx input tokens (the last token is never an input)
        kept = (ctx + cont)[-17:]
        (ref,) = big.loglik_tokens([(kept[:-4], kept[-4:])])
        assert not ref.truncated and r.logprob == pytest.approx(ref.logprob, abs=1e-4)
        with pytest.raises(InputError, match="continuation has 17 tokens"):
            e.loglik_tokens([(ctx[:1], ctx[1:18])])


def test_generation_matches_transformers_and_is_deterministic(tiny, ev, tiny_hf):
    tok, model = tiny_hf
    prompts = [PROMPTS["en"], PROMPTS["ko"], "Les enfants", PROMPTS["en"]]
    small = Evaluator(tiny[1], n_ctx=256, n_batch=16, n_seq_max=3, n_threads=2)
    for chat in (False, True):
        got = ev.generate_tokens(prompts, max_tokens=12, chat=chat)
        assert got == ev.generate_tokens(prompts, max_tokens=12, chat=chat)  # deterministic
        assert got == [ev.generate_tokens([p], max_tokens=12, chat=chat)[0] for p in prompts]
        # several groups, prompts prefilled over several decodes with shared-prefix tokens
        assert got == small.generate_tokens(prompts, max_tokens=12, chat=chat)
        for p, g in zip(prompts, got):
            if chat:
                text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True)
                assert text == ev.chat_prompt(p)
                ids = tok(text, add_special_tokens=False)["input_ids"]
            else:
                ids = tok(p, add_special_tokens=False)["input_ids"]
            assert ids == ev.prompt_tokens(p, chat=chat)
            assert g == hf_greedy(model, ids, 12, ev.eog_tokens), (chat, p)
        texts = ev.generate(prompts, max_tokens=12, chat=chat)
        assert texts == [ev.detokenize(g) for g in got]
    small.close()


def test_lora_adapter_is_applied(tiny, tiny_hf, tmp_path):
    import torch

    from cwp_export.formats.lora import write_lora_adapter

    tok, model = tiny_hf
    g = torch.Generator().manual_seed(0)
    w = model.model.layers[0].mlp.down_proj.weight
    a = torch.randn(2, w.shape[1], generator=g) * 0.5
    b = torch.randn(w.shape[0], 2, generator=g) * 0.5
    lora = tmp_path / "adapter.gguf"
    write_lora_adapter(lora, "llama", {"blk.0.ffn_down.weight": (a, b)}, base_model=tiny[1])
    text = PROMPTS["nl"]
    with Evaluator(tiny[1], lora, n_ctx=128, n_threads=2) as e:
        got = np.array([v for _, v in e.token_logprobs(text)])
        ids = [e.prefix_token] + e.tokenize(text, add_bos=False)
    with torch.no_grad():
        w += b @ a
    try:
        ref = hf_token_logprobs(model, ids, len(ids) - 1)
    finally:
        with torch.no_grad():
            w -= b @ a
    assert np.abs(got - ref).max() < 1e-3


def test_chat_without_template_is_refused(tiny, tmp_path):
    from cwp_export.api import export

    folder = tmp_path / "hf"
    shutil.copytree(tiny[0], folder)
    for f in folder.glob("chat_template.*"):
        f.unlink()
    cfg = folder / "tokenizer_config.json"
    import json

    data = json.loads(cfg.read_text())
    data.pop("chat_template", None)
    cfg.write_text(json.dumps(data))
    gguf = export(folder, quant="F32", outdir=tmp_path / "out", progress=False, argv=[]).model_path
    with Evaluator(gguf, n_ctx=64, n_threads=2) as e:
        assert e.chat_template is None
        with pytest.raises(InputError, match="no chat template.*chat=False"):
            e.generate(["Hello"], max_tokens=2)
        assert len(e.generate(["Hello"], max_tokens=2, chat=False)) == 1


# ---------------------------------------------------------------------------------------------
# errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Evaluator(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_text("this is not a model")
    with pytest.raises(InputError, match="not a GGUF file"):
        Evaluator(p)


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_gguf(tiny, tmp_path, keep, capfd):
    data = tiny[1].read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:int(len(data) * keep)])
    capfd.readouterr()
    with pytest.raises(InputError, match="cannot load .*truncated") as e:
        Evaluator(p, n_threads=1)
    assert "\n" not in str(e.value)
    assert not capfd.readouterr().err


def test_gpu_layers_on_a_cpu_build(tiny):
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python has GPU offload")
    with pytest.raises(InputError, match="n_gpu_layers=1 needs a GPU build.*n_gpu_layers=0"):
        Evaluator(tiny[1], n_gpu_layers=1)


def test_bad_requests_and_closed(tiny):
    e = Evaluator(tiny[1], n_ctx=32, n_threads=1)
    with pytest.raises(InputError, match="empty continuation"):
        e.loglik([("abc", "")])
    with pytest.raises(InputError, match="no context tokens"):
        e.loglik_tokens([([], [5])])
    with pytest.raises(InputError, match="outside the vocabulary"):
        e.loglik_tokens([([1], [10**6])])
    with pytest.raises(InputError, match="exceeds n_ctx"):
        e.generate(["x " * 40], max_tokens=4, chat=False)
    e.close()
    e.close()
    with pytest.raises(InputError, match="closed"):
        e.loglik([("a", "b")])


# ---------------------------------------------------------------------------------------------
# SmolLM2 (slow)

LANGS = ("en", "fr", "nl", "es", "tr", "ko", "ar")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from cwp_export.builtin import builtin_model_path

    try:
        folder = builtin_model_path("smollm2", progress=False)
    except InputError as e:
        pytest.skip(f"built-in SmolLM2 unavailable: {e}")
    cache = {}

    def get(quant: str):
        from cwp_export.api import export

        if quant not in cache:
            out = tmp_path_factory.mktemp(f"smollm2-{quant}")
            cache[quant] = export(folder, quant=quant, outdir=out, progress=False, argv=[]).model_path
        return cache[quant]

    return folder, get


@pytest.fixture(scope="module")
def smollm2_hf(smollm2):
    import torch
    import transformers as tf

    torch.set_num_threads(2)
    tok = tf.AutoTokenizer.from_pretrained(str(smollm2[0]))
    model = tf.AutoModelForCausalLM.from_pretrained(str(smollm2[0]), dtype=torch.float32).eval()
    return tok, model


def probe_requests(ev: Evaluator, per_kind: int = 1) -> dict[str, list[tuple[str, str]]]:
    """Per language: fairness sentence pairs (en fr nl es tr), a chat-templated safety request
    with its refusal and affirmative answers (en ko ar), chat-templated instructions with their
    responses (all seven)."""
    from cwp_export import probes

    reqs: dict[str, list[tuple[str, str]]] = {lang: [] for lang in LANGS}
    seen: dict[tuple[str, str], int] = {}
    for it in probes.load("fairness") + probes.load("safety") + probes.load("general_instruct"):
        kind = it["id"].split("-")[0]
        if seen.get((kind, it["lang"]), 0) >= per_kind:
            continue
        seen[kind, it["lang"]] = seen.get((kind, it["lang"]), 0) + 1
        if "stereotype" in it:
            reqs[it["lang"]] += [(it["context"], it["stereotype"]), (it["context"], it["anti_stereotype"])]
        elif "refusal" in it:
            p = ev.chat_prompt(it["request"])
            reqs[it["lang"]] += [(p, it["refusal"]), (p, it["affirmative"])]
        else:
            reqs[it["lang"]].append((ev.chat_prompt(it["instruction"]), it["response"]))
    return reqs


@pytest.mark.slow
@pytest.mark.parametrize("quant,bound", [("F32", 0.02), ("F16", 0.05)])
def test_smollm2_loglik_matches_transformers(smollm2, smollm2_hf, quant, bound, record_property):
    """F32: within 0.02 nats per token (measured ~5e-5). F16: llama.cpp's CPU kernels round the
    activations to F16 before every F16 matrix product (the weights themselves are exact
    conversions of the bf16 checkpoint), which moves single tokens by up to ~0.03 nats."""
    tok, model = smollm2_hf
    worst = {}
    with Evaluator(smollm2[1](quant), n_ctx=1024, n_threads=2) as ev:
        for lang, reqs in probe_requests(ev).items():
            res = ev.loglik(reqs, per_token=True)
            w = 0.0
            for (c, x), r in zip(reqs, res):
                ctx, cont = ev.encode_pair(c, x)
                assert (ctx, cont) == hf_encode_pair(tok, c, x), (lang, c, x)
                ref = hf_token_logprobs(model, ctx + cont, len(cont))
                w = max(w, float(np.abs(ref - np.array(r.token_logprobs)).max()))
            worst[lang] = w
    print(f"SmolLM2 {quant} max |d logp| per token vs transformers: "
          + " ".join(f"{k}={v:.1e}" for k, v in worst.items()))
    record_property(f"smollm2_{quant}_max_dlogp", worst)
    assert set(worst) == set(LANGS)
    assert max(worst.values()) < bound, worst


@pytest.mark.slow
def test_smollm2_batched_equals_one_by_one(smollm2):
    with Evaluator(smollm2[1]("F32"), n_ctx=1024, n_threads=2) as ev:
        reqs = [r for rs in probe_requests(ev, per_kind=2).values() for r in rs]
        batched = ev.loglik(reqs, per_token=True)
        single = [ev.loglik([r], per_token=True)[0] for r in reqs]
        unshared = ev.loglik(reqs, share_prefixes=False, per_token=True)

    def per_token(a, b):
        return max(np.abs(np.array(x.token_logprobs) - np.array(y.token_logprobs)).max()
                   for x, y in zip(a, b, strict=True))

    d1, d2 = max_diff(batched, single), max_diff(batched, unshared)
    t1, t2 = per_token(batched, single), per_token(batched, unshared)
    print(f"SmolLM2 F32, {len(reqs)} requests: batched vs single {d1:.1e} per request, {t1:.1e} per "
          f"token; shared vs unshared {d2:.1e} / {t2:.1e}")
    # measured 6.6e-5 per request (sums of up to ~60 tokens)
    assert t1 <= 1e-4 and t2 <= 1e-4
    assert d1 <= 2e-4 and d2 <= 2e-4


@pytest.mark.slow
def test_smollm2_generation_matches_transformers(smollm2, smollm2_hf):
    tok, model = smollm2_hf
    prompts = ["What is the capital of France?", "Give me one tip for staying healthy.",
               "Traduis en anglais : le chat dort."]
    with Evaluator(smollm2[1]("F32"), n_ctx=512, n_threads=2) as ev:
        got = ev.generate_tokens(prompts, max_tokens=20)
        assert got == ev.generate_tokens(prompts, max_tokens=20)
        for p, g in zip(prompts, got):
            ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            assert ids == ev.prompt_tokens(p)
            assert g == hf_greedy(model, ids, 20, ev.eog_tokens), p
        print(ev.generate(prompts, max_tokens=20))
