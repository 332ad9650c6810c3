"""A SmolLM2 ``--quant Q4_K_M`` export against llama.cpp's own quantizer (slow).

Same per-tensor types and file size as llama-quantize's output from the same F16 GGUF, and a KL
divergence to the F16 model, measured through llama-cpp-python on held-out NTREX news text, within
2% (relative) of llama.cpp's.
"""

from __future__ import annotations

import pytest
from gguf import GGUFReader

from cwp_export.testing import kl_divergence, llamacpp_quantize, ntrex_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from cwp_export.builtin import builtin_model_path
    from cwp_export.errors import InputError

    try:
        return builtin_model_path("smollm2", progress=False)
    except InputError as e:
        pytest.skip(f"SmolLM2 unavailable: {e}")


@pytest.mark.parametrize("preset", ["Q4_K_M"])
def test_preset_matches_llama_quantize(smollm2, shared_data, tmp_path, preset):
    if not (shared_data / "ntrex_general_text").is_dir():
        pytest.skip(f"NTREX text not found under {shared_data}")
    from cwp_export.api import export

    f16 = export(smollm2, quant="F16", outdir=tmp_path / "f16", progress=False, argv=[]).model_path
    ours = export(smollm2, quant=preset, outdir=tmp_path / "ours", progress=False,
                  argv=[]).model_path
    theirs = llamacpp_quantize(f16, tmp_path / f"llamacpp-{preset}.gguf", preset)

    r_ours, r_theirs = GGUFReader(ours), GGUFReader(theirs)
    t_ours = {t.name: t for t in r_ours.tensors}
    t_theirs = {t.name: t for t in r_theirs.tensors}
    assert {n: t.tensor_type for n, t in t_ours.items()} == \
        {n: t.tensor_type for n, t in t_theirs.items()}
    data_ours = sum(int(t.n_bytes) for t in r_ours.tensors)
    data_theirs = sum(int(t.n_bytes) for t in r_theirs.tensors)
    assert data_ours == data_theirs
    same = sum(bytes(t_ours[n].data) == bytes(t_theirs[n].data) for n in t_ours)
    print(f"{preset}: {same}/{len(t_ours)} tensors byte-identical to llama-quantize; "
          f"files {ours.stat().st_size} vs {theirs.stat().st_size} bytes")

    text = ntrex_text(shared_data, "eng", lines=400)
    k_ours = kl_divergence(f16, ours, text)
    k_theirs = kl_divergence(f16, theirs, text)
    print(f"{preset} KLD vs F16 on held-out NTREX ({k_ours['n_tokens']} tokens): "
          f"cwp-export {k_ours['mean_kld']:.5f}, llama.cpp {k_theirs['mean_kld']:.5f}")
    assert abs(k_ours["mean_kld"] - k_theirs["mean_kld"]) < 0.02 * k_theirs["mean_kld"]


def test_imatrix_export_matches_llama_quantize(smollm2, shared_data, tmp_path):
    """With the same imatrix (computed by llama-imatrix on calibration news text), cwp-export's
    Q4_K_M equals llama-quantize --imatrix byte for byte."""
    from cwp_export.api import export
    from cwp_export.testing import llamacpp_tool, run_llamacpp_tool

    imatrix_exe, quantize_exe = llamacpp_tool("llama-imatrix"), llamacpp_tool("llama-quantize")
    if imatrix_exe is None or quantize_exe is None:
        pytest.skip("llama-imatrix/llama-quantize not built here: python "
                    "tools/build_llamacpp_tools.py")
    if not (shared_data / "ntrex_general_text").is_dir():
        pytest.skip(f"NTREX text not found under {shared_data}")
    calib = tmp_path / "calib.txt"
    calib.write_text(ntrex_text(shared_data, "eng", lines=150, holdout=False), encoding="utf-8")
    f16 = export(smollm2, quant="F16", outdir=tmp_path / "f16", progress=False, argv=[]).model_path
    imatrix = tmp_path / "imatrix.gguf"
    run_llamacpp_tool(imatrix_exe, "-m", f16, "-f", calib, "-o", imatrix, "-c", "256", "-t", "2")
    theirs = tmp_path / "theirs.gguf"
    run_llamacpp_tool(quantize_exe, "--imatrix", imatrix, f16, theirs, "Q4_K_M", "2")
    ours = export(smollm2, quant="Q4_K_M", imatrix=imatrix, outdir=tmp_path / "ours",
                  progress=False, argv=[]).model_path
    t_ours = {t.name: bytes(t.data) for t in GGUFReader(ours).tensors}
    t_theirs = {t.name: bytes(t.data) for t in GGUFReader(theirs).tensors}
    differ = [n for n in t_ours if t_ours[n] != t_theirs.get(n)]
    print(f"Q4_K_M + imatrix: {len(t_ours) - len(differ)}/{len(t_ours)} tensors byte-identical")
    assert t_ours.keys() == t_theirs.keys() and not differ, differ[:5]
