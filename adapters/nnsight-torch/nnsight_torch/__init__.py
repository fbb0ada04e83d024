"""nnsight_torch: the nnsight_core adapter for any ``torch.nn.Module``."""

from __future__ import annotations

from .model import NNsight

__version__ = "0.1.0"

__all__ = ["NNsight"]
