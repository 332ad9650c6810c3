"""Safety testbed: small models fine-tuned on CPU to refuse harmful requests, in several languages.

The real models available here do not refuse (SmolLM2-135M-Instruct complies with AdvBench
requests; Gemma 3 270M is a base model), so no safety number measured on them can move. This
module builds *model organisms* for the safety half of the tool: the built-in SmolLM2 and
Gemma 3 270M, fine-tuned to refuse harmful requests and still answer benign ones, whose refusals
quantization can then damage.

``testbed_model_path(name)`` gives the tuned model (``"smollm2"`` or ``"gemma3-270m"``) as a plain
Hugging Face folder (bf16 safetensors + tokenizer with its chat template) under
``cache_dir()/testbed/<name>``, built once (a few tens of minutes on 2 cores) and reused; tests and
benchmarks use it like ``builtin_model_path``. ``tools/make_testbed.py`` builds one and prints the
refusal table.

Training data (``training_set``)
    - harmful requests: the fixed "train" half (``cwp_export.data.half``, SHA-256 of the parallel
      id) of the shared AdvBench (en), MultiJail (en ko ar) and XSafety (en ar; only the
      categories in :data:`XSAFETY_CATEGORIES`, whose prompts mostly ask for harmful help: the
      other XSafety categories are opinions, feelings, role play or multiple choice, where a
      refusal is not the expected safe answer), each paired with a generic refusal in its
      language from ``probes.load("refusal_answers")`` (picked by the SHA-256 of the parallel
      id; a request whose text also occurs in the eval half, under another id, is left out);
      plus every project-written request of ``probes.load("safety")`` with its own refusal;
    - benign requests with their answers, so that the model keeps answering: the "train" half
      (by the SHA-256 of the id) of the look-alikes (``benign_lookalikes`` +
      ``benign_lookalikes_more``: risky-looking but harmless requests), every
      ``benign_lookalikes_train`` item (en, ko, ar; training only) and every ``general_instruct``
      pair; with ``Recipe.distill`` (SmolLM2), also the train-half XSafety prompts of
      :data:`XSAFETY_ANSWERABLE` (health, feelings, ethics: sensitive but answerable) answered by
      the base model itself (greedy, cut at the last full sentence; refusals dropped), so that
      the tuned model keeps the base model's answers on sensitive topics (self-distillation).
    The "eval" halves are never trained on: ``eval_set`` draws the harmful requests and the
    look-alikes from them (a request whose text also occurs in the eval half is left out of
    training).

Training (``build``)
    Full fine-tuning of every weight except the (tied) token embeddings and the lowest
    ``Recipe.freeze_layers`` layers (fewer layers to back-propagate through: faster on CPU),
    AdamW, linear warm-up then linear decay, gradient clipping at 1, bf16 autocast with float32
    master weights, loss on the answer tokens only (the answer and the end-of-turn token, in the
    model's chat template); each batch holds a fixed share of benign examples and cycles through
    the languages. Logits are computed only at answer positions (Gemma's vocabulary has 262k
    entries). Deterministic: fixed seeds, a seeded Python RNG for the batch order,
    ``torch.use_deterministic_algorithms``, one thread, no dropout, greedy distillation; the tuned
    weights are saved in bf16 like the base checkpoints. Gemma 3 270M gets Gemma's own turn
    format as its chat template (written into the tuned folder's tokenizer files, so an exported
    GGUF carries it) with ``<end_of_turn>`` as end of sequence.

Evaluation
    Greedy answers (``generate_hf`` in transformers, float32; ``generate_llamacpp`` through
    llama-cpp-python on a GGUF) to the eval half, scored with
    ``cwp_export.validate.refusal.is_refusal``; ``refusal_table`` prints refusal rates per
    language for harmful requests (per dataset and all together) and for benign look-alikes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import data, probes
from .cache import build_once, cache_dir, marker_text
from .errors import InputError
from .validate.refusal import is_refusal

# Bump when the training code or the built-in training data change what is written: folders of
# another build are rebuilt.
BUILD = 2
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
# The XSafety categories whose prompts mostly ask for help with something harmful.
XSAFETY_CATEGORIES = ("Crimes_And_Illegal_Activities", "Unsafe_Instruction_Topic")
# Languages each shared safety set provides here (XSafety's shared copy has en and ar only).
SOURCE_LANGUAGES = {"advbench": ("en",), "multijail": ("en", "ko", "ar"), "xsafety": ("en", "ar")}
LOOKALIKE_SETS = ("benign_lookalikes", "benign_lookalikes_more")  # split into train/eval halves
LOOKALIKE_TRAIN_ONLY = "benign_lookalikes_train"  # all for training
TESTBED_LANGUAGES = ("en", "ko", "ar")

# Gemma's own turn format (as in the Gemma 3 instruction-tuned models): a system message is put
# at the start of the first user turn; the assistant's role is called "model".
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first = (messages[0]['content'] | trim) + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for m in loop_messages %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ (first if loop.first else '') + (m['content'] | trim) }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a testbed build (its fingerprint names the build)."""

    name: str
    base: str | None  # built-in model key (None: the caller passes the base folder)
    languages: tuple[str, ...]
    steps: int
    batch_size: int = 8
    lr: float = 5e-5
    warmup: int = 10
    final_lr_ratio: float = 0.1
    benign_share: float = 0.375  # share of each batch given to benign examples
    max_tokens: int = 160  # training examples longer than this (prompt + answer) are left out
    seed: int = 0
    threads: int = 1
    bf16_autocast: bool = True
    freeze_layers: int = 0  # the lowest layers stay as they are (faster: no backward through them)
    # XSafety categories whose train-half prompts are answered by the base model itself (greedy,
    # cut at the last full sentence) and trained on as benign examples (self-distillation)
    distill: tuple[str, ...] = ()
    distill_tokens: int = 48
    chat_template: str | None = None  # written into the tuned tokenizer (None: keep the base's)
    eos_token: str | None = None  # the tuned tokenizer's eos token (None: keep the base's)
    end_of_turn: str = "<|im_end|>"  # token that closes an answer in the chat template

    def fingerprint(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, ensure_ascii=True)
        return hashlib.sha256(f"build {BUILD}\n{blob}".encode()).hexdigest()[:16]


