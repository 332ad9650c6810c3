"""Multi-threaded encoding: ``QuantType.encode`` splits rows into one band per torch thread."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as T

from cwp_export import quant
from cwp_export.ggml_ref import quantize as ggml_quantize


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", quant.names())
def test_bands_join_to_the_one_thread_bytes(name, two_threads):
    qt = quant.get(name)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(67, 2304, generator=g)               # odd row count: unequal bands
    assert x.numel() >= quant.PARALLEL_MIN_ELEMENTS
    per_element = torch.rand(x.shape, generator=g) + 0.1
    per_column = torch.rand(x.shape[1], generator=g) + 0.1
    for imp in (None, per_column, per_element):
        split = qt.encode(x, imp)
        torch.set_num_threads(1)
        whole = qt.encode(x, imp)
        torch.set_num_threads(2)
        assert split == whole
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K", "Q6_K"])
def test_bands_match_ggml(name, two_threads):
    qt = quant.get(name)
    x = torch.randn(130, 2048, generator=torch.Generator().manual_seed(4))
    assert qt.encode(x) == ggml_quantize(x.numpy(), qt.ggml_type)


def test_more_threads_than_rows_restores_the_setting():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        x = torch.randn(3, 65536)                         # 3 bands for 4 threads
        assert quant.get("Q8_0").encode(x) == ggml_quantize(x.numpy(), T.Q8_0)
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_thread_setting_restored_after_a_failing_band(two_threads):
    def broken(rows, importance):
        raise RuntimeError("band failed")

    qt = quant.QuantType("BROKEN", T.Q8_0, broken)
    with pytest.raises(RuntimeError, match="band failed"):
        qt.encode(torch.zeros(64, 4096))
    assert torch.get_num_threads() == 2


def _encode_and_report(queue):
    x = torch.randn(64, 4096, generator=torch.Generator().manual_seed(6))
    queue.put(quant.get("Q8_0").encode(x) == ggml_quantize(x.numpy(), T.Q8_0))


def test_forked_child_gets_its_own_workers(two_threads):
    """The worker pool survives between calls; a child forked after the parent used it must not
    wait on the parent's threads (which do not exist in the child)."""
    import multiprocessing

    quant.get("Q8_0").encode(torch.randn(64, 4096))             # the parent's pool now exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_encode_and_report, args=(queue,))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("encoding in a forked child hung")
    assert child.exitcode == 0 and queue.get(timeout=5) is True
