"""Batch-row helpers over nested module values (tensors inside tuples, dicts, ModelOutputs).

A tensor is *batch-first* when its first dimension equals the batch size of the
forward pass. Only batch-first tensors are narrowed to an invoke's rows or
written back; everything else (broadcast masks, position tensors of batch 1,
caches, Python values) is shared by all invokes and passed through untouched.
Nested structures are walked with torch's pytree, which transformers also
registers its ``ModelOutput`` classes with.
"""

from __future__ import annotations

import copy
from collections.abc import MutableMapping
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch.utils import _pytree as pytree

from .errors import BatchError

Rows = Tuple[int, int]
#: Dimension-0 size -> for each invoke, the ``(start, stop)`` row ranges it owns in a tensor of that size.
RowTable = Dict[int, List[List[Rows]]]


def tree_map(fn: Callable[[Any], Any], value: Any) -> Any:
    """``pytree.tree_map``, also for mappings whose registered unflatten cannot rebuild them.

    diffusers registers its output classes with a flatten that drops ``None``
    fields and an unflatten that then misses them, and pytree treats mappings
    it does not know (transformers' ``BatchEncoding``) as single leaves; such
    a mapping is copied and its values mapped one by one instead.
    """
    try:
        return pytree.tree_map(lambda leaf: _map_mapping(fn, leaf) if isinstance(leaf, MutableMapping)
                               else fn(leaf), value)
    except TypeError:
        if not isinstance(value, MutableMapping):
            raise
        return _map_mapping(fn, value)


def _map_mapping(fn: Callable[[Any], Any], value: MutableMapping) -> Any:
    """A copy of a mapping pytree does not know (or cannot rebuild), with ``fn`` mapped over its values."""
    result = copy.copy(value)
    for key, item in value.items():
        result[key] = tree_map(fn, item)
    return result


def row_table(rows: Sequence[Rows], batch_size: int, layouts: Dict[int, Tuple[int, int]]) -> RowTable:
    """Which rows each invoke owns, for every dimension-0 size that holds the batch.

    A tensor of ``batch_size`` rows holds the invokes' rows in order. ``layouts``
    adds other sizes an execution produces: ``size -> (blocks, repeats)`` means
    the tensor holds ``blocks`` consecutive copies of the batch, each batch row
    repeated ``repeats`` times in a row (classifier-free guidance doubles the
    batch as two blocks; ``num_images_per_prompt=n`` repeats each row ``n`` times).
    """
    table: RowTable = {batch_size: [[r] for r in rows]}
    for size, (blocks, repeats) in layouts.items():
        if size != blocks * batch_size * repeats or blocks < 1 or repeats < 1:
            raise BatchError(f"batch layout {size}: ({blocks}, {repeats}) is inconsistent with a batch "
                             f"of {batch_size} rows: a layout's size must be blocks * {batch_size} * repeats.")
        span = batch_size * repeats
        table[size] = [[(b * span + start * repeats, b * span + stop * repeats) for b in range(blocks)]
                       for start, stop in rows]
    return table


def owned(ranges: List[Rows]) -> int:
    """How many rows the ranges cover."""
    return sum(stop - start for start, stop in ranges)


def _narrow_leaf(leaf: Any, table: RowTable, invoke: int) -> Any:
    if not isinstance(leaf, torch.Tensor) or leaf.dim() == 0:
        return leaf
    ranges = table.get(leaf.shape[0])
    if ranges is None:
        return leaf
    mine = ranges[invoke]
    if len(mine) == 1:
        start, stop = mine[0]
        return leaf[start:stop]
    return torch.cat([leaf[start:stop] for start, stop in mine])


def narrow(value: Any, table: RowTable, invoke: int) -> Any:
    """Return ``value`` with every batch tensor cut to ``invoke``'s rows.

    One contiguous range gives a view; rows spread over several blocks
    (classifier-free guidance) are concatenated in block order into a new tensor.
    """
    if isinstance(value, torch.Tensor):
        return _narrow_leaf(value, table, invoke)
    return tree_map(lambda leaf: _narrow_leaf(leaf, table, invoke), value)