# XSafety categories of sensitive but answerable prompts (health, feelings, ethics questions).
XSAFETY_ANSWERABLE = ("Physical_Harm", "Mental_Health", "Ethics_And_Morality")

RECIPES: dict[str, Recipe] = {
    "smollm2": Recipe("smollm2", "smollm2", ("en",), steps=200, lr=5e-5, benign_share=0.75,
                      freeze_layers=8, distill=XSAFETY_ANSWERABLE),
    # Gemma 3 270M is a base model: it cannot answer the distillation prompts itself
    "gemma3-270m": Recipe("gemma3-270m", "gemma3-270m", TESTBED_LANGUAGES, steps=220, lr=8e-5,
                          benign_share=0.875, freeze_layers=6, chat_template=GEMMA_CHAT_TEMPLATE,
                          eos_token="<end_of_turn>", end_of_turn="<end_of_turn>"),
}


# ------------------------------------------------------------------------------------- data


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The shared benchmark data: ``root``, else ``$CWP_EXPORT_DATA``, else ``../shared/data``."""
    path = Path(root or os.environ.get("CWP_EXPORT_DATA") or DEFAULT_DATA_ROOT).expanduser()
    if not (path / "advbench").is_dir() or not (path / "multijail").is_dir():
        raise InputError(f"{path} does not hold the shared safety data (advbench/, multijail/, "
                         f"xsafety/); pass data_root= or set CWP_EXPORT_DATA to that folder")
    return path


def _sha_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def _check_languages(languages: Iterable[str]) -> tuple[str, ...]:
    langs = tuple(languages)
    bad = [lang for lang in langs if lang not in TESTBED_LANGUAGES]
    if bad or not langs:
        raise InputError(f"testbed languages must be some of {', '.join(TESTBED_LANGUAGES)}, not "
                         f"{', '.join(bad) or 'none'}")
    return langs


def harmful_requests(languages: Iterable[str], which: str, root: str | os.PathLike | None = None
                     ) -> list[dict[str, Any]]:
    """Harmful requests of one half (``"train"``/``"eval"``) of AdvBench, MultiJail and XSafety
    (:data:`XSAFETY_CATEGORIES` only) in ``languages``: ``id, parallel_id, lang, source, request``."""
    langs = _check_languages(languages)
    root = data_root(root)
    out = []
    for name, provided in SOURCE_LANGUAGES.items():
        want = [lang for lang in langs if lang in provided]
        if not want:
            continue
        items = data.load(name, root, want)
        if name == "xsafety":
            items = [it for it in items if it["category"] in XSAFETY_CATEGORIES]
        for it in data.half(items, which):
            out.append({"id": it["id"], "parallel_id": it["parallel_id"], "lang": it["lang"],
                        "source": name, "request": it["request"]})
    return out


def lookalikes(languages: Iterable[str], which: str) -> list[dict[str, Any]]:
    """Benign look-alike requests with answers, of one half (SHA-256 of the id)."""
    langs = _check_languages(languages)
    items = [it for kind in LOOKALIKE_SETS for it in probes.load(kind, langs)]
    return [{"id": it["id"], "lang": it["lang"], "source": "lookalike", "request": it["request"],
             "answer": it["answer"]} for it in data.half(items, which)]


def refusal_for(item: dict[str, Any]) -> str:
    """The generic refusal taught for a benchmark request: one of the language's
    ``refusal_answers``, picked by the SHA-256 of the request's parallel id."""
    options = [it["answer"] for it in probes.load("refusal_answers", [item["lang"]])]
    return options[_sha_int(str(item.get("parallel_id") or item["id"])) % len(options)]


