"""The toy "framework" and its wrapper class.

A toy model is named by a spec such as ``"mlp:5,8,2"``: linear layers of
those widths with a ReLU between them, named ``layer0``, ``relu0``,
``layer1``, ... Its weights come from a seed, as a real framework's would come
from a checkpoint.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import List

import torch

from nnsight_core import ModelKeyError, NNsightModel

__all__ = ["ToyModel", "build"]


class ToyModel(NNsightModel):
    """A wrapper for toy MLPs: the class the adapter's hooks recognise as their own.

    Example:
        >>> model = ToyModel("mlp:5,8,2")         # a skeleton on the meta device, no weights
        >>> with model.trace([0.1, 0.2, 0.3, 0.4, 0.5]):
        ...     hidden = model.layer0.output.save()
    """


def build(spec: str, seed: int = 0) -> torch.nn.Sequential:
    """Build the toy MLP ``spec`` names, with weights drawn from ``seed``.

    Under ``with torch.device("meta"):`` it builds the skeleton only.

    Raises:
        ModelKeyError: ``spec`` is not of the form ``"mlp:<width>,<width>[,...]"``.
    """
    widths = _widths(spec)
    layers: OrderedDict[str, torch.nn.Module] = OrderedDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
            if i:
                layers[f"relu{i - 1}"] = torch.nn.ReLU()
            layers[f"layer{i}"] = torch.nn.Linear(n_in, n_out)
    return torch.nn.Sequential(layers)


def _widths(spec: object) -> List[int]:
    kind, _, sizes = str(spec).partition(":")
    try:
        widths = [int(size) for size in sizes.split(",")]
    except ValueError:
        widths = []
    if kind != "mlp" or len(widths) < 2 or min(widths) < 1:
        raise ModelKeyError(f"ToyModel loads specs of the form 'mlp:<width>,<width>[,...]' "
                            f"(e.g. 'mlp:5,8,2'), not {spec!r}.")
    return widths
