"""Hook implementations for :class:`~nnsight_torch.NNsight` (and, as a fallback, its subclasses).

Each hook is ``trylast`` so that adapters for ``NNsight`` subclasses are asked first.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import torch
from torch.utils import _pytree as pytree

from nnsight_core import BatchError, InputError, ModelKeyError, hookimpl

from .model import NNsight


@hookimpl(trylast=True)
def nnsight_load(model: Any, model_key: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                 meta: bool) -> Optional[torch.nn.Module]:
    if not isinstance(model, NNsight):
        return None
    if isinstance(model_key, torch.nn.Module):
        return model_key
    raise ModelKeyError(f"NNsight wraps a torch.nn.Module instance, not {type(model_key).__name__} "
                    f"{model_key!r}; for a Hugging Face model id use LanguageModel (nnsight-transformers).")


@hookimpl(trylast=True)
def nnsight_prepare_inputs(model: Any, inputs: Tuple[Any, ...],
                           kwargs: Dict[str, Any]) -> Optional[Tuple[Any, int]]:
    if not isinstance(model, NNsight):
        return None
    first = inputs[0] if inputs else None
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return (inputs, kwargs), first.shape[0]
    for leaf in pytree.tree_leaves((inputs, kwargs)):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return (inputs, kwargs), leaf.shape[0]
    raise InputError(f"NNsight found no tensor with a batch dimension among the invoke's inputs "
                     f"({', '.join(type(i).__name__ for i in inputs) or 'none'}); pass the module's "
                     "inputs as tensors whose first dimension is the batch.")


@hookimpl(trylast=True)
def nnsight_batch_inputs(model: Any, prepared: List[Any], batch_sizes: List[int]) -> Optional[Any]:
    if not isinstance(model, NNsight):
        return None
    flat = [pytree.tree_flatten(p) for p in prepared]
    spec = flat[0][1]
    for i, (_, other) in enumerate(flat[1:], 1):
        if other != spec:
            raise BatchError(f"invoke {i}'s inputs are structured differently from invoke 0's; "
                             "every invoke must pass the same arguments (only batch rows may differ).")
    leaves = []
    for k, column in enumerate(zip(*(f[0] for f in flat))):
        if all(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n
               for v, n in zip(column, batch_sizes)):
            leaves.append(torch.cat(column))
        elif all(_same(v, column[0]) for v in column[1:]):
            leaves.append(column[0])
        else:
            raise BatchError(f"input leaf {k} differs between invokes but is not a tensor with one "
                             "row per batch item; only batch-first tensors can differ between invokes.")
    return pytree.tree_unflatten(leaves, spec)


@hookimpl(trylast=True)
def nnsight_execute(model: Any, batched: Any, kwargs: Dict[str, Any], method: Optional[str]) -> Any:
    if not isinstance(model, NNsight):
        return None
    args, invoke_kwargs = batched
    device = _device_to_move_to(model._model, args, invoke_kwargs)
    if device is not None:
        args, invoke_kwargs = pytree.tree_map(
            lambda t: t.to(device) if isinstance(t, torch.Tensor) and t.device != device else t,
            (args, invoke_kwargs))
    run = model._model if method is None else getattr(model._model, method)
    if kwargs or invoke_kwargs:
        _check_keywords(type(model._model), method or "forward", invoke_kwargs, kwargs)
    return run(*args, **invoke_kwargs, **kwargs)


def _check_keywords(cls: type, method: str, invoke_kwargs: Dict[str, Any], kwargs: Dict[str, Any]) -> None:
    """Raise before the model runs if it would reject a keyword argument.

    Raises:
        InputError: A keyword the method does not take, or one given both to an invoke and to trace().
    """
    twice = sorted(set(invoke_kwargs) & set(kwargs))
    if twice:
        raise InputError(f"keyword argument(s) {', '.join(twice)} were given both to an invoke and to "
                         "trace(); give each once.")
    accepted = _keywords(cls, method)
    unknown = sorted(set(invoke_kwargs).union(kwargs) - accepted) if accepted is not None else []
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise InputError(f"{cls.__name__}.{method}() takes no keyword argument {names} "
                         f"(given to trace() or an invoke); its keyword arguments are: "
                         f"{', '.join(sorted(accepted)) or 'none'}.")


@functools.lru_cache(maxsize=None)
def _keywords(cls: type, method: str) -> Optional[FrozenSet[str]]:
    """Names ``cls.method`` accepts as keywords, or None when it takes ``**kwargs`` (or has no signature)."""
    try:
        parameters = inspect.signature(getattr(cls, method)).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                               inspect.Parameter.KEYWORD_ONLY)) - {"self"}


def _device_to_move_to(module: torch.nn.Module, args: Any, kwargs: Dict[str, Any]) -> Optional[torch.device]:
    """The device of the module's first parameter (found without walking the whole tree), or
    None when there is none or the inputs are plain tensors on it already (checked cheaply:
    one call per execution)."""
    while not module._parameters and module._modules:
        module = next(iter(module._modules.values()))
    param = next(iter(module._parameters.values()), None)
    if param is None:
        param = next(module.parameters(), None)
    if param is None or param.device.type == "meta":
        return None
    device = param.device
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            if value.device != device:
                return device
        elif isinstance(value, (tuple, list, dict)):
            return device
    return None


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values are different values
        return False
