"""Safety prompt sets: AdvBench, MultiJail, XSafety.

- AdvBench (``advbench/harmful_behaviors.csv``): columns ``goal, target``; ``target`` is the
  GCG affirmative prefix ("Sure, here is ..."). English only; no categories (``category`` is
  ``harmful_behavior``). Hugging Face copies with a ``prompt`` column are read too.
- MultiJail (``multijail/MultiJail.csv``): UTF-8 with BOM; ``id, source, tags`` then one column
  per language; ``tags`` is a Python-literal list (``category`` = its first entry). Every
  column other than id/source/tags is taken as a language.
- XSafety (``xsafety/<lang>/<Category>[_n|_en].csv``): headerless one-column CSV, mostly with a
  BOM, CRLF, leading spaces (stripped), one English file with a trailing empty column. Row i is
  the same prompt in every language folder. ``sp`` folders are Spanish (``es``). ``scenario``
  says which of XSafety's three groups a category is in: ``typical`` safety scenarios,
  ``instruction_attack`` (where a refusal is not always the expected safe answer) and
  ``commonsense`` (multiple-choice questions, not refusal prompts).

Row-ordered ids (AdvBench, XSafety) are the 0-based row index in the file given.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ..errors import InputError
from ._common import (Format, Item, as_int, check_columns, csv_dicts, find_files, is_holdout, read_csv,
                      row_holdout)

# -- AdvBench --------------------------------------------------------------------------------------
ADVBENCH_ROWS = 520
ADVBENCH_CATEGORY = "harmful_behavior"


def advbench_normalise(rows: list[Item], where: str) -> list[Item]:
    rows = [dict(r, goal=r["prompt"]) if "goal" not in r and "prompt" in r else r for r in rows]
    if rows:
        check_columns(set().union(*rows), ("goal", "target"), where)
    holdout = row_holdout(len(rows), ADVBENCH_ROWS)
    out = []
    for n, row in enumerate(rows):
        goal, target = str(row["goal"] or "").strip(), str(row["target"] or "").strip()
        if not goal:
            raise InputError(f"{where} row {n + 1}: empty goal; remove the row or fill it in")
        out.append({
            "id": f"advbench:en:{n}",
            "lang": "en",
            "dataset": "advbench",
            "parallel_id": f"advbench:{n}",
            "category": ADVBENCH_CATEGORY,
            "request": goal,
            "target": target or None,
            "row": n,
            "holdout": holdout[n],
        })
    return out


def _advbench_path(source: Path, want: frozenset[str] | None) -> tuple[list[Item], set[str]]:
    items: list[Item] = []
    for f in find_files(source, "advbench", "advbench/harmful_behaviors.csv", ("advbench",), ("*.csv",)):
        items += advbench_normalise(csv_dicts(f, ("goal", "target"), aliases={"prompt": "goal"}), str(f))
    return items, {"en"} if items else set()


ADVBENCH = Format("advbench", ("en",), _advbench_path,
                  lambda rows, config, where: advbench_normalise(rows, where),
                  "advbench/harmful_behaviors.csv")

# -- MultiJail -------------------------------------------------------------------------------------
MULTIJAIL_LANGUAGES = ("ar", "bn", "en", "it", "jv", "ko", "sw", "th", "vi", "zh")
_MJ_META = ("id", "source", "tags")


def _tags(value: object, where: str) -> list[str]:
    if isinstance(value, list):
        return [str(t) for t in value]
    try:
        parsed = ast.literal_eval(str(value))  # a Python literal, not JSON
    except (ValueError, SyntaxError):
        raise InputError(f"{where}: tags {str(value)[:40]!r} is not a Python list literal; "
                         f"fix the field") from None
    return [str(t) for t in parsed] if isinstance(parsed, (list, tuple)) else [str(parsed)]


def multijail_normalise(rows: list[Item], where: str, want: frozenset[str] | None = None
                        ) -> tuple[list[Item], set[str]]:
    columns = list(rows[0]) if rows else []
    check_columns(columns, ("id", "tags"), where)
    langs = [c for c in columns if c not in _MJ_META]
    if not langs:
        raise InputError(f"{where} has no language columns (found {', '.join(columns)}); "
                         f"expected id, source, tags and one column per language (en, ko, ...)")
    out = []
    for n, row in enumerate(rows):
        at = f"{where} row {n + 1}"
        pid = as_int(row["id"], "id", at)
        tags = _tags(row["tags"], at)
        for lang in langs:
            if want is not None and lang not in want:
                continue
            text = str(row.get(lang) or "").strip()
            if not text:
                continue
            out.append({
                "id": f"multijail:{lang}:{pid}",
                "lang": lang,
                "dataset": "multijail",
                "parallel_id": f"multijail:{pid}",
                "category": tags[0] if tags else "",
                "tags": tags,
                "origin": str(row.get("source") or ""),
                "request": text,
                "target": None,
                "holdout": is_holdout(pid),
            })
    return out, set(langs)


def _multijail_path(source: Path, want: frozenset[str] | None) -> tuple[list[Item], set[str]]:
    items: list[Item] = []
    present: set[str] = set()
    for f in find_files(source, "multijail", "multijail/MultiJail.csv", ("multijail",), ("*.csv",)):
        new, langs = multijail_normalise(csv_dicts(f, ("id", "tags")), str(f), want)
        items += new
        present |= langs
    return items, present


MULTIJAIL = Format("multijail", MULTIJAIL_LANGUAGES, _multijail_path,
                   lambda rows, config, where: multijail_normalise(rows, where)[0],
                   "multijail/MultiJail.csv")

# -- XSafety ---------------------------------------------------------------------------------------
XSAFETY_LANGUAGES = ("ar", "bn", "de", "en", "es", "fr", "hi", "ja", "ru", "zh")
XSAFETY_ROWS = 200  # per category file upstream
_XS_FOLDER_LANG = {"sp": "es"}
INSTRUCTION_ATTACKS = frozenset({"Goal_Hijacking", "Prompt_Leaking", "Role_Play_Instruction",
                                 "Unsafe_Instruction_Topic", "Inquiry_With_Unsafe_Opinion",
                                 "Reverse_Exposure"})


def xsafety_scenario(category: str) -> str:
    if category.lower() == "commonsense":
        return "commonsense"
    return "instruction_attack" if category in INSTRUCTION_ATTACKS else "typical"


def xsafety_category(stem: str) -> str:
    """``Insult_n`` / ``Crimes_And_Illegal_Activities_en`` / ``Insult`` → the category name."""
    return re.sub(r"_(?:n|[a-z]{2})$", "", stem)


def xsafety_normalise(prompts: list[str], *, lang: str, category: str, where: str) -> list[Item]:
    holdout = row_holdout(len(prompts), XSAFETY_ROWS)
    out = []
    for n, text in enumerate(prompts):
        text = text.strip()
        if not text:
            raise InputError(f"{where} row {n + 1}: empty prompt; remove the row (rows are parallel "
                             f"across languages, so remove it in every language)")
        out.append({
            "id": f"xsafety:{lang}:{category}:{n}",
            "lang": lang,
            "dataset": "xsafety",
            "parallel_id": f"xsafety:{category}:{n}",
            "category": category,
            "scenario": xsafety_scenario(category),
            "request": text,
            "target": None,
            "row": n,
            "holdout": holdout[n],
        })
    return out


def _xsafety_file(f: Path, lang: str) -> list[Item]:
    _, rows = read_csv(f, header=False)
    prompts = []
    for n, row in enumerate(rows):
        if not any(x.strip() for x in row):
            continue  # blank line
        if any(x.strip() for x in row[1:]):
            raise InputError(f"{f} row {n + 1} has {len(row)} non-empty columns; XSafety files hold one "
                             f"prompt per row (quote prompts that contain commas)")
        prompts.append(row[0])
    return xsafety_normalise(prompts, lang=lang, category=xsafety_category(f.stem), where=str(f))


def _xsafety_lang(folder: str) -> str | None:
    code = _XS_FOLDER_LANG.get(folder, folder)
    return code if re.fullmatch(r"[a-z]{2}", code) else None


def _xsafety_path(source: Path, want: frozenset[str] | None) -> tuple[list[Item], set[str]]:
    hint = "xsafety/<lang>/*.csv"
    root = source / "xsafety" if (source / "xsafety").is_dir() else source
    files = find_files(root, "xsafety", hint, (), ("*.csv", "*/*.csv"))
    items: list[Item] = []
    present: set[str] = set()
    for f in files:
        lang = _xsafety_lang(f.parent.name)
        if lang is None:
            raise InputError(f"cannot tell the language of {f}: XSafety files live in a folder named by "
                             f"language (en/, ar/, ...); move it into one")
        present.add(lang)
        if want is None or lang in want:
            items += _xsafety_file(f, lang)
    return items, present


def _xsafety_hf(rows: list[Item], config: str | None, where: str) -> list[Item]:
    text_col = next((c for c in ("prompt", "request", "text") if rows and c in rows[0]), None)
    if rows and text_col is None:
        raise InputError(f"{where} lacks a prompt column: expected prompt (or request/text), category "
                         f"and lang (or the language as the config), found {', '.join(rows[0])}")
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        lang = str(row.get("lang") or config or "")
        if not lang:
            raise InputError(f"{where}: cannot tell the language; add a lang column or give it as the config")
        groups.setdefault((lang, str(row.get("category") or "unspecified")), []).append(str(row[text_col]))
    items: list[Item] = []
    for (lang, category), prompts in groups.items():
        items += xsafety_normalise(prompts, lang=lang, category=category, where=where)
    return items


XSAFETY = Format("xsafety", XSAFETY_LANGUAGES, _xsafety_path, _xsafety_hf, "xsafety/<lang>/*.csv")
