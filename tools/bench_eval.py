"""Evaluation throughput: cwp_export.validate.Evaluator against llama.cpp's llama-perplexity.

    python tools/bench_eval.py [--model GGUF | --quant F16] [--n-ctx 512] [--threads 2]
                               [--chunks 4] [--repeat 5] [--f16-cache]
                               [--fairness 40] [--safety 12] [--out bench-results/bench_eval.json]

1. Perplexity workload, side by side in one run: held-out NTREX English news text
   (``../shared/data``, never copied into the project) tokenized once, cut into ``--chunks``
   windows of ``n_ctx`` tokens, the second half of each window scored given everything before it
   in the window; exactly what ``llama-perplexity -c n_ctx`` computes. Ours:
   ``Evaluator.loglik_tokens`` with one (first half, second half) request per window. Theirs:
   ``llama-perplexity`` (built by tools/build_llamacpp_tools.py) with the same model, context,
   batch, threads, KV cache type and flash attention off, timed from its own log (from
   "calculating perplexity" to "Final estimate", i.e. without loading the model). Both
   throughputs count the window tokens (chunks × n_ctx) per second; the runs alternate and the
   best of ``--repeat`` is kept, because the machines are shared. The perplexities must agree.
2. Fairness-pair workload: many short requests, as the validation suites make them. The
   built-in fairness probes (a sentence and its counterpart after an empty context, five
   languages) and safety probes (a chat-templated request with a refusal and an affirmative
   answer, three languages), scored (a) batched with shared prefixes, (b) batched without
   sharing, (c) one request per call, (d) with llama-cpp-python's high-level ``Llama`` (one
   ``eval`` per request, all logits): request tokens (context + continuation) per second, and
   the largest difference of a request's log-likelihood between (a) and (b)/(c).

Numbers go to the JSON file; the ratio is ours/theirs tokens per second (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cwp_export import probes, testing
from cwp_export.validate.evaluator import Evaluator

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# llama.cpp's log timestamp (minutes.seconds.milliseconds.microseconds) before a message; searched,
# not anchored: a message printed without a newline (the ETA) runs into the next line
_STAMP = r"(\d+)\.(\d+)\.(\d+)\.(\d+) I "


def _stamp_s(log: str, message: str) -> float:
    m = re.search(_STAMP + re.escape(message), log)
    if m is None:
        raise RuntimeError(f"llama-perplexity printed no {message!r}: {log[-1500:]}")
    mi, s, ms, us = map(int, m.groups())
    return mi * 60 + s + ms / 1e3 + us / 1e6


def run_llama_perplexity(exe: Path, model: Path, text_file: Path, n_ctx: int, threads: int,
                         chunks: int, f32_cache: bool) -> dict:
    args = ["-m", model, "-f", text_file, "-c", n_ctx, "-b", n_ctx, "-ub", n_ctx, "-t", threads,
            "-tb", threads, "--chunks", chunks, "-fa", "off"]
    if f32_cache:
        args += ["-ctk", "f32", "-ctv", "f32"]
    t0 = time.perf_counter()
    proc = testing.run_llamacpp_tool(exe, *map(str, args))
    wall = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    eval_s = _stamp_s(log, "Final estimate: PPL") - _stamp_s(log, "perplexity: calculating perplexity over")
    ppl = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log).group(1))
    n_chunks = int(re.search(r"calculating perplexity over (\d+) chunks", log).group(1))
    return {"eval_s": eval_s, "process_wall_s": wall, "ppl": ppl, "chunks": n_chunks,
            "tokens_per_s": n_chunks * n_ctx / eval_s,
            "cmd": [exe.name, *map(str, args)]}


def _warm_up(ev: Evaluator, ids: list[int], n: int) -> None:
    """One untimed decode of ``n`` tokens (llama.cpp's tools warm up the same way before timing:
    the first decode pages the weights in and sizes the buffers)."""
    ev.loglik_tokens([(ids[:n // 2], ids[n // 2:n])])


def run_ours(ev: Evaluator, ids: list[int], n_ctx: int, chunks: int) -> dict:
    first = n_ctx // 2
    reqs = []
    for i in range(chunks):
        chunk = list(ids[i * n_ctx:(i + 1) * n_ctx])
        if ev.add_bos:  # llama-perplexity puts BOS in place of each window's first token
            chunk[0] = ev.bos_id
        reqs.append((chunk[:first + 1], chunk[first + 1:]))
    t0 = time.perf_counter()
    res = ev.loglik_tokens(reqs)
    dt = time.perf_counter() - t0
    nll = -sum(r.logprob for r in res)
    count = sum(r.n_tokens for r in res)
    return {"eval_s": dt, "ppl": math.exp(nll / count), "chunks": chunks, "scored_tokens": count,
            "tokens_per_s": chunks * n_ctx / dt}


def bench_perplexity(model: Path, n_ctx: int, threads: int, chunks: int, repeat: int,
                     f32_cache: bool) -> dict:
    exe = testing.llamacpp_tool("llama-perplexity")
    text = testing.ntrex_text(SHARED_DATA, lines=100_000)
    with Evaluator(model, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, f32_cache=f32_cache) as ev:
        ids = ev.tokenize(text)
        chunks = min(chunks, len(ids) // n_ctx)
        _warm_up(ev, ids, n_ctx)
        ours, theirs = [], []
        with tempfile.TemporaryDirectory() as tmp:
            text_file = Path(tmp) / "ntrex.eng.txt"
            text_file.write_text(text, encoding="utf-8")
            for r in range(repeat):  # alternate, so a busy moment hits both sides
                ours.append(run_ours(ev, ids, n_ctx, chunks))
                print(f"  ours  run {r + 1}: {ours[-1]['tokens_per_s']:.1f} tok/s, "
                      f"PPL {ours[-1]['ppl']:.4f}", flush=True)
                if exe is not None:
                    theirs.append(run_llama_perplexity(exe, model, text_file, n_ctx, threads, chunks,
                                                       f32_cache))
                    print(f"  llama-perplexity run {r + 1}: {theirs[-1]['tokens_per_s']:.1f} tok/s, "
                          f"PPL {theirs[-1]['ppl']:.4f}", flush=True)
        backend = ev.backend
    best_ours = max(ours, key=lambda x: x["tokens_per_s"])
    res = {"text": "NTREX newstest2019 English, held-out documents", "text_tokens": len(ids),
           "n_ctx": n_ctx, "n_batch": n_ctx, "threads": threads, "chunks": chunks,
           "kv_cache": "F32" if f32_cache else "F16", "flash_attn": False, "backend": backend,
           "ours": best_ours, "ours_runs": ours}
    if exe is None:
        res["llama_perplexity"] = None
        print("llama-perplexity is not built (python tools/build_llamacpp_tools.py): ours only")
        return res
    best_theirs = max(theirs, key=lambda x: x["tokens_per_s"])
    paired = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, theirs)]
    res.update({"llama_perplexity": best_theirs, "llama_perplexity_runs": theirs,
                "ratio": best_ours["tokens_per_s"] / best_theirs["tokens_per_s"],
                "paired_ratios": paired, "median_paired_ratio": float(np.median(paired)),
                "ppl_rel_diff": abs(best_ours["ppl"] - best_theirs["ppl"]) / best_theirs["ppl"]})
    print(f"perplexity workload ({chunks} x {n_ctx} tokens, {threads} threads): ours "
          f"{best_ours['tokens_per_s']:.1f} tok/s, llama-perplexity {best_theirs['tokens_per_s']:.1f} "
          f"tok/s, ratio {res['ratio']:.2f} (best of each; median of back-to-back pairs "
          f"{res['median_paired_ratio']:.2f}; goal >= 0.8); PPL {best_ours['ppl']:.4f} vs "
          f"{best_theirs['ppl']:.4f}", flush=True)
    return res


def pair_requests(ev: Evaluator, n_fairness: int, n_safety: int) -> list[tuple[str, str]]:
    reqs: list[tuple[str, str]] = []
    fair = probes.load("fairness")
    step = max(1, len(fair) // max(1, n_fairness))  # spread over the languages
    for it in fair[::step][:n_fairness]:
        reqs += [(it["context"], it["stereotype"]), (it["context"], it["anti_stereotype"])]
    safe = probes.load("safety")
    step = max(1, len(safe) // max(1, n_safety))
    for it in safe[::step][:n_safety]:
        prompt = ev.chat_prompt(it["request"])
        reqs += [(prompt, it["refusal"]), (prompt, it["affirmative"])]
    return reqs


def _llama_high_level(model: Path, pairs: list[tuple[list[int], list[int]]], n_ctx: int,
                      threads: int, f32_cache: bool) -> list[float]:
    """The straightforward way: llama_cpp.Llama, one eval per request, all logits kept."""
    import llama_cpp

    kv = dict(type_k=0, type_v=0) if f32_cache else {}
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=n_ctx, n_batch=min(512, n_ctx), logits_all=True,
                          verbose=False, n_threads=threads, n_threads_batch=threads, **kv)
    try:
        out = []
        for ctx, cont in pairs:
            llm.reset()
            llm.eval(ctx + cont[:-1])
            x = np.array(llm.scores[len(ctx) - 1:len(ctx) + len(cont) - 1], dtype=np.float64)
            m = x.max(1, keepdims=True)
            lse = (m + np.log(np.exp(x - m).sum(1, keepdims=True)))[:, 0]
            out.append(float((x[np.arange(len(cont)), cont] - lse).sum()))
        return out
    finally:
        llm.close()


def bench_pairs(model: Path, n_ctx: int, threads: int, n_fairness: int, n_safety: int,
                f32_cache: bool) -> dict:
    with Evaluator(model, n_ctx=n_ctx, n_threads=threads, f32_cache=f32_cache) as ev:
        reqs = pair_requests(ev, n_fairness, n_safety)
        pairs = [ev.encode_pair(c, x) for c, x in reqs]
        _warm_up(ev, [t for c, x in pairs for t in c + x], 256)
        n_tok = sum(len(c) + len(x) for c, x in pairs)
        modes: dict[str, dict] = {}
        results = {}
        for name, fn in [("batched_shared", lambda: ev.loglik_tokens(pairs)),
                         ("batched_unshared", lambda: ev.loglik_tokens(pairs, share_prefixes=False)),
                         ("one_by_one", lambda: [ev.loglik_tokens([p])[0] for p in pairs])]:
            t0 = time.perf_counter()
            results[name] = [r.logprob for r in fn()]
            dt = time.perf_counter() - t0
            modes[name] = {"s": dt, "request_tokens_per_s": n_tok / dt}
            print(f"  pairs {name:17s} {n_tok / dt:8.1f} request tok/s ({dt:.1f} s)", flush=True)
        backend = ev.backend
    t0 = time.perf_counter()
    results["llama_cpp_Llama"] = _llama_high_level(model, pairs, n_ctx, threads, f32_cache)
    dt = time.perf_counter() - t0
    modes["llama_cpp_Llama"] = {"s": dt, "request_tokens_per_s": n_tok / dt}
    print(f"  pairs {'llama_cpp.Llama':17s} {n_tok / dt:8.1f} request tok/s ({dt:.1f} s)", flush=True)
    ref = np.array(results["batched_shared"])
    diffs = {k: float(np.abs(np.array(v) - ref).max()) for k, v in results.items() if k != "batched_shared"}
    shared_tokens = sum(len(c) + len(x) - 1 for c, x in pairs)
    res = {"requests": len(pairs), "request_tokens": n_tok, "fairness_items": n_fairness,
           "safety_items": n_safety, "threads": threads, "n_ctx": n_ctx, "backend": backend,
           "modes": modes, "max_abs_dloglik_vs_batched_shared": diffs,
           "speedup_vs_one_by_one": modes["one_by_one"]["s"] / modes["batched_shared"]["s"],
           "speedup_vs_llama_cpp_Llama": modes["llama_cpp_Llama"]["s"] / modes["batched_shared"]["s"],
           "decoded_tokens_without_sharing": shared_tokens}
    print(f"pair workload ({len(pairs)} requests, {n_tok} tokens): batched+shared "
          f"{modes['batched_shared']['request_tokens_per_s']:.1f} tok/s = "
          f"{res['speedup_vs_one_by_one']:.1f}x one-by-one, {res['speedup_vs_llama_cpp_Llama']:.1f}x "
          f"llama_cpp.Llama; max |d loglik| vs batched: "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()), flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a GGUF; default: SmolLM2 exported with --quant")
    ap.add_argument("--quant", default="F16")
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--f16-cache", action="store_true", help="F16 KV cache on both sides")
    ap.add_argument("--fairness", type=int, default=40, help="fairness items (2 requests each)")
    ap.add_argument("--safety", type=int, default=12, help="safety items (2 requests each)")
    ap.add_argument("--skip-pairs", action="store_true")
    ap.add_argument("--out", default="bench-results/bench_eval.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:  # in a child process: torch never shares this process with llama.cpp
            code = ("import sys; from cwp_export.api import export; "
                    "from cwp_export.builtin import builtin_model_path as b; "
                    "export(b('smollm2'), quant=sys.argv[1], outdir=sys.argv[2], progress=False, argv=[])")
            subprocess.run([sys.executable, "-c", code, args.quant, tmp], check=True,
                           cwd=Path(__file__).resolve().parents[1])
            model = next(Path(tmp).glob("*.gguf"))
        f32 = not args.f16_cache
        result = {"model": model.name,
                  "perplexity": bench_perplexity(model, args.n_ctx, args.threads, args.chunks,
                                                 args.repeat, f32)}
        if not args.skip_pairs:
            result["pairs"] = bench_pairs(model, 2048, args.threads, args.fairness, args.safety, f32)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
