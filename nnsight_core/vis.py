"""Pictures of an intervention graph: Graphviz DOT source, rendered to SVG, PNG or PDF.

:func:`to_dot` is pure Python and always works. :func:`render` draws the DOT
source with the optional ``graphviz`` package (``pip install
"nnsight-core[vis]"``) and the Graphviz ``dot`` program, and raises
:class:`~nnsight_core.errors.GraphvizNotFoundError` when either is missing.
Both are reached through the graph: ``tracer.graph.to_dot()`` and
``tracer.graph.vis(path)``.

Example:
    >>> with model.trace(x) as tracer:
    ...     hidden = model.layer1.output.save()
    >>> print(tracer.graph.to_dot())
    digraph intervention_graph {
      rankdir=TB;
    ...
        n0 [label="%0 output\\nmodel.layer1.output (call 0)", fillcolor="#dcfce7"];
      }
    }
    <BLANKLINE>
    >>> tracer.graph.vis("graph.svg")
    PosixPath('graph.svg')

In the picture each node is a box labelled ``%index op[target]`` with a second
line naming the module value (for ``output``/``inputs`` nodes and
assignments) or its constant arguments; module values are filled blue, saved
values green. An edge runs from each node to every node that takes it as an
argument, labelled with the argument's position (or keyword). Nodes of one
invoke are grouped in a box titled with the invoke's batch rows.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

from .errors import GraphvizNotFoundError, ImageFormatError
from .graph import MODULE_VALUE_OPS, Graph, Node, display_path, format_value, nodes_in

__all__ = ["to_dot", "render", "FORMATS"]

#: Image formats :func:`render` produces.
FORMATS = ("svg", "png", "pdf")

_MODULE_FILL = "#dbeafe"
_SAVED_FILL = "#dcfce7"
_SET_ATTRS = {"set_output": "output", "set_inputs": "inputs", "set_input": "input", "skip": "skip()"}


def to_dot(graph: Graph) -> str:
    """The graph as Graphviz DOT source; deterministic, so it can be compared and committed.

    Args:
        graph: A recorded graph, during or after its trace.

    Returns:
        DOT source of a ``digraph`` with one node ``n<index>`` per graph node.

    Example:
        >>> with model.trace(x) as tracer:
        ...     hidden = model.layer1.output.save()
        >>> dot = to_dot(tracer.graph)
        >>> dot.splitlines()[0]
        'digraph intervention_graph {'
    """
    lines = ["digraph intervention_graph {",
             "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    by_invoke: Dict[Optional[int], List[Node]] = {}
    for node in graph.nodes:
        by_invoke.setdefault(node.invoke, []).append(node)
    for invoke, nodes in by_invoke.items():
        if invoke is None:
            lines.extend(f"  {_dot_node(node)}" for node in nodes)
            continue
        lines.append(f"  subgraph cluster_invoke_{invoke} {{")
        lines.append(f"    label={_quote(_invoke_title(graph, invoke))};")
        lines.append('    style=dashed; fontname="Helvetica"; fontsize=10;')
        lines.extend(f"    {_dot_node(node)}" for node in nodes)
        lines.append("  }")
    for node in graph.nodes:
        for dep, positions in _arg_positions(node).items():
            lines.append(f"  n{dep} -> n{node.index} [label={_quote(','.join(positions))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(graph: Graph, path: Union[str, pathlib.Path, None] = None,
           format: str = "svg") -> Union[bytes, pathlib.Path]:
    """Draw the graph with Graphviz.

    Args:
        graph: A recorded graph, during or after its trace.
        path: File to write the image to; ``None`` returns the image instead.
        format: One of :data:`FORMATS`.

    Returns:
        The image as bytes when ``path`` is ``None``, else ``path`` as a ``Path``.

    Raises:
        ImageFormatError: ``format`` is not one of :data:`FORMATS`.
        GraphvizNotFoundError: The ``graphviz`` package or the ``dot`` program is not installed.

    Example:
        >>> with model.trace(x) as tracer:
        ...     hidden = model.layer1.output.save()
        >>> svg = render(tracer.graph)
        >>> svg.startswith(b"<?xml")
        True
        >>> render(tracer.graph, "graph.png", "png")
        PosixPath('graph.png')
    """
    if format not in FORMATS:
        raise ImageFormatError(f"Graph.vis() renders the formats {', '.join(FORMATS)}, not "
                               f"{format!r}: pass one of them, or give to_dot()'s source to "
                               "Graphviz yourself for other formats.")
    source = _graphviz_source(to_dot(graph))
    image = source.pipe(format=format)
    if path is None:
        return image
    path = pathlib.Path(path)
    path.write_bytes(image)
    return path


def _graphviz_source(dot: str) -> Any:
    """A ``graphviz.Source`` for ``dot``, once both the package and the program are found."""
    try:
        import graphviz  # noqa: PLC0415 - optional dependency, needed only to draw
    except ImportError as error:
        raise GraphvizNotFoundError(
            "Graph.vis() draws with the `graphviz` Python package, which is not installed: "
            "`pip install graphviz` (or the extra `nnsight-core[vis]`), or use Graph.to_dot() "
            "for the DOT source.") from error
    if shutil.which("dot") is None:
        raise GraphvizNotFoundError(
            "Graph.vis() draws with the Graphviz program `dot`, which is not on PATH: install "
            "Graphviz (`apt-get install graphviz`, `brew install graphviz` or `conda install "
            "graphviz`), or use Graph.to_dot() for the DOT source.")
    return graphviz.Source(dot)


def _dot_node(node: Node) -> str:
    head = f"%{node.index} {node.op}"
    if node.op in MODULE_VALUE_OPS:
        path, call = node.target
        attr = _SET_ATTRS.get(node.op, node.op)
        detail = f"{display_path(path)}.{attr} (call {call})"
    else:
        target = node.target
        if target is not None:
            head += f"[{getattr(target, '__name__', target)}]"
        detail = ", ".join([format_value(a) for a in node.args if type(a) is not Node]
                           + [f"{k}={format_value(v)}" for k, v in node.kwargs.items() if type(v) is not Node])
    label = head + ("\n" + detail if detail else "")
    fill = _SAVED_FILL if node.saved else _MODULE_FILL if node.op in MODULE_VALUE_OPS else "white"
    return f"n{node.index} [label={_quote(label)}, fillcolor={_quote(fill)}];"


def _invoke_title(graph: Graph, invoke: int) -> str:
    if invoke < len(graph.rows):
        start, stop = graph.rows[invoke]
        return f"invoke {invoke} (rows {start}-{stop - 1})"
    return f"invoke {invoke}"


def _arg_positions(node: Node) -> Dict[int, List[str]]:
    """For each node argument of ``node``: its index, to the positions (or keywords) it fills."""
    positions: Dict[int, List[str]] = {}
    for position, value in list(enumerate(node.args)) + list(node.kwargs.items()):
        for dep in nodes_in(value):
            names = positions.setdefault(dep.index, [])
            if str(position) not in names:
                names.append(str(position))
    return positions


def _quote(text: str) -> str:
    """A DOT double-quoted string; ``\\n`` in ``text`` becomes a centred line break."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


Graph.extensions.update(to_dot=to_dot, vis=render)
