"""The ``nnsight`` import name: nnsight 0.2 examples run as written.

``from nnsight import NNsight, LanguageModel, DiffusionModel`` re-exports the
model wrappers of whichever adapters are installed, and every public name of
:mod:`nnsight_core`. A wrapper whose adapter is missing raises an ImportError
naming the distribution to install. This is not the upstream ``nnsight``
distribution; it is shipped by ``nnsight-torch``.
"""

from __future__ import annotations

import importlib
from typing import Any

import nnsight_core
from nnsight_core import *  # noqa: F401,F403 - the facade re-exports the core's public names

from nnsight_torch import NNsight

# Upstream names and the adapter distribution that provides each.
_WRAPPERS = {
    "LanguageModel": ("nnsight_transformers", "nnsight-transformers"),
    "LanguageModelProxy": ("nnsight_transformers", "nnsight-transformers"),
    "TokenIndexer": ("nnsight_transformers", "nnsight-transformers"),
    "DiffusionModel": ("nnsight_diffusers", "nnsight-diffusers"),
}

__all__ = ["NNsight", *_WRAPPERS, *nnsight_core.__all__]


def __getattr__(name: str) -> Any:
    if name not in _WRAPPERS:
        raise AttributeError(f"module 'nnsight' has no attribute {name!r}")
    module, distribution = _WRAPPERS[name]
    try:
        value = getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise ImportError(f"nnsight.{name} is provided by the adapter distribution "
                          f"'{distribution}', which is not installed: install it "
                          f"(`pip install -e adapters/{distribution}` in this repository).") from error
    globals()[name] = value
    return value