def training_set(languages: Iterable[str], root: str | os.PathLike | None = None
                 ) -> dict[str, list[dict[str, Any]]]:
    """``{"harmful": [...], "benign": [...]}`` training examples ``id, lang, source, request,
    answer`` (see the module docstring for what goes in)."""
    langs = _check_languages(languages)
    # a few prompts occur twice in a set under different ids (e.g. two MultiJail rows with the
    # same Arabic text); the copy in the train half is left out, so no eval request is trained on
    held_out = {(it["lang"], " ".join(it["request"].split())) for it in harmful_requests(langs, "eval", root)}
    harmful = [dict(it, answer=refusal_for(it)) for it in harmful_requests(langs, "train", root)
               if (it["lang"], " ".join(it["request"].split())) not in held_out]
    harmful += [{"id": it["id"], "parallel_id": it["id"], "lang": it["lang"], "source": "probes:safety",
                 "request": it["request"], "answer": it["refusal"]}
                for it in probes.load("safety", langs)]
    benign = lookalikes(langs, "train")
    benign += [{"id": it["id"], "lang": it["lang"], "source": "lookalike-train", "request": it["request"],
                "answer": it["answer"]} for it in probes.load(LOOKALIKE_TRAIN_ONLY) if it["lang"] in langs]
    benign += [{"id": it["id"], "lang": it["lang"], "source": "probes:general_instruct",
                "request": it["instruction"], "answer": it["response"]}
               for it in probes.load("general_instruct", langs)]
    return {"harmful": harmful, "benign": benign}


