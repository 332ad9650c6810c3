"""The built-in probe loader (the data files themselves are checked in test_probes_*.py)."""

import pytest

from cwp_export import probes
from cwp_export.errors import InputError


@pytest.mark.parametrize("kind", probes.kinds())
def test_every_kind_loads_with_its_schema(kind):
    items = probes.load(kind)
    assert items, kind
    for it in items:
        assert set(probes.SCHEMAS[kind]) <= set(it), (kind, it.get("id"))


def test_language_filter():
    fr = probes.load("fairness", ["fr"])
    assert fr and {it["lang"] for it in fr} == {"fr"}
    assert set(probes.languages("fairness")) >= {"en", "fr", "nl", "es", "tr"}
    with pytest.raises(InputError, match="no xx items"):
        probes.load("fairness", ["xx"])


def test_unknown_kind():
    with pytest.raises(InputError, match="unknown probe set 'nope'"):
        probes.load("nope")
