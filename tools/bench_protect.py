"""Protected export vs plain quantization, measured in llama-cpp-python (issue: protected export).

    python tools/bench_protect.py [--model builtin:smollm2] [--quant Q4_K_M] [--protect 1%]
        [--max-per-language N] [--scores FILE] [--langs eng,fra,kor]

On held-out NTREX news text (documents never used for calibration) it reports the KL divergence
to the F16 model, per token, through llama-cpp-python with an F32 KV cache, for

- ``plain``: cwp-export's plain preset (byte-identical to llama-quantize's);
- ``cwp``: the protected model + its outlier adapter (``--protect``, default budget +5%);
- ``cwp_model_only``: the protected model file without the adapter;
- ``cwp_f16_adapter``: the same with an F16 A (columns and rows);
- ``cwp_weighted_rounding``: model + adapter with ``--weighted-rounding`` (the scored tensors'
  rounding weighted by column activation and criticality);
- ``llamacpp_imatrix``: llama.cpp's Q4_K_M with an imatrix from llama-imatrix on the same
  calibration items the scorer used (built-in fairness, safety and general probes, as plain text);
- ``ideal``: the unstructured protection (every critical weight restored, F32 file);

with file sizes relative to the plain preset, the coverage of the critical set, and the scoring
time. Numbers go to ``bench-results/bench_protect.json``. Needs ../shared/data (NTREX) and, for
the imatrix baseline, tools/build_llamacpp_tools.py's llama-imatrix / llama-quantize.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cwp_export.api import export, resolve_model, score  # noqa: E402
from cwp_export.score.calibration import DEFAULT_LANGUAGES, resolve  # noqa: E402
from cwp_export.testing import (  # noqa: E402
    kl_divergences,
    llamacpp_tool,
    ntrex_text,
    run_llamacpp_tool,
)

SHARED = ROOT.parent / "shared" / "data"


def calibration_text(max_per_language: int | None) -> str:
    """The scorer's default calibration items (same kinds, languages and cap) as plain text for
    llama-imatrix: fairness sentences (both versions), safety requests with their affirmative and
    refusal targets, general paragraphs and instruction/response pairs."""
    parts = []
    for kind in DEFAULT_LANGUAGES:
        for it in resolve(kind, max_per_language=max_per_language).items:
            if kind == "fairness":
                ctx = it["context"]
                ctx += " " if ctx and not ctx[-1].isspace() else ""  # as the fairness loss joins them
                parts += [ctx + it["stereotype"], ctx + it["anti_stereotype"]]
            elif kind == "safety":
                parts += [f"{it['request']}\n{it['affirmative']}", f"{it['request']}\n{it['refusal']}"]
            elif kind == "general_text":
                parts.append(it["text"])
            else:
                parts.append(f"{it['instruction']}\n{it['response']}")
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2")
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--protect", default="1%")
    ap.add_argument("--max-size-increase", default="5%")
    ap.add_argument("--max-per-language", type=int, default=None)
    ap.add_argument("--scores", default=None, help="reuse a scores file")
    ap.add_argument("--langs", default="eng", help="NTREX languages for the KLD (eng,fra,kor,...)")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_protect.json"))
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-protect-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = resolve_model(args.model, progress=False)
    res: dict = {"model": args.model, "quant": args.quant, "protect": args.protect,
                 "max_size_increase": args.max_size_increase,
                 "max_per_language": args.max_per_language}

    def step(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    step("F16 reference and plain preset")
    f16 = export(folder, quant="F16", outdir=work / "f16", progress=False, argv=[]).model_path
    plain = export(folder, quant=args.quant, outdir=work / "plain", progress=False,
                   argv=[]).model_path

    scores_path = Path(args.scores) if args.scores else work / "scores.safetensors"
    if not scores_path.exists():
        step("scoring")
        t = time.monotonic()
        sr = score(folder, scores_path, protect=args.protect, progress=False,
                   max_per_language=args.max_per_language)
        res["scoring"] = {"seconds": round(time.monotonic() - t, 1),
                          "calibration_tokens": sr.metadata["calibration_tokens"],
                          "data": sr.metadata["data"]}
    variants: dict[str, tuple[Path, Path | None]] = {"plain": (plain, None)}
    for key, atype, weighted in (("cwp", "Q8_0", False), ("cwp_f16_adapter", "F16", False),
                                 ("cwp_weighted_rounding", "Q8_0", True)):
        step(f"protected export ({key})")
        t = time.monotonic()
        r = export(folder, quant=args.quant, outdir=work / key, protect=args.protect,
                   progress=False, argv=[], scores=scores_path,
                   max_size_increase=args.max_size_increase, adapter_type=atype,
                   weighted_rounding=weighted)
        p = r.protection
        res[key] = {"seconds": round(time.monotonic() - t, 1), "coverage": p.coverage,
                    "sizes": p.sizes, "upgrades": len(p.plan.upgrades),
                    "columns": sum(len(v) for v in p.plan.columns.values()),
                    "rows": sum(len(v) for v in p.plan.rows.values()),
                    "size_vs_plain": p.sizes["total"] / p.sizes["plain_model"] - 1}
        variants[key] = (r.model_path, r.adapter_path)
        if key == "cwp":
            variants["cwp_model_only"] = (r.model_path, None)
    step("ideal (unstructured) protection")
    ideal = export(folder, quant=args.quant, outdir=work / "ideal", protect=args.protect,
                   progress=False, argv=[], scores=scores_path,
                   max_size_increase=args.max_size_increase, ideal=True)
    variants["ideal"] = (ideal.model_path, None)

    imatrix_exe, quant_exe = llamacpp_tool("llama-imatrix"), llamacpp_tool("llama-quantize")
    if imatrix_exe and quant_exe:
        step("llama.cpp imatrix baseline")
        calib = work / "calibration.txt"
        calib.write_text(calibration_text(args.max_per_language), encoding="utf-8")
        imat = work / "imatrix.gguf"
        run_llamacpp_tool(imatrix_exe, "-m", f16, "-f", calib, "-o", imat, "-c", "256",
                          "-t", "2")
        lq = work / "llamacpp-imatrix.gguf"
        run_llamacpp_tool(quant_exe, "--imatrix", imat, f16, lq, args.quant, "2")
        variants["llamacpp_imatrix"] = (lq, None)
        res["llamacpp_imatrix_size_vs_plain"] = lq.stat().st_size / plain.stat().st_size - 1
    else:
        res["llamacpp_imatrix"] = "skipped: build llama-imatrix/llama-quantize with " \
                                  "tools/build_llamacpp_tools.py"

    res["kld"] = {}
    for lang in args.langs.split(","):
        step(f"KL divergence on held-out NTREX ({lang})")
        text = ntrex_text(SHARED, lang, lines=400, holdout=True)
        res["kld"][lang] = kl_divergences(f16, variants, text, max_chunks=args.chunks)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\n{'variant':<20}{'size vs plain':>14}" + "".join(f"{'KLD ' + x:>12}"
                                                          for x in res["kld"]))
    for name in variants:
        if name in ("cwp", "cwp_f16_adapter", "cwp_weighted_rounding"):
            size = f"{100 * res[name]['size_vs_plain']:+.2f}%"
        elif name == "llamacpp_imatrix":
            size = f"{100 * res['llamacpp_imatrix_size_vs_plain']:+.2f}%"
        elif name == "ideal":
            size = "(F32)"
        else:
            size = "+0.00%" if name == "plain" else "(model only)"
        print(f"{name:<20}{size:>14}" + "".join(f"{res['kld'][x][name]['mean_kld']:>12.5f}"
                                                  for x in res["kld"]))
    print(f"coverage (cwp): {json.dumps(res['cwp']['coverage'])}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
