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

``.. bad-input-catalogue:: ../tests/reliability/bad_inputs.py``
    The bad-input catalogue: a table of every case, then one entry per case
    with its code and the message it raises, each case run at build time on a
    fresh model. A case that does not raise its exception, or whose message
    does not match, fails the build. With ``:cases: id, id``, only those
    cases' code and messages, without headings.

It also resolves a re-exported name where its defining module documents it:
a reference to ``nnsight_transformers.LanguageModel`` (or one of its members)
links to ``nnsight_transformers.model.LanguageModel`` when the package lists
the name in ``__all__``. Only modules already imported are consulted.

It also keeps napoleon away from the one-line ``#:`` docstrings of module data
and attributes: napoleon reads ``text: more text`` there as ``type: description``
and would print "Type: text". Those docstrings are plain reStructuredText.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import os
import re
import runpy
import sys
import textwrap
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


_CATALOGUES: Dict[str, Any] = {}
_MESSAGES: Dict[str, str] = {}


class BadInputCatalogue(SphinxDirective):
    """Render the bad-input catalogue with the messages its cases raise now."""

    required_arguments = 1
    has_content = False
    option_spec = {"cases": directives.unchanged}

    def run(self) -> List[nodes.Node]:
        rel, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(rel)
        catalogue = _load_catalogue(path)
        wanted = [c.strip() for c in self.options.get("cases", "").split(",") if c.strip()]
        cases = catalogue.CASES
        if wanted:
            known = {c.id: c for c in cases}
            missing = [w for w in wanted if w not in known]
            if missing:
                raise self.error(f"bad-input-catalogue: no case {', '.join(missing)} in {rel}")
            cases = [known[w] for w in wanted]
        root = os.path.dirname(os.path.abspath(self.env.srcdir))  # the repository, cut from paths
        lines: List[str] = []
        if not wanted:
            lines += _summary(cases)
        for adapter in dict.fromkeys(c.adapter for c in cases):
            if not wanted:
                lines += [adapter, "~" * len(adapter), ""]
            for case in (c for c in cases if c.adapter == adapter):
                try:
                    message = _message(catalogue, case, root)
                except AssertionError as error:
                    raise self.error(f"bad-input-catalogue: {error}")
                lines += _entry(case, message, headed=not wanted)
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=rel), container)
        return container.children


def _load_catalogue(path: str) -> Any:
    module = _CATALOGUES.get(path)
    if module is None:
        spec = importlib.util.spec_from_file_location("bad_input_catalogue", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        _CATALOGUES[path] = module
    return module


def _message(catalogue: Any, case: Any, root: str) -> str:
    """Run ``case`` on a fresh model; return its message with the repository path removed."""
    if case.id not in _MESSAGES:
        model = catalogue.BUILDERS[case.adapter]()
        try:
            case.run(model)
        except case.error as error:
            message = str(error)
        else:
            raise AssertionError(f"case {case.id} raised nothing; expected {case.error.__name__}")
        assert re.search(case.match, message), f"case {case.id}: {message!r} does not match {case.match!r}"
        _MESSAGES[case.id] = message.replace(root + os.sep, "")
    return _MESSAGES[case.id]


def _summary(cases: List[Any]) -> List[str]:
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 14 56 30", "",
             "   * - Adapter", "     - Mistake", "     - Raises"]
    for case in cases:
        lines += [f"   * - ``{case.adapter}``", f"     - :ref:`{case.mistake} <bad-input-{case.id}>`",
                  f"     - :class:`~nnsight_core.errors.{case.error.__name__}`"]
    return lines + [""]


def _entry(case: Any, message: str, headed: bool) -> List[str]:
    source = inspect.getsource(case.run).splitlines()
    start = next(i for i, line in enumerate(source) if line.lstrip().startswith("def "))
    body = textwrap.dedent("\n".join(source[start + 1:])).strip("\n").splitlines()
    lines = []
    if headed:
        lines += [f".. _bad-input-{case.id}:", "", f".. rubric:: {case.mistake}", "",
                  f"Raises :class:`~nnsight_core.errors.{case.error.__name__}` (case ``{case.id}``):", ""]
    lines += [".. code-block:: python", ""] + [f"   {line}" if line else "" for line in body] + [""]
    lines += [".. code-block:: text", "", f"   {case.error.__name__}: {message}", ""]
    return lines


def _resolve_reexport(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """``missing-reference`` handler: retry ``package.Name[.member]`` at ``Name``'s defining module."""
    if node.get("refdomain") != "py":
        return None
    parts = node.get("reftarget", "").lstrip("~.").split(".")
    for i in range(len(parts) - 1, 0, -1):
        package = sys.modules.get(".".join(parts[:i]))
        if package is None:
            continue
        name = parts[i]
        obj = getattr(package, name, None)
        home = getattr(obj, "__module__", None)
        if name not in getattr(package, "__all__", ()) or home in (None, package.__name__):
            return None
        target = ".".join([home, getattr(obj, "__qualname__", name), *parts[i + 1:]])
        retry = node.deepcopy()
        retry["reftarget"] = target
        return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                                 target, retry, contnode)
    return None


def setup(app: Any) -> Dict[str, Any]:
    # Napoleon processes docstrings at the default priority, 500: one handler
    # runs before it and one after it.
    app.connect("autodoc-process-docstring", _keep_raw, priority=400)
    app.connect("autodoc-process-docstring", _restore_raw, priority=600)
    app.add_directive("ops-table", OpsTable)
    app.add_directive("example-output", ExampleOutput)
    app.add_directive("reexports", Reexports)
    app.connect("missing-reference", _resolve_reexport)
    app.add_directive("bad-input-catalogue", BadInputCatalogue)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
