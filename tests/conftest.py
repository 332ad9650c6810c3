"""Shared fixtures: tiny random checkpoints per architecture and their conversions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cwp_export.testing import ARCHITECTURES, make_tiny_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download from a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {a: make_tiny_model(a, root / a) for a in ARCHITECTURES}


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_models):
    """(arch, quant) → path of the converted GGUF, converted once per session."""
    from cwp_export.api import export

    root = tmp_path_factory.mktemp("converted")
    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, q: str) -> Path:
        if (arch, q) not in cache:
            res = export(tiny_models[arch], quant=q, outdir=root / f"{arch}-{q}", progress=False,
                         argv=[])
            cache[arch, q] = res.model_path
        return cache[arch, q]

    return get


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared benchmark files (../shared/data beside the repository); never copied in."""
    return SHARED_DATA
