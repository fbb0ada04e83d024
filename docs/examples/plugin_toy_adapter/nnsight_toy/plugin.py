"""The toy adapter's hook implementations, registered under the ``nnsight_core`` entry-point group.

Every hook first checks that the wrapper is a :class:`~nnsight_toy.ToyModel`
and returns ``None`` otherwise, so that the plugin manager asks the next adapter.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from nnsight_core import InputError, hookimpl

from .model import ToyModel, build


@hookimpl
def nnsight_load(model: Any, model_key: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                 meta: bool) -> Optional[torch.nn.Module]:
    if not isinstance(model, ToyModel):
        return None
    if meta:
        with torch.device("meta"):
            return build(model_key, *args, **kwargs)
    return build(model_key, *args, **kwargs)


@hookimpl
def nnsight_prepare_inputs(model: Any, inputs: Tuple[Any, ...],
                           kwargs: Dict[str, Any]) -> Optional[Tuple[torch.Tensor, int]]:
    if not isinstance(model, ToyModel):
        return None
    width = model._model.layer0.in_features
    if len(inputs) != 1 or kwargs:
        raise InputError(f"a ToyModel invoke takes one input, rows of {width} floats; got "
                         f"{len(inputs)} positional and {len(kwargs)} keyword inputs.")
    try:
        rows = torch.as_tensor(inputs[0], dtype=torch.float32)
    except (TypeError, ValueError) as error:
        raise InputError(f"a ToyModel input must be numbers: a row of {width} floats, a list "
                         f"of rows or a 2-D tensor ({error}).") from error
    if rows.dim() == 1:
        rows = rows.unsqueeze(0)  # one row: a batch of one
    if rows.dim() != 2 or rows.shape[1] != width:
        raise InputError(f"a ToyModel input must be rows of {width} floats, the width of "
                         f"layer0; got shape {tuple(rows.shape)}.")
    return rows, rows.shape[0]


@hookimpl
def nnsight_batch_inputs(model: Any, prepared: List[torch.Tensor],
                         batch_sizes: List[int]) -> Optional[torch.Tensor]:
    if not isinstance(model, ToyModel):
        return None
    return torch.cat(prepared)  # invoke i's rows follow those of invokes 0..i-1


@hookimpl
def nnsight_execute(model: Any, batched: torch.Tensor, kwargs: Dict[str, Any],
                    method: Optional[str]) -> Any:
    if not isinstance(model, ToyModel):
        return None
    run = model._model if method is None else getattr(model._model, method)
    return run(batched, **kwargs)
