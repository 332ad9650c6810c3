"""Loaders for public bias and safety benchmarks, from files or Hugging Face ``datasets``.

``load(name, source, languages=None, split=None)`` reads one benchmark and returns normalised
items (dicts), in file order. ``source`` is

- a file or folder in the layout of the shared benchmark data (see ``../shared/data/README.md``):
  the dataset's own file, its folder, or the data root holding one folder per dataset; or
- ``hf:ORG/NAME[:CONFIG]`` (read with ``datasets.load_dataset``; offline it must be in the local
  cache) or ``hf:/path/to/folder`` (a ``save_to_disk`` folder, or a folder of jsonl/csv/parquet
  files). Rows go through the same normaliser as the files where the columns are the same.

``split``: None = every item; ``"calibration"`` / ``"holdout"`` apply the README's holdout rule of
the dataset (ids, template ids or documents whose index mod 10 is in {0, 3, 7} are held out; for
row-ordered sets, the row index). The shared copies already lack their held-out part, so they
are all calibration and ``split="holdout"`` on them is an error. For a ``hf:`` source any other
value names the ``datasets`` split.

Errors (a missing file, missing columns, an unknown name, language or split, an empty result, a
bad ``hf:`` spec) raise :class:`cwp_export.errors.InputError` with a one-line message.

Item schemas
============

Every item has ``id`` (unique and stable: ``<dataset>:<lang>:<key>``), ``lang`` (two-letter code
where there is one), ``dataset`` (the loader name), ``parallel_id`` (the id without the language:
equal for the translations of one item) and ``holdout`` (bool, the README rule).

``crows-pairs`` (en, fr, nl)
    ``subset`` ("original": crows_pairs_anonymized.csv, 1508 upstream pairs; "multilingual": the
    revised parallel en/fr/nl set), ``pair_id`` (upstream row id, same across languages),
    ``bias_type``, ``sent_more``, ``sent_less``, ``direction``, ``direction_own``, ``annotations``
    (original file only, else None). ``direction`` is "stereo" when ``sent_more`` expresses a
    stereotype about a disadvantaged group and "antistereo" when ``sent_less`` violates one (so
    ``sent_more`` is about the advantaged group). In BOTH cases the biased outcome is
    P(sent_more) > P(sent_less); report the two directions separately as well. For French and
    Dutch, ``direction`` is the English label of the same id when the English file is at hand (the
    Dutch labels are unreliable); ``direction_own`` is the row's own label. Both English versions
    load when both are under ``source``: filter on ``subset``.
``stereoset`` (en)
    ``task`` ("intrasentence": ``context`` has BLANK and the options are full sentences;
    "intersentence": the options continue ``context``), ``bias_type``, ``target``, ``context``,
    ``stereotype``, ``anti_stereotype``, ``unrelated``.
``bbq`` (en) / ``mbbq`` (en, es, nl, tr)
    ``category``, ``subcategory``, ``control`` (MBBQ control files: names instead of group words),
    ``example_id`` (upstream, unique per file), ``parallel_id`` (aligns an item across MBBQ
    languages: category, control, template and position in the template; example_id is shifted
    in Spanish Gender_identity); answer ORDER differs between languages, so align answers by
    role: ``target_idx`` / ``unknown_idx`` / the remaining one,
    ``question_index`` (int, the template id), ``context_condition`` ("ambig"/"disambig"),
    ``question_polarity`` ("neg"/"nonneg"), ``context``, ``question``, ``answers`` (3 strings),
    ``answer_info`` (3 × [surface, group]), ``stereotyped_groups``, ``label`` (index of the
    correct answer), ``unknown_idx`` (the UNKNOWN option), ``target_idx`` (the answer naming the
    stereotyped group, derived as the README says; None on upstream errors where no single answer
    matches), ``biased_idx`` (target for "neg" questions, the other person for "nonneg"; None
    where the target is).
``advbench`` (en) / ``multijail`` (ar bn en it jv ko sw th vi zh) / ``xsafety`` (ar en in the shared copy)
    ``category``, ``request``, ``target`` (AdvBench's affirmative "Sure, here is ..." prefix; None
    elsewhere). MultiJail adds ``tags`` and ``origin``; XSafety adds ``scenario`` ("typical",
    "instruction_attack", "commonsense"); AdvBench and XSafety add ``row``.
``ntrex`` (en fr nl es tr ko ar, + any NTREX-128 language)
    ``doc`` (document index), ``doc_id`` (e.g. "bbc.381790"), ``text``.

``to_calibration(kind, items)`` turns items into the scoring schemas of
``cwp_export.probes.SCHEMAS`` (``fairness``, ``safety``, ``general_text``); ``half(items, which)``
gives the fixed "train" or "eval" half of a safety set.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from . import bbq, crows_pairs, hf, ntrex, safety, stereoset
from ._common import Format, Item
from .convert import half, half_of, to_calibration

__all__ = ["half", "half_of", "languages", "load", "names", "to_calibration"]

FORMATS: dict[str, Format] = {f.name: f for f in (
    crows_pairs.FORMAT, stereoset.FORMAT, bbq.BBQ, bbq.MBBQ,
    safety.ADVBENCH, safety.MULTIJAIL, safety.XSAFETY, ntrex.FORMAT,
)}
SPLITS = ("calibration", "holdout")


def names() -> list[str]:
    return sorted(FORMATS)


def _format(name: str) -> Format:
    if name not in FORMATS:
        raise InputError(f"unknown benchmark {name!r}; choose one of {', '.join(names())}")
    return FORMATS[name]


def languages(name: str) -> list[str]:
    """Languages the format can provide (a given copy may hold fewer)."""
    return sorted(_format(name).languages)


def _wanted(langs: Iterable[str] | None) -> frozenset[str] | None:
    if langs is None:
        return None
    if isinstance(langs, str):
        langs = [langs]
    return frozenset(str(x) for x in langs)


def load(name: str, source: str | os.PathLike, languages: Iterable[str] | None = None,
         split: str | None = None) -> list[Item]:
    """The normalised items of benchmark ``name`` from ``source`` (see the module docstring)."""
    fmt = _format(name)
    want = _wanted(languages)
    if want is not None and not want:
        raise InputError(f"no languages were asked for; pass None for all {name} languages, or some of "
                         f"{', '.join(sorted(fmt.languages))}")
    is_hf = hf.is_spec(source)
    if split is not None and split not in SPLITS and not is_hf:
        raise InputError(f"unknown split {split!r}; choose calibration or holdout, or leave it out "
                         f"for every item (other split names are for hf: sources)")
    if is_hf:
        source = str(source)
        config, parts = hf.load_splits(source, None if split in SPLITS else split)
        items: list[Item] = []
        for split_name, rows in parts:
            items += fmt.read_hf(rows, config, f"{source} (split {split_name})")
        present = {it["lang"] for it in items}
        if want is not None:
            items = [it for it in items if it["lang"] in want]
    else:
        path = Path(os.fspath(source)).expanduser()
        items, present = fmt.read_path(path, want)

    if want is not None:
        missing = sorted(want - present)
        unknown = [m for m in missing if m not in fmt.languages]
        if unknown:
            raise InputError(f"unknown language(s) {', '.join(unknown)} for {name}; it provides "
                             f"{', '.join(sorted(set(fmt.languages) | present))}")
        if missing:
            raise InputError(f"{source} has no {name} items in {', '.join(missing)}; it has "
                             f"{', '.join(sorted(present)) or 'none'}; ask for those or point at a "
                             f"copy with {', '.join(missing)}")
    if split in SPLITS:
        before = len(items)
        items = [it for it in items if it["holdout"] == (split == "holdout")]
        if before and not items and split == "holdout":
            raise InputError(f"{source} holds no held-out {name} items (the shared copy already "
                             f"withholds them); point at a full upstream copy to get split='holdout'")
    if not items:
        raise InputError(f"{source} gave no {name} items"
                         + (f" for {', '.join(sorted(want))}" if want else "")
                         + (f" in split {split!r}" if split else "")
                         + f"; point at the {name} data ({fmt.hint} in the shared layout)")
    dup = [i for i, c in Counter(it["id"] for it in items).items() if c > 1]
    if dup:
        raise InputError(f"{source} gives {len(dup)} {name} item id(s) twice (e.g. {dup[0]}); "
                         f"remove the duplicate files or rows" + (", or pass one split=" if is_hf else ""))
    return items
