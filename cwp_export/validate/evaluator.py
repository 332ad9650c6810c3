"""Run a GGUF in llama-cpp-python for validation: batched log-likelihoods and greedy generation.

:class:`Evaluator` is the one place the validation suites (DESIGN.md section 5) touch llama.cpp.
It drives llama.cpp's low-level API directly (``llama_decode`` on a ``llama_batch``), because the
suites score thousands of short (context, continuation) pairs and the high-level ``Llama`` object
decodes one sequence at a time:

* **many sequences per decode.** Requests are packed into groups of at most ``n_batch`` tokens;
  a group is one ``llama_decode`` call with one sequence id per request, and the KV cache (one
  *unified* cache of ``n_ctx`` cells, shared by all sequences) is cleared between groups.
* **shared prefixes decoded once.** Requests are sorted by their tokens; the tokens two or more
  requests have in common at the start (a shared context, the common beginning of a sentence
  pair) are put in the batch once, carrying the sequence ids of every request that shares them,
  so their KV cells are shared by those sequences (llama.cpp's multi-sequence tokens, the way
  ``llama-perplexity --hellaswag`` shares a context between its endings).
* **logits only where needed**: the positions that predict continuation tokens.
* **F32 KV cache** by default (``f32_cache=True``), so scores do not carry the F16 cache's
  rounding; flash attention is off.

Scores from a batch equal one-by-one scores up to float rounding: a request's attention sums
run over other KV cells (masked ones add exact zeros, but the summation grouping changes). With
F32 weights that stays below 1e-4 nats per request (measured on SmolLM2 with the F32 cache:
7e-5 for requests of up to ~60 tokens). With F16 or quantized weights
llama.cpp's CPU kernels round the activations to F16 / 8 bits before each matrix product, and a
last-bit change can flip such a rounding, and the flips add up along a request: on SmolLM2 F16
a request moves by ~3e-4 nats per token between batch layouts (0.05 nats for a 155-token
answer). That is the resolution of paired comparisons on such files (llama.cpp's own F16 CPU
path differs from transformers by up to 0.016 nats per token); the order and grouping are
deterministic, so the same list of requests always gives the same scores.

Tokenization follows lm-evaluation-harness: trailing whitespace of the context (a chat prompt's
final newline too) moves to the continuation; context + continuation are tokenized jointly and
the continuation's tokens are those after the context's own tokens; a BOS token is added when
the GGUF says so
(``tokenizer.ggml.add_bos_token``); an empty context is replaced by the BOS token (or EOS when the
vocabulary has no BOS). Special-token text (``<|im_start|>``) is parsed as the special token, as
Hugging Face tokenizers do. A request longer than ``n_ctx`` keeps its last ``n_ctx`` input
tokens (left truncation, as lm-evaluation-harness does; ``LogLik.truncated`` says so); a
continuation that alone is longer than ``n_ctx`` is refused with an :class:`InputError`.

Generation is greedy (argmax, first index on ties): prompts are prefilled together (shared
prefixes once, e.g. a chat template's system turn), then every unfinished sequence advances by
one token per ``llama_decode`` until an end-of-generation token or ``max_tokens``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["Evaluator", "LogLik", "render_chat"]


@dataclass(frozen=True)
class LogLik:
    """The score of one (context, continuation) request."""

    logprob: float
    """sum of log p(token | everything before it) over the continuation's tokens (nats)"""
    n_tokens: int
    """number of continuation tokens"""
    is_greedy: bool
    """every continuation token is the argmax of its position (greedy decoding would produce it)"""
    truncated: bool = False
    """the context was left-truncated to fit ``n_ctx``"""
    token_ids: tuple[int, ...] | None = None
    """the continuation's token ids (with ``per_token=True``)"""
    token_logprobs: tuple[float, ...] | None = None
    """per-token log-probabilities (with ``per_token=True``)"""


# ---------------------------------------------------------------------------------------------
# llama.cpp logging: quiet unless asked, and the last lines kept for error messages

_LOG_LINES: deque[str] = deque(maxlen=200)
_LOG_ECHO = [False]
_LOG_CALLBACK = None  # the ctypes callback object, kept alive for as long as llama.cpp may call it


