"""cwp-export: export Hugging Face causal LMs to llama.cpp GGUF files that keep fairness- and
safety-critical weights protected.

Python API (the CLI is a thin layer over it)::

    from cwp_export import export
    result = export("path/to/hf-model", quant="F16", outdir="out")
    print(result.files)
"""

__version__ = "0.1.0"

from .api import ExportResult, export  # noqa: E402

__all__ = ["ExportResult", "export", "__version__"]
