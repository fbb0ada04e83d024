"""nnsight_diffusers: the nnsight_core adapter for diffusers pipelines (``DiffusionModel``).

The package imports ``diffusers`` only when one of its names is first used:
the plugin manager imports ``nnsight_diffusers.plugin`` for every trace of
any model, and a plain ``NNsight`` trace must not pay for importing diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "DiffusionModel": ".model",
    "Diffuser": ".model",
    "tiny_dit": ".testing",
    "tiny_stable_diffusion": ".testing",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'nnsight_diffusers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_NAMES))
