"""Batch-row helpers over nested module values (tensors inside tuples, dicts, ModelOutputs).

A tensor is *batch-first* when its first dimension equals the batch size of the
forward pass. Only batch-first tensors are narrowed to an invoke's rows or
written back; everything else (broadcast masks, position tensors of batch 1,
caches, Python values) is shared by all invokes and passed through untouched.
Nested structures are walked with torch's pytree, which transformers also
registers its ``ModelOutput`` classes with.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
from torch.utils import _pytree as pytree

from .errors import BatchError

Rows = Tuple[int, int]


def is_batch_first(value: Any, batch_size: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch_size


def narrow(value: Any, rows: Rows, batch_size: int) -> Any:
    """Return ``value`` with every batch-first tensor sliced to ``rows`` (views, no copy)."""
    start, stop = rows
    if isinstance(value, torch.Tensor):
        return value[start:stop] if is_batch_first(value, batch_size) else value
    return pytree.tree_map(
        lambda leaf: leaf[start:stop] if is_batch_first(leaf, batch_size) else leaf, value
    )


def clone(value: Any) -> Any:
    """Copy every tensor in ``value`` so in-place edits cannot reach parameters or autograd's saved tensors."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    return pytree.tree_map(lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) else leaf, value)


def write_back(
    full: Any,
    replaced: Dict[int, Any],
    narrowed: Dict[int, Any],
    rows: Sequence[Rows],
    batch_size: int,
    where: str,
) -> Any:
    """Write each invoke's replacement into its own rows of ``full`` and return the new value.

    Args:
        full: The value the module produced (or received) for the whole batch.
        replaced: Invoke index to that invoke's new value (same structure as its rows).
        narrowed: Invoke index to the rows originally handed to that invoke; leaves
            that are still these very objects are left as they are.
        rows: Invoke index to its ``(start, stop)`` rows.
        batch_size: Rows in the whole batch.
        where: Human-readable name of the module value, for error messages.
    """
    full_leaves, spec = pytree.tree_flatten(full)
    segments: Dict[int, list] = {}
    for invoke, new in replaced.items():
        new_leaves, new_spec = pytree.tree_flatten(new)
        if new_spec != spec:
            raise BatchError(
                f"{where}: invoke {invoke} assigned a value whose structure differs from the "
                f"module's ({new_spec} vs {spec}). When several invokes share a batch, assign a "
                "value of the same structure (edit one element, e.g. `.output[0][:] = ...`)."
            )
        old_rows = pytree.tree_leaves(narrowed[invoke])
        start, stop = rows[invoke]
        for k, (old, new_leaf) in enumerate(zip(full_leaves, new_leaves)):
            if new_leaf is old_rows[k]:
                continue
            if is_batch_first(old, batch_size):
                if not isinstance(new_leaf, torch.Tensor) or new_leaf.dim() == 0 or new_leaf.shape[0] != stop - start:
                    got = tuple(new_leaf.shape) if isinstance(new_leaf, torch.Tensor) else type(new_leaf).__name__
                    raise BatchError(
                        f"{where}: invoke {invoke} owns {stop - start} row(s) of the batch but "
                        f"assigned a value of shape {got}; give it shape "
                        f"({stop - start}, {', '.join(str(s) for s in old.shape[1:])})."
                    )
                segments.setdefault(k, []).append((start, stop, new_leaf))
            else:
                full_leaves[k] = new_leaf
    for k, parts in segments.items():
        old = full_leaves[k]
        pieces, cursor = [], 0
        for start, stop, new_leaf in sorted(parts, key=lambda p: p[0]):
            if cursor < start:
                pieces.append(old[cursor:start])
            pieces.append(new_leaf.to(device=old.device, dtype=old.dtype))
            cursor = stop
        if cursor < batch_size:
            pieces.append(old[cursor:])
        full_leaves[k] = torch.cat(pieces)
    return pytree.tree_unflatten(full_leaves, spec)


def map_structure(value: Any, fn) -> Any:
    """Apply ``fn`` to the leaves of plain Python containers (tuple, list, dict, slice)."""
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(map_structure(v, fn) for v in value)
    if kind is dict:
        return {k: map_structure(v, fn) for k, v in value.items()}
    if kind is slice:
        return slice(map_structure(value.start, fn), map_structure(value.stop, fn), map_structure(value.step, fn))
    return fn(value)