def _log_callback():
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        import llama_cpp

        @llama_cpp.llama_log_callback
        def callback(level, text, user_data):
            s = text.decode("utf-8", "replace") if text else ""
            _LOG_LINES.append(s)
            if _LOG_ECHO[0]:
                sys.stderr.write(s)

        _LOG_CALLBACK = callback
    return _LOG_CALLBACK


@contextmanager
def _llama_logs(verbose: bool) -> Iterator[deque[str]]:
    """Route llama.cpp's log to a buffer (echoed to stderr only when ``verbose``) while inside,
    then give it back to llama-cpp-python's own handler."""
    import llama_cpp

    try:  # llama-cpp-python's own handler (prints errors, or everything with verbose=True)
        from llama_cpp._logger import llama_log_callback as default
    except ImportError:  # pragma: no cover - other llama-cpp-python versions
        default = None
    _LOG_LINES.clear()
    _LOG_ECHO[0] = verbose
    llama_cpp.llama_log_set(_log_callback(), ctypes.c_void_p(0))
    try:
        yield _LOG_LINES
    finally:
        llama_cpp.llama_log_set(default, ctypes.c_void_p(0))


def _last_error(lines: deque[str]) -> str:
    text = "".join(lines)
    errs = [ln.strip() for ln in text.splitlines()
            if "error" in ln.lower() or "failed" in ln.lower() or "invalid" in ln.lower()]
    return (errs[-1] if errs else (text.strip().splitlines() or ["no message from llama.cpp"])[-1])[:300]


_BACKEND_READY = [False]


def _backend_init() -> None:
    import llama_cpp

    if not _BACKEND_READY[0]:
        with _llama_logs(False):
            llama_cpp.llama_backend_init()
        _BACKEND_READY[0] = True


# ---------------------------------------------------------------------------------------------
# chat templates, rendered as transformers renders them


