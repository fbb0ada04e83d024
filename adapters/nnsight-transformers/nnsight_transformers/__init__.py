"""nnsight_transformers: the nnsight_core adapter for Hugging Face causal language models.

The package imports ``transformers`` only when one of its names is first used:
the plugin manager imports ``nnsight_transformers.plugin`` for every trace of
any model, and a plain ``NNsight`` trace must not pay for importing transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "Generator": ".model",
    "LanguageModel": ".model",
    "LanguageModelProxy": ".proxy",
    "TokenIndexer": ".proxy",
    "gguf_checkpoint": ".checkpoints",
    "smollm2_checkpoint": ".checkpoints",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'nnsight_transformers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_NAMES))
