"""Fixtures for the benchmark loader tests: the shared data (skipped where absent), loaded once."""

from __future__ import annotations

from functools import cache

import pytest

from cwp_export import data

SUBDIRS = {
    "crows-pairs": "crows_pairs_multilingual",
    "stereoset": "stereoset",
    "bbq": "bbq",
    "mbbq": "mbbq",
    "advbench": "advbench",
    "multijail": "multijail",
    "xsafety": "xsafety",
    "ntrex": "ntrex_general_text",
}


@pytest.fixture(scope="session")
def data_root(shared_data):
    """The shared benchmark folder; tests that read it skip where it is absent."""
    if not shared_data.is_dir():
        pytest.skip(f"shared benchmark data not found at {shared_data} (it lives beside the repository "
                    f"and is never copied in)")
    return shared_data


@pytest.fixture(scope="session")
def loaded(data_root):
    """load(name, languages=None) on the shared data, each result computed once per session."""

    @cache
    def get(name: str, langs: tuple[str, ...] | None = None):
        if not (data_root / SUBDIRS[name]).is_dir():
            pytest.skip(f"{data_root / SUBDIRS[name]} is absent")
        return data.load(name, data_root, langs)

    return get
