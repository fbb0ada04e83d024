"""Aliases: other names for a wrapper's modules (the ``rename=`` argument of every wrapper).

A key without a dot is a child name, aliased at every depth: with
``{"self_attn": "attn"}``, ``layer.attn`` is ``layer.self_attn`` wherever a
module has a ``self_attn`` child. A dotted key is a module path from the root,
aliased on the wrapper: with ``{"model.layers": "layers"}``, ``model.layers``
is ``model.model.layers``. Aliases change lookups only: envoys, graph nodes,
hooks and saved graphs keep the real torch paths, and the real names keep
working.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Collection, Dict, Iterable, List, Optional, Tuple

import torch

from .errors import RenameError
from .graph import display_path
from .interleaver import module_at

__all__ = ["Aliases"]


class Aliases:
    """A wrapper's alias table, checked against its module tree once, when the wrapper is built.

    Example:
        >>> aliases = Aliases.build({"layer1": "first"}, root=net, attached={}, reserved=())
        >>> aliases.resolve("", net, "first"), aliases.shown("layer1")
        ('layer1', 'model.layer1 (alias model.first)')

    Attributes:
        names: ``{alias: real child names}`` usable at every depth; a module takes the
            first real name it has (a later table's entry comes first).
        paths: ``{alias: real dotted path}`` usable on the wrapper (the root envoy).
    """

    def __init__(self, names: Dict[str, Tuple[str, ...]], paths: Dict[str, str]) -> None:
        self.names = names
        self.paths = paths
        self._reverse_names = {}
        for alias, reals in names.items():
            for real in reals:
                self._reverse_names.setdefault(real, alias)

    @classmethod
    def build(cls, *tables: Any, root: torch.nn.Module, attached: Dict[str, torch.nn.Module],
              reserved: Collection[str]) -> Aliases:
        """Check ``{real path or name: alias}`` tables (later ones override earlier ones) against
        the module tree below ``root`` and normalise them.

        Args:
            *tables: ``rename=`` dicts (or None), in order of precedence, lowest first: a
                later table's entry for the same real path or name replaces an earlier one.
            root: The wrapped module.
            attached: Modules attached beside it (reachable from the root by name).
            reserved: Names an alias may not take (the envoy's and wrapper's own attributes).

        Raises:
            RenameError: A table that is not a dict of str, an alias that is not a single name or
                that a reserved or real name would hide, or a real name or path the model lacks.
        """
        names: Dict[str, Tuple[str, ...]] = {}
        paths: Dict[str, str] = {}
        child_names: Optional[set] = None
        merged: Dict[str, str] = {}
        for table in tables:  # a later table's entry for the same real name replaces the earlier one
            merged.update(_items(table))
        for real, alias in merged.items():
            if real == alias:
                continue
            if alias in reserved:
                raise RenameError(f"rename: alias {alias!r} (for {real!r}) is already an attribute of "
                                  f"every envoy or of the wrapper, so it would never be reached; "
                                  "choose another alias.")
            if "." in real:
                if module_at(root, attached, real) is None:
                    raise RenameError(f"rename: {display_path(real)} does not exist, so alias "
                                      f"{alias!r} cannot name it; {_children_hint(root, real)} "
                                      "Give a real module path (as print(model) shows it).")
                if alias in root._modules or alias in attached:
                    raise RenameError(f"rename: alias {alias!r} for {display_path(real)} is already "
                                      f"the name of {display_path(alias)}; choose another alias.")
                paths[alias] = real
            else:
                if child_names is None:
                    child_names = {n for m in root.modules() for n in m._modules} | set(attached)
                if real not in child_names:
                    raise RenameError(f"rename: no module of this {type(root).__name__} has a child "
                                      f"named {real!r}, so alias {alias!r} cannot name it; give a "
                                      "child name as print(model) shows it (e.g. 'self_attn'), or "
                                      "a dotted path from the root.")
                names[alias] = (real,) + tuple(r for r in names.get(alias, ()) if r != real)
        return cls(names, paths)

    def resolve(self, path: str, module: torch.nn.Module, name: str) -> Optional[str]:
        """The real path, relative to the envoy at ``path`` (wrapping ``module``), that
        ``name`` is an alias of there; None when it is not one."""
        if not path and name in self.paths:
            return self.paths[name]
        for real in self.names.get(name, ()):
            if real in module._modules:
                return real
        return None

    def at(self, path: str, module: torch.nn.Module) -> Dict[str, str]:
        """``{alias: real relative path}`` of every alias usable on the envoy at ``path``."""
        found = dict(self.paths) if not path else {}
        for alias in self.names:
            real = self.resolve(path, module, alias)
            if real is not None and alias not in module._modules:
                found.setdefault(alias, real)
        return found

    def shown(self, path: str) -> str:
        """``path`` as messages show it: the real path, and its alias form when it has one
        (``model.model.layers[0].self_attn (alias model.layers[0].attn)``)."""
        real = display_path(path)
        if not self.names and not self.paths:
            return real
        parts = path.split(".") if path else []
        best = max((p for p in self.paths.items() if path == p[1] or path.startswith(p[1] + ".")),
                   key=lambda p: len(p[1]), default=None)
        if best is not None:
            parts = [best[0]] + parts[best[1].count(".") + 1:]
        aliased = ".".join(self._reverse_names.get(p, p) if k or best is None else p
                           for k, p in enumerate(parts))
        return real if aliased == path else f"{real} (alias {display_path(aliased)})"

    def __bool__(self) -> bool:
        return bool(self.names or self.paths)


#: The table of a wrapper built without ``rename=``.
NO_ALIASES = Aliases({}, {})


def _items(table: Any) -> Iterable[Tuple[str, str]]:
    if table is None:
        return ()
    if not isinstance(table, Mapping):
        raise RenameError(f"rename= takes a dict {{real path or child name: alias}}, e.g. "
                          f"{{'model.layers': 'layers', 'self_attn': 'attn'}}; got {type(table).__name__}.")
    items: List[Tuple[str, str]] = list(table.items())
    for real, alias in items:
        if not isinstance(real, str) or not isinstance(alias, str):
            raise RenameError(f"rename: entry {real!r}: {alias!r} must map a str (a module path or child "
                              "name) to a str (the alias).")
        if not alias.isidentifier():
            raise RenameError(f"rename: alias {alias!r} (for {real!r}) must be one name, a Python "
                              "identifier: an alias of a dotted path is reached from the wrapper "
                              "(model.<alias>), an alias of a child name from any module.")
        if not real or any(not p for p in real.split(".")):
            raise RenameError(f"rename: {real!r} (alias {alias!r}) is not a module path or child name.")
    return items


def _children_hint(root: torch.nn.Module, path: str) -> str:
    """Where the missing path stops existing, and what is there instead."""
    parts = path.split(".")
    module, done = root, []
    for part in parts:
        child = module._modules.get(part)
        if child is None:
            where = display_path(".".join(done))
            return f"{where} has no child {part!r} (its children are: {', '.join(module._modules) or 'none'})."
        module, done = child, done + [part]
    return ""
