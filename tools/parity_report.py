"""llama-cpp-python vs transformers on the real built-in models, per language and output type.

    python tools/parity_report.py [--models smollm2 gemma3-270m] [--types F32 F16 BF16 Q8_0]
                                  [--out bench-results/parity.json]

Exports each model with cwp-export, runs the GGUF in llama-cpp-python (F32 KV cache, and the
default F16 cache for F32 files) and the checkpoint in transformers (float32) on prompts in en, fr,
nl, es, tr, ko, ar, and writes per-language figures: tokenization equal, max |Δ log-prob| over the
vocabulary and over the actual next tokens, mean KL divergence, top-1 agreement. For GELU models
(Gemma 3) the F32 row is also given with llama.cpp's float16 GELU table emulated in transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cwp_export.api import export
from cwp_export.builtin import builtin_model_path
from cwp_export.testing import compare_with_transformers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"])
    ap.add_argument("--types", nargs="+", default=["F32", "F16", "BF16", "Q8_0"])
    ap.add_argument("--out", default="bench-results/parity.json")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            folder = builtin_model_path(key)
            for q in args.types:
                path = export(folder, quant=q, outdir=Path(tmp) / f"{key}-{q}", progress=False,
                              argv=[]).model_path
                variants = [("f32-cache", dict(f32_cache=True))]
                if q == "F32":
                    variants.append(("f16-cache", dict(f32_cache=False)))
                    if key.startswith("gemma"):
                        variants.append(("f32-cache+ggml-gelu", dict(f32_cache=True, ggml_gelu=True)))
                for label, kw in variants:
                    res = compare_with_transformers(path, folder, **kw)
                    row = {"model": key, "type": q, "variant": label, "per_language": res,
                           "worst_max_abs_dlogprob": max(r["max_abs_dlogprob"] for r in res.values()),
                           "worst_next_token": max(r["max_abs_dlogprob_next_token"] for r in res.values()),
                           "worst_mean_kld": max(r["mean_kld"] for r in res.values()),
                           "min_top1": min(r["top1_agreement"] for r in res.values()),
                           "tokens_equal": all(r["tokens_equal"] for r in res.values())}
                    results.append(row)
                    print(f"{key:12s} {q:5s} {label:20s} tokens_equal={row['tokens_equal']} "
                          f"max|dlogp|={row['worst_max_abs_dlogprob']:.2e} "
                          f"next-token={row['worst_next_token']:.2e} "
                          f"KLD={row['worst_mean_kld']:.2e} top1>={row['min_top1']:.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
