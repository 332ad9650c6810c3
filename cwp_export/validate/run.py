"""Run the validation suites on model variants and backends, and write the report.

:func:`validate` loads every suite's items once, then for each backend and variant opens one
:class:`.evaluator.Evaluator` and runs every suite on the same items (all languages of a suite in
one batch), and finally writes ``report.json``, ``report.md`` and the plots with
:func:`.report.write_report` (atomically, as a set). Nothing is written before every run has
finished: an interrupted or failed run leaves the previous report, or none.

The GPU backend runs only when the installed llama-cpp-python can offload to a GPU
(``llama_cpp.llama_supports_gpu_offload()``); otherwise the report's notes say that no GPU build is
present and only the CPU numbers are reported.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InputError
from . import metrics as M
from . import report as R
from . import suites as S

__all__ = ["BACKENDS", "format_summary", "parse_backends", "parse_model_spec", "Task", "plan", "validate"]

BACKENDS = ("cpu", "gpu")
GPU_MISSING_NOTE = ("no GPU build of llama-cpp-python is present (llama_supports_gpu_offload() is "
                    "false), so only the CPU backend ran and there is no CPU-vs-GPU comparison; for "
                    "one, reinstall it with CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --force-reinstall "
                    "--no-cache-dir llama-cpp-python")


def gpu_available() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def parse_backends(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"cpu"``, ``"gpu"``, ``"both"`` (or a list of cpu/gpu) → the backends, CPU first."""
    if isinstance(value, str):
        value = ["cpu", "gpu"] if value.strip().lower() == "both" else value.split(",")
    names = [str(v).strip().lower() for v in value if str(v).strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise InputError(f"unknown backend {', '.join(bad) or '(none)'}; choose cpu, gpu or both")
    return tuple(b for b in BACKENDS if b in names)


def parse_model_spec(spec: str) -> tuple[str, str, str | None]:
    """``NAME=PATH[:LORA]`` (or just ``PATH[:LORA]``, named after the file) → (name, path, lora).
    The colon separates an adapter only when the whole text is not itself an existing file."""
    text = str(spec).strip()
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = "", text
    name, rest = name.strip(), rest.strip()
    if not rest:
        raise InputError(f"--model {spec!r} has no file; write NAME=PATH or NAME=PATH:LORA")
    path, lora = rest, None
    if not os.path.exists(rest) and ":" in rest:
        path, _, lora = rest.rpartition(":")
        path, lora = path.strip(), lora.strip() or None
    if not name:
        name = Path(path).stem
    return name, path, lora


def _gguf_quant(path: str | Path, what: str = "model") -> str:
    """Read the GGUF header (a damaged or truncated file is refused here, before any data is
    loaded) and return its ``general.file_type`` as a name (e.g. ``Q4_K_M``), or "" if unset."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise InputError(f"{what} file {path} is not a GGUF file (it does not start with 'GGUF'); give "
                         "a .gguf written by cwp-export or llama.cpp")
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:
        raise InputError(f"{what} file {path} is damaged or truncated ({type(e).__name__}: "
                         f"{str(e)[:120]}); export it again") from None
    field = reader.fields.get("general.file_type")
    if field is None:
        return ""
    try:
        name = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name
    except (ValueError, IndexError):
        return ""
    return name.replace("MOSTLY_", "").replace("ALL_", "")


@dataclass
class Task:
    """One suite to run: the suite that loads and scores the items, its source and languages,
    its key in the report, and the asked suite names it stands for (several, when suites share a
    built-in probe set: advbench, multijail and xsafety without data are one ``safety`` run)."""

    suite: S.Suite
    source: Any
    languages: list[str]
    key: str
    names: list[str]
    defaults: bool = False  # ``languages`` are the suite's defaults, narrowed to the data on load


def plan(suites: Sequence[str] | None, languages: Sequence[str] | None,
         sources: Mapping[str, Any] | None) -> list[Task]:
    """The suite runs for a request; checks names and languages.

    ``suites`` None: every suite. ``languages`` None: each suite's defaults; otherwise each suite
    runs the asked languages it has (a suite with none of them is skipped) and a language no suite
    has is an error. ``sources``: suite name → file, folder or ``hf:`` id (missing or None: the
    built-in probes). Suites that would score the same built-in probes are merged into one run."""
    chosen = [S.get(n) for n in (suites if suites is not None else S.names())]
    if not chosen:
        raise InputError(f"no suites were asked for; choose some of {', '.join(S.names())}")
    chosen = list({s.name: s for s in chosen}.values())
    src: dict[str, Any] = {}
    for key, value in (sources or {}).items():
        suite = S.get(key)
        if value is not None and suite.dataset is None:
            raise InputError(f"the {suite.name} suite has only built-in probes; give no data for it")
        src[suite.name] = value
    if languages is not None:
        languages = [str(x).strip().lower() for x in languages if str(x).strip()]
        if not languages:
            raise InputError("no languages were asked for; give some (e.g. --languages en,ko) or leave "
                             "the option out for each suite's defaults")
    tasks: dict[str, Task] = {}
    used: set[str] = set()
    for suite in chosen:
        source = src.get(suite.name)
        langs = suite.resolve_languages(source, languages)
        used.update(langs)
        if not langs:
            continue
        key = suite.report_key(source)
        task = tasks.get(key)
        if task is None:
            # real data without asked languages: the defaults the copy holds, known once loaded
            tasks[key] = Task(suite, source, langs, key, [suite.name],
                              defaults=languages is None and source is not None)
            continue
        # the same built-in probe set: one run over the union of the languages, loaded by a
        # suite that has all of them
        task.languages += [x for x in langs if x not in task.languages]
        task.names.append(suite.name)
        if not set(task.languages) <= set(task.suite.languages(None)):
            task.suite = suite
    if languages is not None:
        unknown = [x for x in languages if x not in used]
        if unknown:
            have = sorted({x for s in chosen for x in s.languages(src.get(s.name))})
            raise InputError(f"no chosen suite runs in {', '.join(unknown)}; these run in "
                             f"{', '.join(have)}")
    if not tasks:
        raise InputError("none of the chosen suites runs in the asked languages; ask for other "
                         "languages or suites")
    return list(tasks.values())


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="run", disable=not (enabled and sys.stderr.isatty()),
                file=sys.stderr, dynamic_ncols=True, leave=False)


def validate(variants: Mapping[str, tuple[str | os.PathLike, str | os.PathLike | None]],
             reference: str | None = None, suites: Sequence[str] | None = None,
             languages: Sequence[str] | None = None, sources: Mapping[str, Any] | None = None,
             limit: int | None = None, backends: Sequence[str] | str = ("cpu", "gpu"),
             n_threads: int | None = None, n_ctx: int = 2048, max_tokens: int = 64, seed: int = 0,
             outdir: str | os.PathLike = "cwp-eval", progress: bool = True, *,
             n_batch: int = 512, resamples: int = M.DEFAULT_RESAMPLES, plots: bool | None = None,
             generate: bool = True, echo: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Run ``suites`` × languages × ``variants`` × ``backends`` on the same items and write the
    report into ``outdir``; returns the written paths by name (``report.json``, ``report.md``,
    ``plots/<suite>.png``).

    ``variants``: name → (GGUF path, LoRA adapter GGUF or None); ``reference`` (default: the
    first variant) is what every other variant is compared with, item by item. ``sources``: suite
    name → benchmark file/folder/``hf:`` id (absent or None: the built-in probes). ``limit``: at most
    that many items per suite and language (seeded subsample, ``seed``). ``backends``: ``cpu`` and/or
    ``gpu`` (or ``"both"``); the GPU one runs only with a GPU build of llama-cpp-python (else a note
    says so). ``max_tokens``: length of the generated answers of the safety suites
    (``generate=False`` scores their likelihood margin only). ``resamples``, ``seed``: the
    bootstrap intervals. Raises :class:`InputError` for bad input before any model runs (except a
    GGUF that llama.cpp cannot load, found when its turn comes).
    """
    from .evaluator import Evaluator

    if not variants:
        raise InputError("no models to validate; give at least one with --model NAME=PATH")
    names = list(variants)
    reference = names[0] if reference is None else reference
    if reference not in variants:
        raise InputError(f"reference {reference!r} is not among the models ({', '.join(names)}); pass "
                         "one of their names")
    if max_tokens < 0 or n_threads is not None and n_threads < 1 or n_ctx < 8:
        raise InputError(f"max_tokens={max_tokens}, n_threads={n_threads}, n_ctx={n_ctx}: use "
                         "max_tokens >= 0, threads >= 1 and n_ctx >= 8")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 0:
        raise InputError(f"resamples={resamples!r}: use a whole number >= 0")
    todo = plan(suites, languages, sources)
    models = []
    for name in names:
        path, lora = variants[name]
        if not str(name).strip():
            raise InputError("a model name is empty; name each model like NAME=PATH")
        for what, p in (("model", path), ("LoRA adapter", lora)):
            if p is not None and not Path(p).is_file():
                raise InputError(f"{what} file {p} of {name} does not exist or is not a file; give the "
                                 "path of a .gguf file (e.g. one written by cwp-export)")
        role = "reference" if name == reference else ("protected" if lora else "")
        quant = _gguf_quant(path)
        if lora is not None:
            _gguf_quant(lora, "LoRA adapter")
        models.append(R.model_file(name, path, role=role, quant=quant, adapter=lora))

    wanted = parse_backends(backends)
    notes: list[str] = []
    run_backends = [b for b in wanted if b == "cpu" or gpu_available()]
    if "gpu" in wanted and "gpu" not in run_backends:
        if wanted == ("gpu",):
            raise InputError("--backend gpu needs a GPU build of llama-cpp-python but the installed "
                             "one is CPU-only; use --backend cpu, or reinstall it with "
                             "CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --force-reinstall --no-cache-dir "
                             "llama-cpp-python")
        notes.append(GPU_MISSING_NOTE)
    elif "gpu" not in wanted:
        notes.append("GPU backend not requested: CPU results only"
                     + (" (a GPU build is present)" if gpu_available() else ""))

    # items: loaded once, shared by every variant and backend
    loaded = []
    for task in todo:
        items = task.suite.load(task.source, None if task.defaults else task.languages, limit=limit,
                                seed=seed)
        present = {it["lang"] for it in items}
        task.languages = [x for x in task.languages if x in present]
        loaded.append((task, items))
        label = task.suite.source_label(task.source)
        if echo:
            counts = {lang: sum(1 for it in items if it["lang"] == lang) for lang in task.languages}
            echo(f"{'/'.join(task.names)} → {task.key}: {label}, "
                 + ", ".join(f"{lang} {n}" for lang, n in counts.items()))
        if len(task.names) > 1:
            notes.append(f"suites {', '.join(task.names)} have no data given and share the built-in "
                         f"{task.suite.probes} probes: they ran once, reported as {task.key}")
        R.SUITE_TITLES.setdefault(task.key, S.TITLES.get(task.key, task.key))

    for name in names:
        lora = variants[name][1]
        if lora:
            notes.append(f"variant {name} runs with the LoRA adapter {lora} "
                         f"(sha256 {R.sha256_file(lora)})")
    if limit is not None:
        notes.append(f"at most {limit} items per suite and language (seeded subsample, seed {seed})")
    notes.append("seconds of a suite run are the wall time of the suite's one batch over all its "
                 "languages, shared out by item count")

    runs: list[R.SuiteRun] = []
    backend_info: list[R.BackendInfo] = []
    total = len(run_backends) * len(names) * len(loaded)
    bar = _progress_bar(total, progress)
    try:
        for backend in run_backends:
            info: dict[str, Any] | None = None
            for name in names:
                path, lora = variants[name]
                bar.set_description(f"{backend} {name}: loading")
                with Evaluator(path, lora, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch,
                               n_gpu_layers=-1 if backend == "gpu" else 0, f32_cache=True,
                               seed=seed) as ev:
                    info = info or dict(ev.backend)
                    for task, items in loaded:
                        bar.set_description(f"{backend} {name} {task.key}")
                        t0 = time.perf_counter()
                        results = task.suite.run(ev, items, max_tokens=max_tokens, generate=generate)
                        dt = time.perf_counter() - t0
                        for lang in task.languages:
                            part = [r for r, it in zip(results, items) if it["lang"] == lang]
                            runs.append(R.SuiteRun(task.key, lang, name, backend, part,
                                                   dataset=task.suite.source_label(task.source),
                                                   seconds=dt * len(part) / len(items)))
                        bar.update(1)
            assert info is not None
            device = (f"GPU ({info.get('n_gpu_layers')} layers offloaded)" if backend == "gpu"
                      else f"CPU, {info.get('n_threads')} threads")
            backend_info.append(R.BackendInfo(backend, version=str(info.get("llama_cpp_python", "")),
                                              device=device,
                                              n_gpu_layers=-1 if backend == "gpu" else 0,
                                              details=info))
    finally:
        bar.close()

    created = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    settings = R.Settings(resamples=resamples, seed=seed)
    vrun = R.ValidationRun(models, backend_info, runs, reference, settings, created, notes)
    return R.write_report(vrun, outdir, plots=plots)


def _fmt(e: Mapping[str, Any] | None, digits: int = 1, signed: bool = False) -> str:
    if not e or e.get("value") is None:
        return "–"
    return f"{e['value']:+.{digits}f}" if signed else f"{e['value']:.{digits}f}"


def format_summary(doc: Mapping[str, Any]) -> str:
    """A short plain-text table of a report: one line per suite, language and variant on the
    primary backend, with the headline scores and the paired drift against the reference."""
    primary = doc["backends"][0]["name"]
    vorder = {m["variant"]: i for i, m in enumerate(doc["models"])}
    rows = [["suite", "lang", "variant", "n", "scores", "flips % vs ref"]]
    for r in sorted((r for r in doc["results"] if r["backend"] == primary),
                    key=lambda r: (list(doc["suites"]).index(r["suite"]), r["lang"],
                                   vorder.get(r["variant"], 0))):
        head = doc["suites"][r["suite"]]["headline"]
        scores = "  ".join(f"{R.METRIC_TITLES.get(m, m)} "
                           f"{_fmt(r['scores'].get(m), 2 if m == 'margin_mean' else 1)}" for m in head)
        vs = r["vs_reference"]
        flips = _fmt(vs["drift"]["flip_pct"]) if vs else ("ref." if r["variant"] == doc["reference_variant"]
                                                          else "–")
        rows.append([r["suite"], r["lang"], r["variant"], str(r["n_items"]), scores, flips])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for d in doc["backend_diffs"]:
        lines.append(f"{d['backend']} vs {d['base_backend']} {d['suite']} {d['lang']} {d['variant']}: "
                     f"flips {_fmt(d['drift']['flip_pct'])} %, mean abs Δ pref. "
                     f"{_fmt(d['drift']['mean_abs_delta'], 4)}")
    return "\n".join(lines)
