"""Build a safety-testbed model (a small model fine-tuned to refuse) and print its refusal table.

    python tools/make_testbed.py --model smollm2|gemma3-270m [--steps N] [--force]

Builds (or reuses) ``cwp_export.testbed.testbed_model_path(MODEL)`` in the cache folder, then
answers the evaluation half of the shared AdvBench / MultiJail / XSafety requests and the held-out
benign look-alikes greedily with: the base model and the tuned model in transformers, and the tuned
model exported to an F16 GGUF (``cwp_export.api.export``) and to llama.cpp's own Q4_K_M of that
GGUF (``testing.llamacpp_quantize``) through llama-cpp-python; with ``--cwp`` also cwp-export's
protected Q4_K_M of the tuned model (model + outlier adapter). Prints refusal rates per language
(``cwp_export.validate.refusal.is_refusal``) and a sample of answers, and writes everything
(answers included) to ``<cache>/testbed/<model>-eval.json`` (or ``--json``).

Needs ../shared/data (or --data-root / $CWP_EXPORT_DATA). One thread by default (the machine is
shared); ``--limit`` evaluates at most that many requests per dataset and language (a fixed
sample), ``--limit 0`` all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from cwp_export import testbed as tb
from cwp_export.cache import build_once, marker_text
from cwp_export.errors import InputError


def log(msg: str) -> None:
    print(msg, flush=True)


def gguf_files(folder: Path, threads: int) -> tuple[Path, Path]:
    """The tuned model as an F16 GGUF (our exporter) and llama.cpp's Q4_K_M of it, built once
    beside the model folder and rebuilt when the model changes."""
    from cwp_export.api import export
    from cwp_export.testing import llamacpp_quantize

    stamp = (marker_text(folder) or "").splitlines()[0]
    target = folder.parent / f"{folder.name}-gguf"

    def make(out: Path) -> str:
        t = time.monotonic()
        res = export(folder, quant="F16", outdir=out, progress=False, argv=[])
        f16 = res.model_path.rename(out / "model-F16.gguf")
        llamacpp_quantize(f16, out / "model-Q4_K_M.gguf", "Q4_K_M", nthread=threads)
        log(f"exported F16 and quantized Q4_K_M in {time.monotonic() - t:.0f} s")
        return stamp + "\n"

    build_once(target, make, lambda p: marker_text(p) == stamp + "\n")
    return target / "model-F16.gguf", target / "model-Q4_K_M.gguf"


def cwp_files(folder: Path, protect: str, items: int) -> tuple[Path, Path | None]:
    """The tuned model's protected Q4_K_M export (model, outlier adapter): scored on ``items``
    built-in calibration items per language, built once beside the model and rebuilt when the
    model or the options change."""
    from cwp_export.api import export

    stamp = (marker_text(folder) or "").splitlines()[0] + f" cwp {protect} items {items}"
    target = folder.parent / f"{folder.name}-cwp"

    def make(out: Path) -> str:
        t = time.monotonic()
        res = export(folder, quant="Q4_K_M", protect=protect, outdir=out, progress=False, argv=[],
                     score_options={"max_per_language": items})
        cov = res.protection.coverage["exact"]
        log(f"scored and exported the protected Q4_K_M ({protect}, {items} items per language) in "
            f"{time.monotonic() - t:.0f} s; adapter restores {100 * cov['mass']:.1f}% of the "
            f"critical mass exactly")
        return stamp + "\n"

    build_once(target, make, lambda p: marker_text(p) == stamp + "\n")
    man = json.loads((target / "manifest.json").read_text())
    roles = {f["role"]: target / f["path"] for f in man["files"]}
    return roles["model"], roles.get("adapter")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, choices=sorted(tb.RECIPES))
    ap.add_argument("--steps", type=int, help="training steps (default: the recipe's); a different "
                                              "count builds into its own folder")
    ap.add_argument("--force", action="store_true", help="rebuild even when the model is cached")
    ap.add_argument("--limit", type=int, default=60,
                    help="evaluate at most N requests per dataset and language (0: all; default 60)")
    ap.add_argument("--languages", help="comma-separated evaluation languages (default: the "
                                        "recipe's training languages)")
    ap.add_argument("--threads", type=int, default=1, help="threads for evaluation (default 1)")
    ap.add_argument("--no-base", action="store_true", help="skip the base model's answers")
    ap.add_argument("--no-llamacpp", action="store_true", help="skip the GGUF answers")
    ap.add_argument("--no-hf", action="store_true", help="skip the tuned model's transformers answers")
    ap.add_argument("--no-f16", action="store_true", help="skip the tuned F16 GGUF's answers")
    ap.add_argument("--cwp", action="store_true",
                    help="also answer with cwp-export's protected Q4_K_M of the tuned model "
                         "(model + outlier adapter), next to llama.cpp's plain Q4_K_M")
    ap.add_argument("--protect", default="1%", help="--protect of the --cwp export (default 1%%)")
    ap.add_argument("--cwp-items", type=int, default=4,
                    help="built-in calibration items per language for the --cwp scoring (default 4)")
    ap.add_argument("--build-only", action="store_true", help="build the model and stop")
    ap.add_argument("--data-root", help="shared benchmark data folder (default ../shared/data)")
    ap.add_argument("--json", help="where to write the results (default: beside the model)")
    args = ap.parse_args(argv)

    try:
        recipe = tb._recipe(args.model, args.steps)
        root = tb.data_root(args.data_root)
        t = time.monotonic()
        folder = tb.testbed_model_path(args.model, steps=args.steps, force=args.force, data_root=root)
        built = time.monotonic() - t
        summary = json.loads((folder / "testbed.json").read_text())
        log(f"tuned model: {folder} (training took {summary['train_seconds']:.0f} s, "
            f"{summary['total_seconds']:.0f} s in all{'' if built > 60 else '; reused from the cache'})")
        if args.build_only:
            return 0

        langs = tuple(args.languages.split(",")) if args.languages else recipe.languages
        from cwp_export.builtin import builtin_model_path

        base = builtin_model_path(recipe.base)
        tok_tuned = tb.load_tokenizer(folder)
        tok_base = tb.load_tokenizer(base, recipe)  # the base with the tuned chat template
        items = tb.fitting(tb.eval_set(langs, root, args.limit or None), tok_tuned)
        log(f"evaluating {len(items)} requests ({', '.join(langs)}), greedy, "
            f"{tb.MAX_NEW_TOKENS} new tokens at most")

        columns = []

        def run(label: str, fn) -> None:
            t = time.monotonic()
            answers = fn()
            col = tb.Answers(label, items, answers, seconds=time.monotonic() - t)
            columns.append(col)
            log(f"  {label}: {sum(col.refusals)} refusals of {len(items)} in {col.seconds:.0f} s")

        eos = [tok_tuned.eos_token_id]
        if not args.no_base:
            run("base HF", lambda: tb.generate_hf(base, items, tok_base, threads=args.threads, eos_ids=eos))
        if not args.no_hf:
            run("tuned HF", lambda: tb.generate_hf(folder, items, tok_tuned, threads=args.threads,
                                                   eos_ids=eos))
        if not args.no_llamacpp:
            f16, q4 = gguf_files(folder, args.threads)
            template = tb.gguf_chat_template(f16)
            log(f"GGUF chat template {'matches' if template == tok_tuned.chat_template else 'DIFFERS FROM'} "
                f"the tuned tokenizer's")
            if not args.no_f16:
                run("tuned F16 gguf", lambda: tb.generate_llamacpp(f16, items, tok_tuned,
                                                                   threads=args.threads))
            run("tuned Q4_K_M", lambda: tb.generate_llamacpp(q4, items, tok_tuned, threads=args.threads))
            if args.cwp:
                model, adapter = cwp_files(folder, args.protect, args.cwp_items)
                run(f"CWP Q4_K_M {args.protect}",
                    lambda: tb.generate_llamacpp(model, items, tok_tuned, threads=args.threads,
                                                 lora=adapter))

        log("\nRefusal rate (is_refusal on greedy answers; harmful: eval half of the shared sets, "
            "lookalike: held-out benign look-alikes)\n")
        log(tb.refusal_table(columns))
        log("\nSample answers:\n")
        log(tb.samples(columns))
        out = Path(args.json) if args.json else folder.parent / f"{folder.name}-eval.json"
        out.write_text(json.dumps({"model": args.model, "folder": str(folder), "training": summary,
                                   "limit": args.limit, "languages": langs,
                                   "results": tb.results_json(columns)},
                                  indent=1, ensure_ascii=False) + "\n")
        log(f"\nresults written to {out}")
        return 0
    except InputError as e:
        print(f"make_testbed: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
