"""Command line: ``python -m nnsight_core plugins`` lists the loaded plugins.

For each plugin registered with the process-wide plugin manager it prints the
entry-point name, the distribution that provides it and its version, the
module, and the hooks it implements (with pluggy's options such as
``trylast`` or ``wrapper``), followed by the plugins that
``NNSIGHT_BLOCK_PLUGINS`` blocks and whether ``NNSIGHT_TRACE_HOOKS`` is on.

Example:
    .. code-block:: console

       $ python -m nnsight_core plugins
       2 plugins in the entry-point group 'nnsight_core':

       torch
         distribution  nnsight-torch 0.1.0
         ...
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from typing import Any, List, NamedTuple, Optional, Sequence

import pluggy

from . import hookspecs
from .errors import PluginLoadError
from .plugins import BLOCK_ENV, TRACE_ENV, blocked_plugins, get_plugin_manager

__all__ = ["PluginInfo", "plugin_infos", "format_plugins", "main"]

# pluggy's per-implementation options worth showing, in this order.
_IMPL_OPTIONS = ("wrapper", "hookwrapper", "tryfirst", "trylast", "optionalhook")


class PluginInfo(NamedTuple):
    """One registered plugin, as ``python -m nnsight_core plugins`` lists it.

    Attributes:
        name: Its name in the plugin manager (the entry-point name, for an entry point).
        distribution: The distribution that provides it, or None if registered at run time.
        version: That distribution's version, or None.
        module: The module (or class) that holds its hook implementations.
        hooks: ``hook`` or ``hook (option, ...)`` per implemented hook, in lifecycle order.
    """

    name: str
    distribution: Optional[str]
    version: Optional[str]
    module: str
    hooks: List[str]


def plugin_infos(manager: Optional[pluggy.PluginManager] = None) -> List[PluginInfo]:
    """Describe every plugin registered with ``manager`` (default the process-wide one).

    Example:
        >>> infos = plugin_infos()
        >>> next(info.module for info in infos if info.name == "torch")
        'nnsight_torch.plugin'
    """
    manager = manager or get_plugin_manager()
    dists = {id(plugin): dist for plugin, dist in manager.list_plugin_distinfo()}
    infos = []
    for name, plugin in manager.list_name_plugin():
        if plugin is None:  # a blocked name
            continue
        dist = dists.get(id(plugin))
        infos.append(PluginInfo(
            name=name,
            distribution=None if dist is None else dist.project_name,
            version=None if dist is None else dist.version,
            module=getattr(plugin, "__name__", type(plugin).__qualname__),
            hooks=_hooks_of(manager, plugin),
        ))
    return infos


def _hooks_of(manager: pluggy.PluginManager, plugin: Any) -> List[str]:
    order = {name: i for i, name in enumerate(_spec_names())}
    hooks = []
    for caller in manager.get_hookcallers(plugin) or []:
        impl = next(i for i in caller.get_hookimpls() if i.plugin is plugin)
        options = [option for option in _IMPL_OPTIONS if getattr(impl, option, False)]
        hooks.append((order.get(caller.name, len(order)), caller.name,
                      f"{caller.name} ({', '.join(options)})" if options else caller.name))
    return [text for _, _, text in sorted(hooks)]


def _spec_names() -> List[str]:
    """The hookspecs' names in the order :mod:`nnsight_core.hookspecs` defines them."""
    marker = f"{hookspecs.PROJECT}_spec"
    return [name for name, value in vars(hookspecs).items() if hasattr(value, marker)]


def format_plugins(infos: Sequence[PluginInfo]) -> str:
    """The text ``python -m nnsight_core plugins`` prints for ``infos``."""
    count = f"{len(infos)} plugin{'' if len(infos) == 1 else 's'}"
    lines = [f"{count} in the entry-point group {hookspecs.PROJECT!r}:"]
    for info in infos:
        if info.distribution is None:
            origin = "(registered at run time, not by entry point)"
        else:
            origin = f"{info.distribution} {info.version}"
        lines += ["", info.name,
                  f"  distribution  {origin}",
                  f"  module        {info.module}",
                  f"  hooks         {', '.join(info.hooks) or '(none)'}"]
    lines += ["", f"blocked by {BLOCK_ENV}: {_blocked_summary()}",
              f"hook tracing ({TRACE_ENV}): {'on' if _tracing_on() else 'off'}"]
    return "\n".join(lines)


def _blocked_summary() -> str:
    names = blocked_plugins()
    if not names:
        return "none"
    known = {ep.name for ep in metadata.entry_points(group=hookspecs.PROJECT)}
    return ", ".join(name if name in known else f"{name} (no installed entry point has this name)"
                     for name in names)


def _tracing_on() -> bool:
    return os.environ.get(TRACE_ENV, "") not in ("", "0")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    The status is 0 on success, 1 when a plugin fails to load (the message
    names it), 2 for a usage error.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as report:
        ...     status = main(["plugins"])       # as `python -m nnsight_core plugins`
        >>> status, "nnsight_torch.plugin" in report.getvalue()
        (0, True)
    """
    parser = argparse.ArgumentParser(prog="python -m nnsight_core",
                                     description="Tools for nnsight_core and its adapters.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("plugins", help="list the loaded plugins, their distributions, versions "
                                        "and hooks", description="List the loaded plugins.")
    parser.parse_args(argv)
    try:
        infos = plugin_infos()
    except PluginLoadError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    print(format_plugins(infos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
