"""Calibration data for the scorers: which items each loss sees, from where, in which languages.

A source specification (what ``--calib-fairness`` / ``--calib-safety`` / ``--calib-general`` /
``--calib-instruct`` take; repeatable, the items are concatenated):

- ``builtin``: the project's own probe sets (:mod:`cwp_export.probes`), the default;
- ``none``: no data for this loss (its Fisher term is zero);
- ``FILE.jsonl``: items already in the probe schema of that kind (one JSON object per line);
- ``NAME=SOURCE``: a benchmark loader of :mod:`cwp_export.data` (``crows-pairs``, ``stereoset``,
  ``advbench``, ``multijail``, ``xsafety``, ``ntrex``) reading ``SOURCE``, a file or folder in
  the benchmark's own format or ``hf:ORG/NAME`` for a Hugging Face dataset, converted to the
  kind's probe schema. General text from NTREX uses its calibration split only.

Default languages: fairness en fr nl es tr; safety en ko ar; general text and instructions all
seven. ``--languages`` narrows (or, for files, selects) them for every kind at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import probes
from ..errors import InputError
from ..formats.scores import data_hash

DEFAULT_LANGUAGES: dict[str, tuple[str, ...]] = {
    "fairness": ("en", "fr", "nl", "es", "tr"),
    "safety": ("en", "ko", "ar"),
    "general_text": ("en", "fr", "nl", "es", "tr", "ko", "ar"),
    "general_instruct": ("en", "fr", "nl", "es", "tr", "ko", "ar"),
}
KNOWN_LANGUAGES = ("en", "fr", "nl", "es", "tr", "ko", "ar")

# text fields each kind's loss reads (see losses.encode)
_FIELDS = {
    "fairness": ("context", "stereotype", "anti_stereotype"),
    "safety": ("request",),
    "general_text": ("text",),
    "general_instruct": ("instruction", "response"),
}


@dataclass
class CalibrationSet:
    """The items of one loss, where they came from, and their hash (for the scores metadata)."""

    kind: str
    items: list[dict[str, Any]]
    sources: list[str] = field(default_factory=list)

    @property
    def languages(self) -> list[str]:
        return sorted({str(it.get("lang", "?")) for it in self.items})

    @property
    def hash(self) -> str:
        return data_hash(self.items)

    def describe(self) -> dict[str, Any]:
        per_lang: dict[str, int] = {}
        for it in self.items:
            per_lang[str(it.get("lang", "?"))] = per_lang.get(str(it.get("lang", "?")), 0) + 1
        return {"sources": self.sources, "items": len(self.items),
                "per_language": dict(sorted(per_lang.items())), "sha256": self.hash}


def check_languages(languages: Iterable[str] | None) -> list[str] | None:
    if languages is None:
        return None
    langs = [str(x).strip().lower() for x in languages if str(x).strip()]
    unknown = [x for x in langs if x not in KNOWN_LANGUAGES]
    if unknown:
        raise InputError(f"unknown language {unknown[0]!r}; choose among "
                         f"{', '.join(KNOWN_LANGUAGES)} (ISO 639-1 codes, comma-separated)")
    if not langs:
        raise InputError("--languages is empty; give e.g. en,fr,ko")
    return langs


def _read_jsonl(path: Path, kind: str) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the {kind} calibration file {path}: "
                         f"{getattr(e, 'strerror', None) or e}; check the path") from e
    items = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            it = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{i} is not valid JSON ({e.msg}); each line must be one "
                             f"JSON object") from e
        if not isinstance(it, dict):
            raise InputError(f"{path}:{i} is not a JSON object; each line must be one object "
                             f"with the fields {', '.join(_FIELDS[kind])}")
        it.setdefault("id", f"{path.stem}-{i}")
        items.append(it)
    return items


def _validate(kind: str, items: list[dict[str, Any]], origin: str) -> None:
    if not items:
        raise InputError(f"the {kind} calibration source {origin} holds no items; give a "
                         f"non-empty file or another source")
    need = _FIELDS[kind]
    for it in items:
        # a fairness context may be empty (the pair then differs from its first word)
        missing = [k for k in need if not isinstance(it.get(k, "" if k == "context" else None),
                                                     str)
                   or (k != "context" and not it[k].strip())]
        if missing:
            raise InputError(f"{kind} calibration item {it.get('id', '?')!r} from {origin} has "
                             f"no text for {', '.join(missing)}; each item needs "
                             f"{', '.join(need)}")


def _from_loader(kind: str, name: str, source: str, langs: Sequence[str] | None
                 ) -> list[dict[str, Any]]:
    try:
        from .. import data
    except ImportError as e:  # pragma: no cover - the package ships with cwp-export
        raise InputError(f"benchmark loaders are unavailable ({e}); use a .jsonl file") from e
    split = "calibration" if name == "ntrex" else None
    items = data.load(name, source, languages=langs, split=split)
    return data.to_calibration(kind, items)


def resolve(kind: str, specs: Sequence[str] | None = None,
            languages: Iterable[str] | None = None, max_per_language: int | None = None
            ) -> CalibrationSet:
    """The calibration items of loss ``kind`` from ``specs`` (default ``["builtin"]``).

    ``languages`` restricts every source to those languages (default: the kind's defaults for
    built-in data, every language of a user file). ``max_per_language`` keeps the first N items
    of each language (file order), for quick runs.
    """
    if kind not in DEFAULT_LANGUAGES:
        raise InputError(f"unknown calibration kind {kind!r}")
    langs = check_languages(languages)
    specs = list(specs) if specs else ["builtin"]
    if "none" in specs:
        if len(specs) > 1:
            raise InputError(f"the {kind} calibration is given as 'none' and as other sources; "
                             f"give one or the other")
        return CalibrationSet(kind, [], ["none"])
    items: list[dict[str, Any]] = []
    for spec in specs:
        spec = str(spec).strip()
        if spec == "builtin":
            available = set(probes.languages(kind))
            wanted = [x for x in (langs or DEFAULT_LANGUAGES[kind]) if x in available]
            if not wanted:
                raise InputError(f"the built-in {kind} probes have no items in "
                                 f"{', '.join(langs or [])}; they cover {', '.join(sorted(available))}")
            got = probes.load(kind, wanted)
        elif "=" in spec:
            name, _, source = spec.partition("=")
            got = _from_loader(kind, name.strip(), source.strip(), langs)
        elif spec.endswith(".jsonl"):
            got = _read_jsonl(Path(spec).expanduser(), kind)
            if langs is not None:
                got = [it for it in got if it.get("lang") in langs]
        else:
            raise InputError(f"calibration source {spec!r} is not understood; give builtin, none, "
                             f"a .jsonl file, or NAME=SOURCE (e.g. crows-pairs=path/to/file.csv)")
        _validate(kind, got, spec)
        items.extend(got)
    if max_per_language is not None:
        seen: dict[str, int] = {}
        kept = []
        for it in items:
            lang = str(it.get("lang", "?"))
            if seen.get(lang, 0) < max_per_language:
                kept.append(it)
                seen[lang] = seen.get(lang, 0) + 1
        items = kept
    return CalibrationSet(kind, items, specs)
