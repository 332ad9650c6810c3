"""File formats: only this package knows on-disk layouts (GGUF, manifest)."""
