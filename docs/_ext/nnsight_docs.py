"""Sphinx directives that build parts of the docs from the code, so they cannot drift.

``.. ops-table::``
    The graph vocabulary, :data:`nnsight_core.graph.OPS`, as a table: one row
    per operation, in the dict's order, with its description verbatim.

``.. example-output:: examples/name.py``
    Runs a file of ``docs/examples/`` at build time and shows what it printed
    as a literal block. An example that raises fails the build. Absolute paths
    to the examples folder are shortened to the file name.

``.. reexports:: package``
    A list of the names in ``package.__all__``, each linked to where autodoc
    documents it (its defining module).

It also keeps napoleon away from the one-line ``#:`` docstrings of module data
and attributes: napoleon reads ``text: more text`` there as ``type: description``
and would print "Type: text". Those docstrings are plain reStructuredText.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import runpy
import sys
from typing import Any, Dict, List

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

_OUTPUTS: Dict[str, str] = {}


class OpsTable(SphinxDirective):
    """Render ``nnsight_core.graph.OPS`` (and which ops run inside a module hook)."""

    has_content = False

    def run(self) -> List[nodes.Node]:
        from nnsight_core.graph import MODULE_VALUE_OPS, OPS

        table = nodes.table(classes=["ops-table"])
        group = nodes.tgroup(cols=3)
        table += group
        for width in (14, 12, 74):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += _row([nodes.Text("op"), nodes.Text("runs in a module hook"), nodes.Text("meaning")])
        body = nodes.tbody()
        group += body
        for op, description in OPS.items():
            body += _row([
                nodes.literal(op, op),
                nodes.Text("yes" if op in MODULE_VALUE_OPS else "no"),
                nodes.Text(description),
            ])
        return [table]


def _row(cells: List[nodes.Node]) -> nodes.row:
    row = nodes.row()
    for content in cells:
        entry = nodes.entry()
        entry += nodes.paragraph("", "", content)
        row += entry
    return row


class ExampleOutput(SphinxDirective):
    """Run one example file and show its standard output."""

    required_arguments = 1
    has_content = False
    option_spec = {"caption": directives.unchanged}

    def run(self) -> List[nodes.Node]:
        rel, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(rel)
        if not os.path.isfile(path):
            raise self.error(f"example-output: no such file {path}")
        text = _OUTPUTS.get(path)
        if text is None:
            try:
                text = _run_example(path)
            except BaseException as error:  # noqa: BLE001 - any failure must fail the build
                raise self.error(f"example-output: {rel} failed: {type(error).__name__}: {error}")
            _OUTPUTS[path] = text
        block = nodes.literal_block(text, text, language="text")
        caption = self.options.get("caption")
        if not caption:
            return [block]
        container = nodes.container("", literal_block=True, classes=["literal-block-wrapper"])
        container += nodes.caption(caption, caption)
        container += block
        return [container]


def _run_example(path: str) -> str:
    buffer = io.StringIO()
    folder = os.path.dirname(path)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [path]
    sys.path.insert(0, folder)
    try:
        with contextlib.redirect_stdout(buffer):
            runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return buffer.getvalue().replace(folder + os.sep, "").rstrip("\n") or "(no output)"


class Reexports(SphinxDirective):
    """List a package's ``__all__`` with links to each name's documentation."""

    required_arguments = 1
    has_content = False

    def run(self) -> List[nodes.Node]:
        import importlib

        package = importlib.import_module(self.arguments[0])
        lines = []
        for name in package.__all__:
            obj: Any = getattr(package, name)
            if isinstance(obj, type) or inspect.isfunction(obj):
                role = "class" if isinstance(obj, type) else "func"
                lines.append(f"* :py:{role}:`{name} <{obj.__module__}.{obj.__qualname__}>`")
            else:
                # Data (OPS) and pluggy markers (hookimpl): name the module that defines them.
                lines.append(f"* ``{name}`` (from :py:mod:`{_home_module(name, package)}`)")
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        return container.children


def _home_module(name: str, package: Any) -> str:
    """The submodule of ``package`` whose ``__all__`` lists ``name``."""
    for attr in sorted(vars(package)):
        sub = getattr(package, attr)
        if type(sub).__name__ == "module" and sub.__name__.startswith(package.__name__ + "."):
            if name in getattr(sub, "__all__", ()):
                return sub.__name__
    return package.__name__


_RAW_DOCSTRINGS: Dict[str, List[str]] = {}


def _keep_raw(app: Any, what: str, name: str, obj: Any, options: Any, lines: List[str]) -> None:
    if what in ("attribute", "data"):
        _RAW_DOCSTRINGS[name] = list(lines)


def _restore_raw(app: Any, what: str, name: str, obj: Any, options: Any, lines: List[str]) -> None:
    raw = _RAW_DOCSTRINGS.pop(name, None)
    if raw is not None:
        lines[:] = raw


def setup(app: Any) -> Dict[str, Any]:
    # Napoleon processes docstrings at the default priority, 500: one handler
    # runs before it and one after it.
    app.connect("autodoc-process-docstring", _keep_raw, priority=400)
    app.connect("autodoc-process-docstring", _restore_raw, priority=600)
    app.add_directive("ops-table", OpsTable)
    app.add_directive("example-output", ExampleOutput)
    app.add_directive("reexports", Reexports)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