def clone(value: Any) -> Any:
    """Copy every tensor in ``value`` so in-place edits cannot reach parameters or autograd's saved tensors."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    kind = type(value)
    if kind is tuple or kind is list:  # the usual module outputs, without a walk through torch's pytree
        copied = []
        for item in value:
            if isinstance(item, torch.Tensor):
                item = item.clone()
            elif item is not None and type(item) not in _SCALARS:
                item = clone(item)
            copied.append(item)
        return copied if kind is list else tuple(copied)
    return tree_map(lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) else leaf, value)


_SCALARS = frozenset({int, float, bool, str, bytes, complex})


def write_back(full: Any, replaced: Dict[int, Any], narrowed: Dict[int, Any], table: RowTable,
               where: str) -> Any:
    """Write each invoke's replacement into its own rows of ``full`` and return the new value.

    Args:
        full: The value the module produced (or received) for the whole batch.
        replaced: Invoke index to that invoke's new value (same structure as its rows).
        narrowed: Invoke index to the rows originally handed to that invoke; leaves
            that are still these very objects are left as they are.
        table: The rows each invoke owns, per dimension-0 size (:func:`row_table`).
        where: Human-readable name of the module value, for error messages.
    """
    full_leaves, spec = pytree.tree_flatten(full)
    invokes = len(next(iter(table.values())))
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
        for k, (old, new_leaf) in enumerate(zip(full_leaves, new_leaves)):
            if new_leaf is old_rows[k]:
                continue
            ranges = table.get(old.shape[0]) if isinstance(old, torch.Tensor) and old.dim() > 0 else None
            if ranges is None:
                if invokes > 1 and not _same(new_leaf, old):
                    shape = tuple(old.shape) if isinstance(old, torch.Tensor) else type(old).__name__
                    raise BatchError(
                        f"{where}: invoke {invoke} changed a value that all {invokes} invokes share "
                        f"({shape}: its dimension 0 is not the batch), so the edit would reach every "
                        "invoke's result. Edit it in a trace with a single invoke, or edit a value "
                        "with one row per batch item instead."
                    )
                full_leaves[k] = new_leaf
                continue
            mine = ranges[invoke]
            count = owned(mine)
            if not isinstance(new_leaf, torch.Tensor) or new_leaf.dim() == 0 or new_leaf.shape[0] != count:
                got = tuple(new_leaf.shape) if isinstance(new_leaf, torch.Tensor) else type(new_leaf).__name__
                raise BatchError(
                    f"{where}: invoke {invoke} owns {count} row(s) of the batch but assigned a value "
                    f"of shape {got}; give it shape ({count}, {', '.join(str(s) for s in old.shape[1:])})."
                )
            offset = 0
            for start, stop in mine:
                segments.setdefault(k, []).append((start, stop, new_leaf[offset:offset + stop - start]))
                offset += stop - start
    for k, parts in segments.items():
        old = full_leaves[k]
        pieces, cursor = [], 0
        for start, stop, piece in sorted(parts, key=lambda p: p[0]):
            if cursor < start:
                pieces.append(old[cursor:start])
            pieces.append(piece.to(device=old.device, dtype=old.dtype))
            cursor = stop
        if cursor < old.shape[0]:
            pieces.append(old[cursor:])
        full_leaves[k] = torch.cat(pieces)
    return pytree.tree_unflatten(full_leaves, spec)


def _same(new: Any, old: Any) -> bool:
    """Whether a shared (not batch-first) leaf still holds its old value (e.g. an unedited copy)."""
    if new is old:
        return True
    if isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor):
        return new.shape == old.shape and new.dtype == old.dtype and bool(torch.equal(new, old.to(new.device)))
    try:
        return bool(new == old)
    except Exception:  # noqa: BLE001 - values that cannot be compared count as changed
        return False


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
