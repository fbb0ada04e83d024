"""Small models for tests, demos and benchmarks of a server (factories for ``NAME=module:function``).

Example:
    >>> net = mlp()
    >>> [name for name, _ in net.named_children()]
    ['layer1', 'sigma1', 'layer2', 'sigma2']
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Optional

import torch

__all__ = ["mlp", "Slow", "slow"]


def mlp(seed: int = 0) -> torch.nn.Module:
    """The tests' tiny MLP: layer1 (5 -> 10), sigma1, layer2 (10 -> 2), sigma2, seeded."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(OrderedDict([
        ("layer1", torch.nn.Linear(5, 10)),
        ("sigma1", torch.nn.Sigmoid()),
        ("layer2", torch.nn.Linear(10, 2)),
        ("sigma2", torch.nn.Sigmoid()),
    ]))


class Slow(torch.nn.Module):
    """A model that takes ``steps * pause`` seconds: ``steps`` calls of ``step`` with a pause each
    (for wall-time limits and for killing a replica mid-request); ``forward(x, steps=n)`` runs n.

    Example:
        >>> Slow(steps=2, pause=0.0)(torch.ones(1, 4)).shape
        torch.Size([1, 4])
    """

    def __init__(self, steps: int = 50, pause: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.step = torch.nn.Linear(4, 4)
        self.steps, self.pause = steps, pause

    def forward(self, x: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        """Apply ``step`` ``steps`` times (default ``self.steps``), pausing after each."""
        for _ in range(self.steps if steps is None else steps):
            x = self.step(x)
            time.sleep(self.pause)
        return x


def slow() -> Slow:
    """A :class:`Slow` of 50 steps of 0.1 s (5 s a forward pass)."""
    return Slow()
