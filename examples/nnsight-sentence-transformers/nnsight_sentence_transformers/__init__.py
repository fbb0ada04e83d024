"""nnsight_sentence_transformers: a third-party nnsight_core adapter for sentence-transformers.

It is written against the public API of ``nnsight_core`` only (``NNsightModel``,
``hookimpl``, the exceptions of ``nnsight_core.errors`` and the conformance
suite of ``nnsight_core.testing``), as any outside project could write it.

The names below are imported on first use: the plugin manager imports
``nnsight_sentence_transformers.plugin`` (and so this package) for every trace
of every model, and tracing a plain ``torch.nn.Module`` must not pay for
importing ``sentence_transformers`` (several seconds) or ``transformers``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "SentenceTransformerModel": ".model",
    "minilm_folder": ".folders",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'nnsight_sentence_transformers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_NAMES))