def render_chat(template: str, messages: Sequence[dict[str, str]], *, bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with a Jinja chat template the way transformers'
    ``apply_chat_template`` does (sandboxed environment, ``trim_blocks``/``lstrip_blocks``,
    loop controls, ``raise_exception``, ``strftime_now`` and a non-ASCII-preserving ``tojson``)."""
    import json
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=list(messages), bos_token=bos_token,
                                            eos_token=eos_token,
                                            add_generation_prompt=add_generation_prompt)


# ---------------------------------------------------------------------------------------------
# batch planning (pure Python, no llama.cpp)


@dataclass
class _Plan:
    """The tokens of one group in batch order: token, position, sequence ids (indices into the
    group's items), output flag; and for every output token, the items that read it."""

    tokens: list[int]
    pos: list[int]
    seqs: list[list[int]]
    out: list[bool]


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _plan_group(inputs: Sequence[Sequence[int]], first_out: Sequence[int], share: bool
                ) -> tuple[_Plan, list[list[int]]]:
    """Lay out one group of sequences (already sorted when ``share``) as batch tokens.

    Item ``j`` needs the logits of its positions ``first_out[j] .. len(inputs[j]) - 1``. With
    ``share``, the tokens an item has in common with the next items (a prefix) are emitted once
    with all their sequence ids (a trie walked depth-first, so each sequence's positions are
    consecutive and its sets of co-owners only shrink, as llama.cpp requires). Returns the plan
    and, per item, the output-row index of each of its needed positions."""
    k = len(inputs)
    lcp = [0] * k
    if share:
        for i in range(1, k):
            lcp[i] = _lcp(inputs[i - 1], inputs[i])
    plan = _Plan([], [], [], [])
    rows: list[list[int]] = [[-1] * (len(inputs[j]) - first_out[j]) for j in range(k)]
    n_rows = 0
    for i in range(k):
        # items i+1.. sharing position p with item i: those with min(lcp[i+1..j]) > p
        sharers: list[tuple[int, int]] = []  # (j, min lcp up to j), min non-increasing
        m = 1 << 30
        for j in range(i + 1, k):
            m = min(m, lcp[j])
            if m <= lcp[i]:
                break
            sharers.append((j, m))
        seq = inputs[i]
        for p in range(lcp[i], len(seq)):
            while sharers and sharers[-1][1] <= p:
                sharers.pop()
            owners = [i] + [j for j, _ in sharers]
            readers = [j for j in owners if p >= first_out[j]]
            plan.tokens.append(int(seq[p]))
            plan.pos.append(p)
            plan.seqs.append(owners)
            plan.out.append(bool(readers))
            if readers:
                for j in readers:
                    rows[j][p - first_out[j]] = n_rows
                n_rows += 1
    return plan, rows


def _pack(inputs: Sequence[Sequence[int]], order: Sequence[int], budget: int, max_seqs: int,
          share: bool, extra: Sequence[int] | None = None) -> list[list[int]]:
    """Split ``order`` into consecutive groups whose batch tokens (after prefix sharing) plus
    ``extra`` tokens per item fit ``budget``, with at most ``max_seqs`` items; an item that alone
    exceeds the budget forms its own group."""
    groups: list[list[int]] = []
    cur: list[int] = []
    used = 0
    prev: Sequence[int] = ()
    for i in order:
        seq = inputs[i]
        cost = len(seq) - (_lcp(prev, seq) if share and cur else 0) + (extra[i] if extra else 0)
        if cur and (used + cost > budget or len(cur) >= max_seqs):
            groups.append(cur)
            cur, used = [], 0
            cost = len(seq) + (extra[i] if extra else 0)
        cur.append(i)
        used += cost
        prev = seq
    if cur:
        groups.append(cur)
    return groups


def _log_softmax_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise log-sum-exp (float64) and argmax of a float32 logits matrix."""
    top = x.argmax(axis=1)
    m = x[np.arange(x.shape[0]), top]
    e = np.subtract(x, m[:, None])
    np.exp(e, out=e)
    lse = m.astype(np.float64) + np.log(e.sum(axis=1, dtype=np.float64))
    return lse, top


# ---------------------------------------------------------------------------------------------


class Evaluator:
    """A GGUF model (plus an optional LoRA adapter GGUF) loaded in llama-cpp-python for scoring
    and greedy generation. Use as a context manager, or call :meth:`close`.

    ``n_ctx``: KV cache cells (the longest request, and the room generation has);
    ``n_batch``: tokens per ``llama_decode`` (and the size of a scoring group);
    ``n_threads``: CPU threads (default: the CPUs this process may use);
    ``n_gpu_layers``: layers offloaded to the GPU (-1: all), needs a GPU build;
    ``f32_cache``: F32 instead of llama.cpp's default F16 KV cache;
    ``seed``: recorded in :attr:`backend` (greedy decoding draws no random numbers);
    ``verbose``: let llama.cpp's log through to stderr.
    """

    def __init__(self, model_path: str | Path, lora_path: str | Path | None = None, *,
                 n_ctx: int = 2048, n_threads: int | None = None, n_gpu_layers: int = 0,
                 n_batch: int = 512, f32_cache: bool = True, seed: int = 0,
                 n_seq_max: int = 256, verbose: bool = False):
        import llama_cpp

        self._lib = llama_cpp
        self._model = self._ctx = self._batch = self._lora = None
        self.verbose = verbose
        self.model_path = Path(model_path)
        self.lora_path = Path(lora_path) if lora_path is not None else None
        _check_gguf(self.model_path, "model")
        if self.lora_path is not None:
            _check_gguf(self.lora_path, "LoRA adapter")
        if n_ctx < 8 or n_batch < 1:
            raise InputError(f"n_ctx={n_ctx}, n_batch={n_batch} are too small; use n_ctx >= 8 and "
                             "n_batch >= 1 (defaults 2048 and 512)")
        gpu_ok = bool(llama_cpp.llama_supports_gpu_offload())
        if n_gpu_layers != 0 and not gpu_ok:
            raise InputError(f"n_gpu_layers={n_gpu_layers} needs a GPU build of llama-cpp-python but "
                             "the installed one is CPU-only; use n_gpu_layers=0, or reinstall it "
                             "with CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --force-reinstall "
                             "--no-cache-dir llama-cpp-python")
        if n_threads is None:
            n_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
        self.n_threads = int(n_threads)
        self.n_ctx = int(n_ctx)
        self.n_batch = int(min(n_batch, n_ctx))
        # llama.cpp reserves one output row per sequence within the n_batch rows it allocates
        self.n_seq_max = int(max(1, min(n_seq_max, self.n_batch,
                                        llama_cpp.llama_max_parallel_sequences())))
        self.f32_cache = f32_cache
        self.seed = seed
        _backend_init()

        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers < 0 else int(n_gpu_layers)
        with _llama_logs(verbose) as logs:
            self._model = llama_cpp.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self._model:
            raise InputError(f"llama.cpp cannot load {self.model_path}: {_last_error(logs)}; the file "
                             "is damaged, truncated or of an unsupported architecture: export it again "
                             "with cwp-export")
        try:
            self._init_context(n_gpu_layers)
        except BaseException:
            self.close()
            raise
        self.backend: dict[str, Any] = {
            "device": "gpu" if n_gpu_layers != 0 else "cpu",
            "n_gpu_layers": n_gpu_layers,
            "gpu_offload_available": gpu_ok,
            "n_threads": self.n_threads,
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_seq_max": self.n_seq_max,
            "kv_cache": "F32" if f32_cache else "F16",
            "seed": seed,
            "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
            "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        }

    # -- set-up ------------------------------------------------------------------------------

    def _init_context(self, n_gpu_layers: int) -> None:
        lib = self._lib
        cp = lib.llama_context_default_params()
        cp.n_ctx = self.n_ctx
        cp.n_batch = self.n_batch
        cp.n_ubatch = self.n_batch
        cp.n_seq_max = self.n_seq_max
        cp.n_threads = self.n_threads
        cp.n_threads_batch = self.n_threads
        cp.kv_unified = True  # one cache shared by all sequences: needed for shared-prefix tokens
        cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        if self.f32_cache:
            cp.type_k = lib.GGML_TYPE_F32
            cp.type_v = lib.GGML_TYPE_F32
        with _llama_logs(self.verbose) as logs:
            self._ctx = lib.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise InputError(f"llama.cpp cannot create a context for {self.model_path} "
                             f"(n_ctx={self.n_ctx}, n_batch={self.n_batch}): {_last_error(logs)}; "
                             "try a smaller n_ctx or n_batch")
        if self.lora_path is not None:
            with _llama_logs(self.verbose) as logs:
                self._lora = lib.llama_adapter_lora_init(self._model, str(self.lora_path).encode())
            if not self._lora:
                raise InputError(f"llama.cpp cannot load the LoRA adapter {self.lora_path} for "
                                 f"{self.model_path.name}: {_last_error(logs)}; give an adapter GGUF "
                                 "exported for this model")
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._lora)
            scales = (ctypes.c_float * 1)(1.0)
            with _llama_logs(self.verbose):
                rc = lib.llama_set_adapters_lora(self._ctx, adapters, 1, scales)
            if rc:
                raise InputError(f"llama.cpp cannot apply the LoRA adapter {self.lora_path}; give an "
                                 "adapter GGUF exported for this model")
        self._mem = lib.llama_get_memory(self._ctx)
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self.bos_id = int(lib.llama_vocab_bos(self._vocab))
        self.eos_id = int(lib.llama_vocab_eos(self._vocab))
        self._eog: tuple[int, ...] | None = None
        self._batch = lib.llama_batch_init(self.n_batch, 0, self.n_seq_max)
        self._batch_alive = True
        b = self._batch
        self._b_token = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        self._b_pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        self._b_nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))
        self._b_logits = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))

    def close(self) -> None:
        """Free the context, the adapter and the model (idempotent)."""
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        with _llama_logs(getattr(self, "verbose", False)):
            self._free(lib)

    def _free(self, lib) -> None:
        if getattr(self, "_batch_alive", False):
            lib.llama_batch_free(self._batch)
            self._batch_alive = False
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._lora:
            lib.llama_adapter_lora_free(self._lora)
            self._lora = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _live(self) -> None:
        if not self._ctx:
            raise InputError("this Evaluator is closed; create a new one")

    # -- tokens ------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text`` (special-token text parsed as special tokens), with the BOS token
        in front when ``add_bos`` and the GGUF asks for one."""
        self._live()
        data = text.encode("utf-8")
        n = len(data) + 8
        buf = (self._lib.llama_token * n)()
        k = self._lib.llama_tokenize(self._vocab, data, len(data), buf, n, False, True)
        if k < 0:
            n = -k
            buf = (self._lib.llama_token * n)()
            k = self._lib.llama_tokenize(self._vocab, data, len(data), buf, n, False, True)
        ids = list(buf[:k])
        if add_bos and self.add_bos and self.bos_id >= 0:
            ids.insert(0, self.bos_id)
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens (control tokens) are not rendered."""
        self._live()
        if not ids:
            return ""
        arr = (self._lib.llama_token * len(ids))(*ids)
        n = 16 * len(ids) + 64
        buf = ctypes.create_string_buffer(n)
        k = self._lib.llama_detokenize(self._vocab, arr, len(ids), buf, n, False, False)
        if k < 0:
            n = -k
            buf = ctypes.create_string_buffer(n)
            k = self._lib.llama_detokenize(self._vocab, arr, len(ids), buf, n, False, False)
        return buf.raw[:k].decode("utf-8", "replace")

    @property
    def prefix_token(self) -> int:
        """The token that stands for an empty context: BOS, or EOS when there is no BOS."""
        tok = self.bos_id if self.bos_id >= 0 else self.eos_id
        if tok < 0:
            raise InputError(f"{self.model_path.name} has neither a BOS nor an EOS token, so an empty "
                             "context cannot be scored; give every request a non-empty context")
        return tok

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) as lm-evaluation-harness splits them."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        if not context:
            return [self.prefix_token], self.tokenize(continuation, add_bos=False)
        whole = self.tokenize(context + continuation)
        ctx = self.tokenize(context)
        return whole[:len(ctx)], whole[len(ctx):]

    @property
    def eog_tokens(self) -> tuple[int, ...]:
        """The tokens that end generation (EOS, end-of-turn, ...), as llama.cpp marks them."""
        self._live()
        if self._eog is None:
            is_eog = self._lib.llama_vocab_is_eog
            self._eog = tuple(t for t in range(self.n_vocab) if is_eog(self._vocab, t))
        return self._eog

    @property
    def chat_template(self) -> str | None:
        """The GGUF's ``tokenizer.chat_template``, or None."""
        self._live()
        raw = self._lib.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None

    def _token_text(self, tok: int) -> str:
        if tok < 0:
            return ""
        raw = self._lib.llama_vocab_get_text(self._vocab, tok)
        return raw.decode("utf-8", "replace") if raw else ""

    def chat_prompt(self, user_message: str) -> str:
        """``user_message`` as a user turn rendered with the GGUF's chat template, ready for the
        assistant's answer (the generation prompt is added)."""
        template = self.chat_template
        if template is None:
            raise InputError(f"{self.model_path.name} has no chat template (tokenizer.chat_template); "
                             "use chat=False to give the prompt as plain text, or export the model "
                             "from a folder whose tokenizer_config.json has a chat_template")
        try:
            return render_chat(template, [{"role": "user", "content": user_message}],
                               bos_token=self._token_text(self.bos_id),
                               eos_token=self._token_text(self.eos_id))
        except Exception as e:  # jinja2 syntax or raise_exception in the template
            raise InputError(f"the chat template of {self.model_path.name} fails to render "
                             f"({type(e).__name__}: {e}); use chat=False to give plain prompts") from e

    # -- decoding ----------------------------------------------------------------------------

    def _decode_plan(self, plan: _Plan, handle) -> None:
        """Decode ``plan`` in chunks of ``n_batch`` tokens; after each, call
        ``handle(first_row, logits)`` with the float32 logits of that chunk's output tokens
        (a view, valid until the next decode). The caller clears the KV cache."""
        lib = self._lib
        b = self._batch
        n = len(plan.tokens)
        row = 0
        for a in range(0, n, self.n_batch):
            e = min(n, a + self.n_batch)
            m = e - a
            self._b_token[:m] = plan.tokens[a:e]
            self._b_pos[:m] = plan.pos[a:e]
            out = plan.out[a:e]
            self._b_logits[:m] = out
            for t, owners in enumerate(plan.seqs[a:e]):
                self._b_nseq[t] = len(owners)
                sid = b.seq_id[t]
                for s, o in enumerate(owners):
                    sid[s] = o
            b.n_tokens = m
            with _llama_logs(self.verbose) as logs:
                rc = lib.llama_decode(self._ctx, b)
            if rc != 0:
                lib.llama_memory_clear(self._mem, True)
                raise RuntimeError(f"llama_decode failed (rc={rc}) on a batch of {m} tokens: "
                                   f"{_last_error(logs)}")
            n_out = int(sum(out))
            if n_out:
                ptr = lib.llama_get_logits(self._ctx)
                logits = np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab))
                handle(row, logits)
                row += n_out

    def _clear(self) -> None:
        self._lib.llama_memory_clear(self._mem, True)

    # -- scoring -----------------------------------------------------------------------------

    def loglik(self, requests: Sequence[tuple[str, str]], *, per_token: bool = False,
               share_prefixes: bool = True) -> list[LogLik]:
        """Log-likelihood of each continuation given its context (see the module docstring for
        tokenization and truncation). Results are in the order of ``requests``."""
        self._live()
        pairs = [self.encode_pair(c, x) for c, x in requests]
        return self.loglik_tokens(pairs, per_token=per_token, share_prefixes=share_prefixes)

    def loglik_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                      per_token: bool = False, share_prefixes: bool = True) -> list[LogLik]:
        """:meth:`loglik` on already tokenized (context ids, continuation ids) pairs."""
        self._live()
        inputs: list[list[int]] = []
        first_out: list[int] = []
        targets: list[list[int]] = []
        truncated: list[bool] = []
        for i, (ctx, cont) in enumerate(requests):
            ctx, cont = [int(t) for t in ctx], [int(t) for t in cont]
            if not cont:
                raise InputError(f"request {i} has an empty continuation (no tokens to score); "
                                 "give every request a non-empty continuation")
            if not ctx:
                raise InputError(f"request {i} has no context tokens; start it with the BOS token "
                                 "(Evaluator.prefix_token) or use loglik() with text")
            if len(cont) > self.n_ctx:
                raise InputError(f"request {i}: its continuation has {len(cont)} tokens, more than "
                                 f"n_ctx={self.n_ctx}; use a larger n_ctx or a shorter continuation")
            whole = ctx + cont
            if min(whole) < 0 or max(whole) >= self.n_vocab:
                raise InputError(f"request {i} has token ids outside the vocabulary (0..{self.n_vocab - 1}); "
                                 "tokenize with this model's Evaluator.tokenize")
            inp = whole[:-1]
            cut = max(0, len(inp) - self.n_ctx)
            inputs.append(inp[cut:])
            first_out.append(len(inp) - cut - len(cont))
            targets.append(cont)
            truncated.append(cut > 0)

        n = len(inputs)
        lps: list[np.ndarray] = [np.zeros(len(t)) for t in targets]
        greedy: list[np.ndarray] = [np.zeros(len(t), dtype=bool) for t in targets]
        order = sorted(range(n), key=lambda i: inputs[i]) if share_prefixes else list(range(n))
        for group in _pack(inputs, order, self.n_batch, self.n_seq_max, share_prefixes):
            plan, rows = _plan_group([inputs[i] for i in group], [first_out[i] for i in group],
                                     share_prefixes)
            # flat list of (output row, target token, item, k)
            ref_row = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
            ref_tgt = np.concatenate([np.asarray(targets[i], dtype=np.int64) for i in group])
            ref_lp = np.zeros(len(ref_row))
            ref_top = np.zeros(len(ref_row), dtype=np.int64)

            def handle(r0, logits, ref_row=ref_row, ref_tgt=ref_tgt, ref_lp=ref_lp,
                       ref_top=ref_top):
                sel = np.nonzero((ref_row >= r0) & (ref_row < r0 + logits.shape[0]))[0]
                lse, top = _log_softmax_stats(logits)
                local = ref_row[sel] - r0
                ref_lp[sel] = logits[local, ref_tgt[sel]].astype(np.float64) - lse[local]
                ref_top[sel] = top[local]

            try:
                self._decode_plan(plan, handle)
            finally:
                self._clear()
            off = 0
            for i in group:
                k = len(targets[i])
                lps[i] = ref_lp[off:off + k]
                greedy[i] = ref_top[off:off + k] == ref_tgt[off:off + k]
                off += k
        out = []
        for i in range(n):
            out.append(LogLik(logprob=float(lps[i].sum()), n_tokens=len(targets[i]),
                              is_greedy=bool(greedy[i].all()), truncated=truncated[i],
                              token_ids=tuple(targets[i]) if per_token else None,
                              token_logprobs=tuple(float(v) for v in lps[i]) if per_token else None))
        return out

    def token_logprobs(self, text: str) -> list[tuple[int, float]]:
        """(token id, log-probability) of every token of ``text`` given the tokens before it; the
        first token is conditioned on the BOS token (or EOS when there is none), so every token of
        the text is scored, as lm-evaluation-harness's rolling log-likelihood does."""
        ids = self.tokenize(text, add_bos=False)
        if not ids:
            return []
        (res,) = self.loglik_tokens([([self.prefix_token], ids)], per_token=True)
        return list(zip(res.token_ids, res.token_logprobs))

    # -- generation --------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], max_tokens: int = 64, chat: bool = True) -> list[str]:
        """Greedy continuations of ``prompts`` (each a user message rendered with the GGUF's chat
        template when ``chat``, else plain text with BOS as the GGUF says), stopping at an
        end-of-generation token or after ``max_tokens``. Several prompts decode in parallel
        sequences; the result does not depend on how they are grouped beyond float rounding."""
        return [self.detokenize(ids) for ids in self.generate_tokens(prompts, max_tokens, chat)]

    def prompt_tokens(self, prompt: str, chat: bool = True) -> list[int]:
        """The token ids :meth:`generate` feeds for ``prompt``."""
        if chat:
            # as transformers' apply_chat_template: the template writes any BOS it wants
            return self.tokenize(self.chat_prompt(prompt), add_bos=False)
        return self.tokenize(prompt)

    def generate_tokens(self, prompts: Sequence[str], max_tokens: int = 64,
                        chat: bool = True) -> list[list[int]]:
        """:meth:`generate`, returning the generated token ids (without the final end token)."""
        self._live()
        if max_tokens < 0:
            raise InputError(f"max_tokens={max_tokens} is negative; use max_tokens >= 0")
        toks = [self.prompt_tokens(p, chat) for p in prompts]
        for i, t in enumerate(toks):
            if not t:
                raise InputError(f"prompt {i} is empty; give a non-empty prompt")
            if len(t) + max_tokens > self.n_ctx:
                raise InputError(f"prompt {i} has {len(t)} tokens, which with max_tokens={max_tokens} "
                                 f"exceeds n_ctx={self.n_ctx}; use a larger n_ctx or a shorter prompt")
        results: list[list[int]] = [[] for _ in toks]
        if max_tokens == 0:
            return results
        order = sorted(range(len(toks)), key=lambda i: toks[i])
        extra = [max_tokens] * len(toks)
        for group in _pack(toks, order, self.n_ctx, self.n_seq_max, True, extra):
            try:
                self._generate_group([toks[i] for i in group], max_tokens,
                                     [results[i] for i in group])
            finally:
                self._clear()
        return results

    def _generate_group(self, toks: list[list[int]], max_tokens: int, results: list[list[int]]
                        ) -> None:
        lib = self._lib
        k = len(toks)
        plan, rows = _plan_group(toks, [len(t) - 1 for t in toks], True)
        tops = np.zeros(sum(plan.out), dtype=np.int64)

        def handle(r0, logits):
            tops[r0:r0 + logits.shape[0]] = logits.argmax(axis=1)

        self._decode_plan(plan, handle)
        nxt = [int(tops[rows[j][0]]) for j in range(k)]
        active = list(range(k))
        pos = [len(t) for t in toks]
        while True:
            still = []
            for j in active:
                if lib.llama_vocab_is_eog(self._vocab, nxt[j]):
                    continue
                results[j].append(nxt[j])
                if len(results[j]) < max_tokens:
                    still.append(j)
            active = still
            if not active:
                return
            step = _Plan([nxt[j] for j in active], [pos[j] for j in active],
                         [[j] for j in active], [True] * len(active))
            step_top = np.zeros(len(active), dtype=np.int64)

            def handle_step(r0, logits, step_top=step_top):
                step_top[r0:r0 + logits.shape[0]] = logits.argmax(axis=1)

            self._decode_plan(step, handle_step)
            for r, j in enumerate(active):
                nxt[j] = int(step_top[r])
                pos[j] += 1


def _check_gguf(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} file {path} does not exist; give the path of a .gguf file "
                         "(e.g. one written by cwp-export)")
    if not path.is_file():
        raise InputError(f"{what} path {path} is not a file; give the path of a .gguf file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise InputError(f"cannot read {what} file {path} ({e.strerror}); check its permissions") from e
    if magic != b"GGUF":
        raise InputError(f"{path} is not a GGUF file (it does not start with 'GGUF'); give a .gguf "
                         "written by cwp-export or llama.cpp")
