"""cwp-export: export Hugging Face causal LMs to llama.cpp GGUF files that keep fairness- and
safety-critical weights protected.

Python API (the CLI is a thin layer over it)::

    from cwp_export import export, score, evaluate
    result = export("path/to/hf-model", quant="Q4_K_M", protect="1%", outdir="out")
    print(result.model_path, result.adapter_path)
"""

__version__ = "0.2.0"

__all__ = ["ExportResult", "__version__", "evaluate", "export", "score", "validate_export"]


def __getattr__(name: str):
    # imported lazily so that `cwp-export --help` does not pay for importing torch
    if name in ("ExportResult", "export", "score", "evaluate", "validate_export"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'cwp_export' has no attribute {name!r}")
