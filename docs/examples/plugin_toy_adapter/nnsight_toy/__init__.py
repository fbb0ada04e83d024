"""nnsight_toy: a minimal nnsight_core adapter for toy MLPs (see the adapter guide)."""

from .model import ToyModel, build

__all__ = ["ToyModel", "build"]
