"""Architecture registry: Hugging Face ``architectures`` name → adapter class.

Only adapters know Hugging Face tensor names and config keys. Register a new architecture with
:func:`register`; look one up with :func:`adapter_for`.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .base import ArchAdapter, HParam, TensorSpec

_REGISTRY: dict[str, type[ArchAdapter]] = {}


def register(cls: type[ArchAdapter]) -> type[ArchAdapter]:
    for name in cls.hf_architectures:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name} is registered twice")
        _REGISTRY[name] = cls
    return cls


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def adapter_for(config: dict[str, Any]) -> ArchAdapter:
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not archs:
        raise InputError("config.json has no 'architectures' list; cannot tell which model this "
                         f"is (supported: {', '.join(supported_architectures())})")
    for name in archs:
        if name in _REGISTRY:
            return _REGISTRY[name](config)
    raise InputError(f"architecture {archs[0]} is not supported; supported: "
                     f"{', '.join(supported_architectures())}")


# importing the modules registers their adapters
from . import gemma3, llama, qwen  # noqa: E402,F401

__all__ = ["ArchAdapter", "HParam", "TensorSpec", "adapter_for", "register",
           "supported_architectures"]