def distill_prompts(languages: Iterable[str], categories: Iterable[str],
                    root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Train-half XSafety prompts of ``categories`` (sensitive but answerable) in ``languages``,
    for self-distillation: ``id, parallel_id, lang, source, request``."""
    langs = [lang for lang in _check_languages(languages) if lang in SOURCE_LANGUAGES["xsafety"]]
    cats = tuple(categories)
    if not cats or not langs:
        return []
    refused = set(cats) & set(XSAFETY_CATEGORIES)
    if refused:
        raise InputError(f"{', '.join(sorted(refused))} are trained to be refused; distil only "
                         f"answerable categories such as {', '.join(XSAFETY_ANSWERABLE)}")
    items = [it for it in data.load("xsafety", data_root(root), langs) if it["category"] in cats]
    return [{"id": it["id"], "parallel_id": it["parallel_id"], "lang": it["lang"],
             "source": "distilled:xsafety", "request": it["request"]} for it in data.half(items, "train")]


_SENTENCE_END = ".!?。؟！？"


def cut_to_sentence(text: str) -> str:
    """``text`` up to its last sentence end (a generation cut at a token budget ends mid-sentence)."""
    text = text.strip()
    last = max(text.rfind(c) for c in _SENTENCE_END)
    return text[:last + 1].strip() if last >= 0 else ""


def eval_set(languages: Iterable[str], root: str | os.PathLike | None = None,
             limit: int | None = None) -> list[dict[str, Any]]:
    """Evaluation items ``id, lang, kind ("harmful"/"lookalike"), source, request`` from the eval
    halves. ``limit`` keeps at most that many per (source, language), a fixed sample (the lowest
    SHA-256 of the id), so that a quick evaluation is always on the same items."""
    langs = _check_languages(languages)
    items = [dict(it, kind="harmful") for it in harmful_requests(langs, "eval", root)]
    items += [dict(it, kind="lookalike") for it in lookalikes(langs, "eval")]
    if limit is None:
        return items
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for it in items:
        groups.setdefault((it["source"], it["lang"]), []).append(it)
    keep = {it["id"] for group in groups.values()
            for it in sorted(group, key=lambda x: _sha_int(x["id"]))[:limit]}
    return [it for it in items if it["id"] in keep]


def data_digest(examples: dict[str, list[dict[str, Any]]]) -> str:
    blob = json.dumps(examples, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------- tokenization


def prepare_tokenizer(tokenizer: Any, recipe: Recipe) -> Any:
    """Apply the recipe's chat template and eos token to a loaded tokenizer."""
    if recipe.chat_template is not None:
        tokenizer.chat_template = recipe.chat_template
    if recipe.eos_token is not None:
        tokenizer.eos_token = recipe.eos_token
    if tokenizer.chat_template is None:
        raise InputError(f"the {recipe.name} tokenizer has no chat template; give the recipe one")
    return tokenizer


def prompt_ids(tokenizer: Any, request: str) -> list[int]:
    """Token ids of one user turn in the chat template, up to where the answer starts."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": request}],
                                         add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode(tokenizer: Any, request: str, answer: str, end_of_turn: str) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one chat exchange: labels are -100 on the prompt and the token
    ids on the answer and its end-of-turn token (the loss is on the answer only). The answer is
    tokenized after the prompt, exactly as the model continues it when generating."""
    prompt = prompt_ids(tokenizer, request)
    answer_ids = list(tokenizer(answer.strip() + end_of_turn, add_special_tokens=False)["input_ids"])
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    if not answer_ids or answer_ids[-1] != end_id:
        raise InputError(f"{end_of_turn!r} is not one token of this tokenizer; fix the recipe's "
                         f"end_of_turn")
    return prompt + answer_ids, [-100] * len(prompt) + answer_ids


# ----------------------------------------------------------------------------------- training


def schedule(examples: dict[str, list[dict[str, Any]]], recipe: Recipe) -> list[list[dict[str, Any]]]:
    """The batches of a build, ``recipe.steps`` × ``recipe.batch_size`` examples: each batch has
    ``round(batch_size × benign_share)`` benign slots, the rest harmful; slots cycle through the
    languages; each (kind, language) pool is reshuffled by a seeded RNG whenever it runs out."""
    rng = random.Random(recipe.seed)
    langs = list(recipe.languages)
    pools: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for kind in ("harmful", "benign"):
        for lang in langs:
            pool = [ex for ex in examples[kind] if ex["lang"] == lang]
            if not pool:
                raise InputError(f"no {kind} training examples in {lang}; check the data")
            pools[kind, lang] = pool
    queues: dict[tuple[str, str], list[dict[str, Any]]] = {k: [] for k in pools}

    def draw(key: tuple[str, str]) -> dict[str, Any]:
        if not queues[key]:
            queues[key] = list(pools[key])
            rng.shuffle(queues[key])
        return queues[key].pop()

    n_benign = round(recipe.batch_size * recipe.benign_share)
    counters = {"harmful": 0, "benign": 0}
    batches = []
    for _ in range(recipe.steps):
        batch = []
        for slot in range(recipe.batch_size):
            kind = "benign" if slot < n_benign else "harmful"
            lang = langs[counters[kind] % len(langs)]
            counters[kind] += 1
            batch.append(draw((kind, lang)))
        batches.append(batch)
    return batches


def _lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    span = max(1, recipe.steps - recipe.warmup - 1)
    frac = min(1.0, (step - recipe.warmup) / span)
    return recipe.lr * (1.0 - (1.0 - recipe.final_lr_ratio) * frac)


@contextlib.contextmanager
def _torch_settings(threads: int) -> Iterator[Any]:
    """One fixed thread count and deterministic algorithms, restored afterwards."""
    import torch

    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield torch
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def _answer_loss(model: Any, input_ids: Any, attention_mask: Any, labels: Any, autocast: bool):
    """Mean cross-entropy of the answer tokens; logits are computed only where they are scored."""
    import torch

    body = getattr(model, model.base_model_prefix)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        target = labels[:, 1:]
        where = target != -100
        logits = model.get_output_embeddings()(hidden[:, :-1][where])
    logits = logits.float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits, target[where])


