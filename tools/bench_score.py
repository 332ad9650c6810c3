"""Scoring throughput vs a plain forward+backward loop, in the same run (issue: scoring).

    python tools/bench_score.py [--model builtin:smollm2] [--items 16] [--batch-size 8]
        [--repeats 3]

For each calibration kind (built-in probes, the same items and batches for both) it times

- ``fisher``: cwp-export's per-item squared-gradient accumulation (``score.fisher.fisher_sums``),
- ``plain``: ``loss.sum().backward()`` on the same batches (weight gradients of the same
  parameters, no per-item work): what any training step costs,

interleaved, best of ``--repeats``, and reports calibration tokens/s and the ratio fisher/plain
(goal ≥ 0.8). Peak memory (RSS high-water mark) of each mode is measured in a fresh subprocess.
Numbers go to ``bench-results/bench_score.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("fairness", "safety", "general_text", "general_instruct")


def _setup(model: str, items: int):
    import torch
    import transformers as tf

    from cwp_export import probes
    from cwp_export.api import resolve_model
    from cwp_export.score import linear_weight_names, make_loss

    tf.utils.logging.disable_progress_bar()
    folder = resolve_model(model, progress=False)
    m = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(folder)
    names = linear_weight_names(m)
    data = {}
    for kind in KINDS:
        its = probes.load(kind)
        step = max(1, len(its) // items)
        its = its[::step][:items]
        loss = make_loss(kind, tok)
        tokens = sum(len(s) for it in its for s in loss.encode(it).ids)
        data[kind] = (its, loss, tokens)
    return m, names, data


def _plain(model, names, items, loss, batch_size):
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in names)
    try:
        for i in range(0, len(items), batch_size):
            loss(model, items[i:i + batch_size]).sum().backward()
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(flags[n])


def _fisher(model, names, items, loss, batch_size):
    from cwp_export.score.fisher import fisher_sums

    fisher_sums(model, items, loss, names, {}, batch_size=batch_size)


def _memory_child(args) -> None:
    """One mode on all kinds, then print the RSS high-water mark (MiB)."""
    import resource

    model, names, data = _setup(args.model, args.items)
    run = _fisher if args.child == "fisher" else _plain
    for items, loss, _ in data.values():
        run(model, names, items, loss, args.batch_size)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2")
    ap.add_argument("--items", type=int, default=16, help="items per calibration kind")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["fisher", "plain"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_score.json"))
    args = ap.parse_args()
    if args.child:
        return _memory_child(args)

    import torch

    torch.set_num_threads(2)
    model, names, data = _setup(args.model, args.items)
    res: dict = {"model": args.model, "items_per_kind": args.items, "batch_size": args.batch_size,
                 "threads": torch.get_num_threads(), "kinds": {}}
    tot = {"fisher": 0.0, "plain": 0.0, "tokens": 0}
    for kind, (items, loss, tokens) in data.items():
        best = {"fisher": float("inf"), "plain": float("inf")}
        for _ in range(args.repeats):
            for mode, fn in (("plain", _plain), ("fisher", _fisher)):
                t = time.perf_counter()
                fn(model, names, items, loss, args.batch_size)
                best[mode] = min(best[mode], time.perf_counter() - t)
        res["kinds"][kind] = {"tokens": tokens, "fisher_tok_s": tokens / best["fisher"],
                              "plain_tok_s": tokens / best["plain"],
                              "ratio": best["plain"] / best["fisher"]}
        tot["fisher"] += best["fisher"]
        tot["plain"] += best["plain"]
        tot["tokens"] += tokens
        r = res["kinds"][kind]
        print(f"{kind:<18}{tokens:>7} tokens  fisher {r['fisher_tok_s']:8.0f} tok/s  plain "
              f"{r['plain_tok_s']:8.0f} tok/s  ratio {r['ratio']:.2f}", flush=True)
    res["overall"] = {"fisher_tok_s": tot["tokens"] / tot["fisher"],
                      "plain_tok_s": tot["tokens"] / tot["plain"],
                      "ratio": tot["plain"] / tot["fisher"]}
    print(f"{'overall':<25}  fisher {res['overall']['fisher_tok_s']:8.0f} tok/s  plain "
          f"{res['overall']['plain_tok_s']:8.0f} tok/s  ratio {res['overall']['ratio']:.2f} "
          f"(goal ≥ 0.8)")
    for mode in ("fisher", "plain"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--model", args.model,
                              "--items", str(args.items), "--batch-size", str(args.batch_size)],
                             capture_output=True, text=True, check=True)
        res[f"{mode}_peak_rss_mib"] = json.loads(out.stdout.strip().splitlines()[-1])[
            "peak_rss_mib"]
    print(f"peak RSS: fisher {res['fisher_peak_rss_mib']:.0f} MiB, plain "
          f"{res['plain_peak_rss_mib']:.0f} MiB "
          f"(ratio {res['fisher_peak_rss_mib'] / res['plain_peak_rss_mib']:.2f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
