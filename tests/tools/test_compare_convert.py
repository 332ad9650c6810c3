"""llama.cpp's own converter and cwp-export write the same tensors (names, shapes, types, bytes).

The end-to-end cases are slow (each runs both converters); one fast test checks that the comparison
itself notices differences. The llama.cpp converter comes from the installed llama-cpp-python's
sdist (downloaded once with pip into the cache, see ``tools/llamacpp.py``); the end-to-end tests are
skipped with the reason when it cannot be obtained.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import compare_convert  # noqa: E402
import llamacpp  # noqa: E402

from cwp_export.testing import ARCHITECTURES, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def llamacpp_src() -> Path:
    try:
        return llamacpp.llamacpp_source_dir()
    except llamacpp.LlamaCppUnavailable as e:
        pytest.skip(f"llama.cpp's converter is not available: {e}")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from cwp_export.builtin import builtin_model_path
    from cwp_export.errors import InputError

    try:
        return builtin_model_path("smollm2", progress=False)
    except InputError as e:
        pytest.skip(f"the built-in SmolLM2 checkpoint is not available: {e}")


def _gemma3_trimmed_rows(folder: Path) -> int:
    """How many token_embd rows llama.cpp's Gemma3 converter keeps for a folder without
    tokenizer.model: len(tokenizer.json model vocab) + len(added_tokens). Special tokens sit in
    both lists, so they count twice; for a padded embedding the rule cuts rows that the vocabulary
    (which llama.cpp sizes by config.json's vocab_size) still has, and llama.cpp then refuses its
    own file ("check_tensor_dims: tensor 'token_embd.weight' has wrong shape")."""
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return len(tj["model"]["vocab"]) + len(tj.get("added_tokens", []))


def _known_llamacpp_deviation(t: compare_convert.TensorResult, folder: Path, arch: str) -> bool:
    """llama.cpp's trimming of a tokenizer.json-only Gemma 3 embedding (see above); the rows both
    files hold must still be byte-identical."""
    return (arch == "gemma3" and t.name == "token_embd.weight" and t.status == "shape"
            and not (folder / "tokenizer.model").is_file()
            and t.llamacpp_shape is not None and t.ours_shape is not None
            and t.llamacpp_shape[-1] == _gemma3_trimmed_rows(folder) < t.ours_shape[-1]
            and t.common_rows_identical is True)


def _assert_same_tensors(c: compare_convert.Comparison, arch: str = "") -> None:
    assert c.error is None, c.error
    folder = Path(c.folder)
    problems = [f"{t.name}: {t.status} (ours {t.ours_type} {t.ours_shape}, llama.cpp "
                f"{t.llamacpp_type} {t.llamacpp_shape}, max|diff| {t.max_abs_diff})"
                for t in c.tensor_problems if not _known_llamacpp_deviation(t, folder, arch)]
    assert not problems, "tensors differ from llama.cpp's converter:\n" + "\n".join(problems)
    assert c.tensors, "no tensors were compared"


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16", "f32"])
def test_smollm2_matches_llamacpp(llamacpp_src: Path, smollm2: Path, tmp_path: Path,
                                  outtype: str) -> None:
    c = compare_convert.compare_folder("smollm2", smollm2, outtype, tmp_path)
    _assert_same_tensors(c)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_model_matches_llamacpp(llamacpp_src: Path, tmp_path: Path, arch: str) -> None:
    folder = make_tiny_model(arch, tmp_path / f"tiny-{arch}")
    c = compare_convert.compare_folder(f"tiny-{arch}", folder, "f16", tmp_path)
    _assert_same_tensors(c, arch)


def _write_gguf(path: Path, tensors: dict[str, Any], kv: dict[str, int]) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in kv.items():
        w.add_uint32(k, v)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_comparison_reports_differences(tmp_path: Path) -> None:
    """The comparison itself is not blind: a changed value, type, key and name all show up."""
    import numpy as np
    from gguf import GGUFReader

    a = np.arange(64, dtype=np.float32).reshape(2, 32)
    b = a.copy()
    b[1, 3] += 0.5
    ours = _write_gguf(tmp_path / "a.gguf", {"x": a, "same": a, "f16": a, "only_a": a},
                       {"llama.block_count": 2, "llama.only_a": 1})
    theirs = _write_gguf(tmp_path / "b.gguf", {"x": b, "same": a, "f16": a.astype(np.float16)},
                         {"llama.block_count": 3})
    ra, rb = GGUFReader(ours), GGUFReader(theirs)
    tensors = {t.name: t for t in compare_convert.compare_tensors(ra, rb)}
    assert tensors["same"].status == "identical"
    assert tensors["x"].status == "data" and tensors["x"].max_abs_diff == 0.5
    assert tensors["x"].n_values_differ == 1
    assert tensors["f16"].status == "type" and tensors["f16"].max_abs_diff == 0.0
    assert tensors["only_a"].status == "only_ours"
    keys = {k.key: k for k in compare_convert.compare_metadata(
        compare_convert.read_fields(ra), compare_convert.read_fields(rb))}
    assert keys["llama.block_count"].status == "differs"
    assert keys["llama.only_a"].status == "only_ours"
    assert keys["general.architecture"].status == "equal"