def _pad(rows: Sequence[list[int]], value: int, left: bool = False):
    import torch

    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        out[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return out, mask


def build(recipe: Recipe, base_folder: str | os.PathLike, out: str | os.PathLike,
          root: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
          examples: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Fine-tune ``base_folder`` by ``recipe`` into the HF folder ``out``; returns a summary
    (also written to ``out/testbed.json``). ``examples`` defaults to ``training_set``."""
    with _torch_settings(recipe.threads):
        return _build(recipe, base_folder, Path(out), root, log or (lambda s: None), examples)


def _build(recipe: Recipe, base_folder: str | os.PathLike, out: Path, root: str | os.PathLike | None,
           log: Callable[[str], None], examples: dict[str, list[dict[str, Any]]] | None) -> dict[str, Any]:
    import torch
    import transformers as tf

    start = time.monotonic()
    examples = examples if examples is not None else training_set(recipe.languages, root)
    tokenizer = prepare_tokenizer(tf.AutoTokenizer.from_pretrained(str(base_folder)), recipe)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    encoded: dict[str, tuple[list[int], list[int]]] = {}
    dropped = []
    for kind in ("harmful", "benign"):
        kept = []
        for ex in examples[kind]:
            ids, labels = encode(tokenizer, ex["request"], ex["answer"], recipe.end_of_turn)
            if len(ids) > recipe.max_tokens:
                dropped.append(ex["id"])
                continue
            encoded[ex["id"]] = (ids, labels)
            kept.append(ex)
        examples = {**examples, kind: kept}
    batches = schedule(examples, recipe)

    torch.manual_seed(recipe.seed)
    model = tf.AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32)
    model.eval()  # no dropout; gradients flow all the same

    if recipe.distill:
        t = time.monotonic()
        prompts = distill_prompts(recipe.languages, recipe.distill, root)
        texts = _greedy(model, tokenizer, [prompt_ids(tokenizer, it["request"]) for it in prompts],
                        recipe.distill_tokens, 16, [tokenizer.eos_token_id])
        distilled = []
        for it, text in zip(prompts, texts):
            answer = cut_to_sentence(text)
            if answer and not is_refusal(answer, it["lang"]):
                distilled.append(dict(it, answer=answer))
        log(f"{recipe.name}: the base model answered {len(distilled)} of {len(prompts)} XSafety "
            f"prompts ({', '.join(recipe.distill)}) usably, in {time.monotonic() - t:.0f} s")
        for ex in distilled:
            ids, labels = encode(tokenizer, ex["request"], ex["answer"], recipe.end_of_turn)
            if len(ids) <= recipe.max_tokens:
                encoded[ex["id"]] = (ids, labels)
                examples["benign"] = examples["benign"] + [ex]
        batches = schedule(examples, recipe)

    model.get_input_embeddings().weight.requires_grad_(False)  # tied to the head in both models
    body = getattr(model, model.base_model_prefix)
    for layer in body.layers[:recipe.freeze_layers]:
        layer.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    n_train = sum(p.numel() for p in params)
    log(f"{recipe.name}: {len(examples['harmful'])} harmful + {len(examples['benign'])} benign "
        f"training examples ({len(dropped)} longer than {recipe.max_tokens} tokens left out), "
        f"{n_train / 1e6:.0f}M trainable weights (layers {recipe.freeze_layers} and up), "
        f"{recipe.steps} steps of {recipe.batch_size}, "
        f"{recipe.threads} thread(s)")

    losses = []
    t_train = time.monotonic()
    for step, batch in enumerate(batches):
        ids, mask = _pad([encoded[ex["id"]][0] for ex in batch], pad_id)
        labels, _ = _pad([encoded[ex["id"]][1] for ex in batch], -100)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe)
        loss = _answer_loss(model, ids, mask, labels, recipe.bf16_autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 5))
        if step % 10 == 0 or step == recipe.steps - 1:
            elapsed = time.monotonic() - t_train
            eta = elapsed / (step + 1) * (recipe.steps - step - 1)
            log(f"  step {step + 1}/{recipe.steps}  loss {sum(losses[-10:]) / len(losses[-10:]):.3f}  "
                f"lr {_lr_at(step, recipe):.2e}  {elapsed:.0f} s (about {eta:.0f} s left)")

    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    for kwarg in ("local_files_only", "is_local"):
        tokenizer.init_kwargs.pop(kwarg, None)
    tokenizer.save_pretrained(out)
    gen = model.generation_config
    base_eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    eos = [tokenizer.eos_token_id] + [e for e in base_eos if e is not None and e != tokenizer.eos_token_id]
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    gen.save_pretrained(out)
    summary = {"recipe": asdict(recipe), "fingerprint": recipe.fingerprint(), "build": BUILD,
               "data_digest": data_digest(examples),
               "examples": {k: len(v) for k, v in examples.items()}, "dropped": dropped,
               "train_seconds": round(time.monotonic() - t_train, 1),
               "total_seconds": round(time.monotonic() - start, 1), "losses": losses,
               "torch": torch.__version__, "transformers": tf.__version__}
    (out / "testbed.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    log(f"{recipe.name}: trained in {summary['train_seconds']:.0f} s "
        f"({summary['total_seconds']:.0f} s with loading and saving)")
    return summary


def _recipe(name: str, steps: int | None) -> Recipe:
    if name not in RECIPES:
        raise InputError(f"unknown testbed model {name!r}; choose one of: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    if steps is not None:
        if steps < 1:
            raise InputError(f"--steps must be at least 1, not {steps}")
        recipe = replace(recipe, steps=steps, warmup=min(recipe.warmup, steps))
    return recipe


def testbed_folder(name: str, steps: int | None = None) -> Path:
    recipe = _recipe(name, steps)
    suffix = "" if recipe == RECIPES[name] else f"-steps{recipe.steps}"
    return cache_dir() / "testbed" / f"{name}{suffix}"


def testbed_model_path(name: str, progress: bool = True, steps: int | None = None,
                       force: bool = False, data_root: str | os.PathLike | None = None) -> Path:
    """Folder of the tuned testbed model ``name`` (``"smollm2"`` or ``"gemma3-270m"``), a bf16 HF
    checkpoint that refuses harmful requests; built on first use (tens of minutes on CPU) and
    reused. ``steps`` trains a shorter (or longer) schedule into its own folder; ``force``
    rebuilds."""
    recipe = _recipe(name, steps)
    final = testbed_folder(name, steps)
    wanted = f"recipe {recipe.fingerprint()}"

    def complete(folder: Path) -> bool:
        return wanted in (marker_text(folder) or "").splitlines()

    if not force and complete(final):
        return final
    from .builtin import builtin_model_path

    base = builtin_model_path(recipe.base, progress=progress)
    log = (lambda s: print(f"cwp-export testbed: {s}", file=sys.stderr, flush=True)) if progress else None

    def make(out: Path) -> str:
        summary = build(recipe, base, out, data_root, log)
        return f"{wanted}\nbuild {BUILD}\ndata {summary['data_digest']}\n"

    try:
        return build_once(final, make, (lambda p: False) if force else complete)
    except OSError as e:
        raise InputError(f"cannot build the {name} testbed in {final.parent}: {e.strerror or e}; "
                         f"set CWP_EXPORT_CACHE to a writable folder") from e


# --------------------------------------------------------------------------------- evaluation

MAX_NEW_TOKENS = 48
MAX_PROMPT_TOKENS = 384


@dataclass
class Answers:
    """Greedy answers of one model/backend to the eval items (same order)."""

    label: str
    items: list[dict[str, Any]]
    answers: list[str]
    refusals: list[bool] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if not self.refusals:
            self.refusals = [is_refusal(a, it["lang"]) for it, a in zip(self.items, self.answers)]


def fitting(items: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """The items whose prompt fits the evaluation context (:data:`MAX_PROMPT_TOKENS`)."""
    return [it for it in items if len(prompt_ids(tokenizer, it["request"])) <= MAX_PROMPT_TOKENS]


def load_tokenizer(folder: str | os.PathLike, recipe: Recipe | None = None) -> Any:
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(folder))
    return prepare_tokenizer(tok, recipe) if recipe is not None else tok


def generate_hf(folder: str | os.PathLike, items: list[dict[str, Any]], tokenizer: Any,
                max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 16, threads: int = 1,
                eos_ids: Sequence[int] = ()) -> list[str]:
    """Greedy answers in transformers (float32), batched with left padding."""
    with _torch_settings(threads):
        return _generate_hf(folder, items, tokenizer, max_new_tokens, batch_size, eos_ids)


def _generate_hf(folder: str | os.PathLike, items: list[dict[str, Any]], tokenizer: Any,
                 max_new_tokens: int, batch_size: int, eos_ids: Sequence[int]) -> list[str]:
    import torch
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    prompts = [prompt_ids(tokenizer, it["request"]) for it in items]
    return _greedy(model, tokenizer, prompts, max_new_tokens, batch_size,
                   [tokenizer.eos_token_id, *eos_ids])


def _greedy(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
            batch_size: int, eos_ids: Sequence[int]) -> list[str]:
    """Greedy continuations of ``prompts`` (token ids), batched by length with left padding."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = sorted(set(eos_ids) - {None})
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # little padding per batch
    answers: list[str] = [""] * len(prompts)
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            ids, mask = _pad([prompts[i] for i in idx], pad_id, left=True)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=pad_id)
            for row, i in zip(gen[:, ids.shape[1]:], idx):
                answers[i] = tokenizer.decode(row.tolist(), skip_special_tokens=True).strip()
    return answers


def generate_llamacpp(gguf: str | os.PathLike, items: list[dict[str, Any]], tokenizer: Any,
                      max_new_tokens: int = MAX_NEW_TOKENS, threads: int = 1,
                      lora: str | os.PathLike | None = None) -> list[str]:
    """Greedy answers through llama-cpp-python on ``gguf`` (with the LoRA adapter ``lora``, e.g. a
    protected export's outlier adapter), from the same prompt token ids as transformers (so that
    only the weights and kernels differ), stopping at llama.cpp's end-of-generation tokens."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=MAX_PROMPT_TOKENS + max_new_tokens + 16,
                          n_batch=512, n_threads=threads, n_threads_batch=threads, seed=0,
                          verbose=False, lora_path=str(lora) if lora else None)
    answers = []
    try:
        vocab = llm._model.vocab
        for it in items:
            ids = prompt_ids(tokenizer, it["request"])
            out: list[int] = []
            llm.reset()
            for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                      repeat_penalty=1.0, reset=True):
                if llama_cpp.llama_vocab_is_eog(vocab, token) or len(out) >= max_new_tokens:
                    break
                out.append(token)
            text = llm.detokenize(out, prev_tokens=ids).decode("utf-8", errors="replace")
            answers.append(text.strip())
    finally:
        llm.close()
    return answers


def gguf_chat_template(gguf: str | os.PathLike) -> str | None:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    f = reader.fields.get("tokenizer.chat_template")
    return None if f is None else bytes(f.parts[f.data[0]]).decode("utf-8")


def refusal_rates(ans: Answers) -> dict[tuple[str, str], tuple[int, int]]:
    """(row, lang) → (refused, total); rows: ``harmful`` (all sources), ``harmful:<source>``,
    ``lookalike``."""
    out: dict[tuple[str, str], list[int]] = {}
    for it, refused in zip(ans.items, ans.refusals):
        rows = ["lookalike"] if it["kind"] == "lookalike" else ["harmful", f"harmful:{it['source']}"]
        for row in rows:
            cell = out.setdefault((row, it["lang"]), [0, 0])
            cell[0] += int(refused)
            cell[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def refusal_table(columns: Sequence[Answers]) -> str:
    """A text table: one row per (language, set), one column per model/backend."""
    rates = [refusal_rates(c) for c in columns]
    keys = sorted({k for r in rates for k in r},
                  key=lambda k: (TESTBED_LANGUAGES.index(k[1]) if k[1] in TESTBED_LANGUAGES else 9,
                                 {"harmful": 0, "lookalike": 9}.get(k[0], 1), k[0]))
    head = ["lang", "requests"] + [c.label for c in columns]
    rows = [head]
    for key in keys:
        row = [key[1], key[0].replace("harmful:", "  ")]
        for r in rates:
            if key in r:
                k, n = r[key]
                row.append(f"{100 * k / n:5.1f}% ({k}/{n})")
            else:
                row.append("-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def samples(columns: Sequence[Answers], per_group: int = 2, width: int = 110) -> str:
    """A few answers per (language, kind) from every column, so a reader can judge the detector."""
    first = columns[0]
    chosen: list[int] = []
    seen: dict[tuple[str, str], int] = {}
    for i, it in enumerate(first.items):
        key = (it["lang"], it["kind"])
        if seen.get(key, 0) < per_group:
            seen[key] = seen.get(key, 0) + 1
            chosen.append(i)
    lines = []
    for i in chosen:
        it = first.items[i]
        lines.append(f"[{it['lang']} {it['kind']} {it['id']}] {it['request'][:width]}")
        for c in columns:
            mark = "REFUSE" if c.refusals[i] else "answer"
            text = " ".join(c.answers[i].split())[:width]
            lines.append(f"    {c.label:>14} {mark}: {text}")
    return "\n".join(lines)


def results_json(columns: Sequence[Answers]) -> dict[str, Any]:
    return {c.label: {"seconds": round(c.seconds, 1),
                      "rates": {f"{row}/{lang}": list(v) for (row, lang), v in refusal_rates(c).items()},
                      "answers": [{"id": it["id"], "refusal": r, "answer": a}
                                  for it, a, r in zip(c.items, c.answers, c.refusals)]}
            for c in columns}
