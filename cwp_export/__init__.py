"""cwp-export: export Hugging Face causal LMs to llama.cpp GGUF files that keep fairness- and
safety-critical weights protected.

Python API (the CLI is a thin layer over it)::

    from cwp_export import export
    result = export("path/to/hf-model", quant="F16", outdir="out")
    print(result.files)
"""

__version__ = "0.1.0"

__all__ = ["ExportResult", "export", "__version__"]


def __getattr__(name: str):
    # imported lazily so that `cwp-export --help` does not pay for importing torch
    if name in ("ExportResult", "export"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'cwp_export' has no attribute {name!r}")
