"""Graph pictures: Graph.to_dot() (pure Python) and Graph.vis() (Graphviz, optional)."""

import html
import importlib.util
import pathlib
import re
import runpy
import shutil
import sys
import types
import xml.etree.ElementTree as ET
from collections import OrderedDict

import pytest
import torch

from nnsight_core import GraphvizNotFoundError, ImageFormatError
from nnsight_core.testing import hook_count
from nnsight_core.vis import _quote
from nnsight_torch import NNsight

ROOT = pathlib.Path(__file__).parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "vis_graph.py"
PICTURE = ROOT / "docs" / "_static" / "tracing_graph.svg"
HAS_GRAPHVIZ = importlib.util.find_spec("graphviz") is not None and shutil.which("dot") is not None
needs_graphviz = pytest.mark.skipif(not HAS_GRAPHVIZ, reason="needs the graphviz package and the dot program")
SVG = "{http://www.w3.org/2000/svg}"


def make_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(OrderedDict([
        ("layer1", torch.nn.Linear(5, 4)),
        ("layer2", torch.nn.Linear(4, 4)),
    ]))
    return NNsight(net)


def traced_graph():
    """Two invokes; operator, function with a list argument, keyword argument and in-place edit."""
    model = make_model()
    with model.trace() as tracer:
        with tracer.invoke(torch.rand(1, 5)):
            a = model.layer1.output                  # %0
            b = a * 2                                # %1 operator[mul](%0, 2)
            c = torch.cat([a, b], dim=1)             # %2 call_function[cat]([%0, %1], dim=1)
            c.save()                                 # %2 marked saved
        with tracer.invoke(torch.rand(2, 5)):
            d = model.layer2.output                  # %3
            torch.mul(d, other=d).save()             # %4 call_function[mul](%3, other=%3), saved
            model.layer2.output[:, 0] = 0            # %5 setitem
    return tracer.graph


def parse_dot(dot):
    """({node name: (label, fill)}, {(src, dst): label}, {cluster: (label, [node names])})."""
    nodes = {m[0]: (m[1], m[2]) for m in re.findall(
        r'^\s*(n\d+) \[label="((?:[^"\\]|\\.)*)", fillcolor="([^"]*)"\];$', dot, re.MULTILINE)}
    edges = {(m[0], m[1]): m[2] for m in re.findall(r'^\s*(n\d+) -> (n\d+) \[label="([^"]*)"\];$',
                                                   dot, re.MULTILINE)}
    clusters = {}
    for name, body in re.findall(r"subgraph (cluster_\w+) \{(.*?)\n  \}", dot, re.DOTALL):
        label = re.search(r'label="([^"]*)";', body).group(1)
        clusters[name] = (label, re.findall(r"^\s*(n\d+) \[", body, re.MULTILINE))
    return nodes, edges, clusters


def test_to_dot_draws_every_node_with_its_op():
    graph = traced_graph()
    nodes, _, _ = parse_dot(graph.to_dot())
    assert sorted(nodes) == sorted(f"n{i}" for i in range(len(graph.nodes)))
    expected_heads = ["%0 output", "%1 operator[mul]", "%2 call_function[cat]",
                      "%3 output", "%4 call_function[mul]", "%5 setitem"]
    heads = [nodes[f"n{i}"][0].split("\\n")[0] for i in range(len(graph.nodes))]
    assert heads == expected_heads
    assert heads == [f"%{n.index} {n.op}" + (f"[{getattr(n.target, '__name__', n.target)}]"
                                             if n.op in ("operator", "call_function") else "")
                     for n in graph.nodes]
    assert nodes["n0"][0] == "%0 output\\nmodel.layer1.output (call 0)"
    assert nodes["n2"][0] == "%2 call_function[cat]\\n[%0, %1], dim=1"
    assert nodes["n5"][0] == "%5 setitem\\n(:, 0), 0"
    # Module values blue, saved values green, the rest white.
    assert [nodes[f"n{i}"][1] for i in (0, 3, 2, 4, 1)] == ["#dbeafe", "#dbeafe", "#dcfce7", "#dcfce7", "white"]


def test_to_dot_edges_follow_the_arguments():
    _, edges, _ = parse_dot(traced_graph().to_dot())
    assert edges == {
        ("n0", "n1"): "0",            # a * 2
        ("n0", "n2"): "0",            # torch.cat([a, b], ...): both in argument 0
        ("n1", "n2"): "0",
        ("n3", "n4"): "0,other",      # torch.mul(d, other=d): one edge, both positions
        ("n3", "n5"): "0",            # setitem edits layer2's output
    }


def test_to_dot_groups_nodes_by_invoke_with_their_rows():
    _, _, clusters = parse_dot(traced_graph().to_dot())
    assert clusters == {
        "cluster_invoke_0": ("invoke 0 (rows 0-0)", ["n0", "n1", "n2"]),
        "cluster_invoke_1": ("invoke 1 (rows 1-2)", ["n3", "n4", "n5"]),
    }


def test_to_dot_is_deterministic_and_survives_the_trace():
    graph = traced_graph()
    assert graph.to_dot() == graph.to_dot()
    assert graph.to_dot().startswith("digraph intervention_graph {\n")


def test_dot_strings_escape_quotes_backslashes_and_newlines():
    assert _quote('say "hi"\\now\nnext') == '"say \\"hi\\"\\\\now\\nnext"'


def test_assignment_nodes_are_drawn_as_module_values():
    model = make_model()
    with model.trace(torch.rand(2, 5)) as tracer:
        model.layer2.output = model.layer2.output * 2
    nodes, edges, _ = parse_dot(tracer.graph.to_dot())
    assert nodes["n2"] == ("%2 set_output\\nmodel.layer2.output (call 0)", "#dbeafe")
    assert edges == {("n0", "n1"): "0", ("n0", "n2"): "0", ("n1", "n2"): "1"}


# -- errors ------------------------------------------------------------------------------


def test_vis_without_the_graphviz_package_raises_and_writes_nothing(monkeypatch, tmp_path):
    graph = traced_graph()
    monkeypatch.setitem(sys.modules, "graphviz", None)  # makes `import graphviz` fail
    target = tmp_path / "graph.svg"
    with pytest.raises(GraphvizNotFoundError, match=r"`graphviz` Python package.*pip install graphviz"):
        graph.vis(target)
    assert not target.exists()
    assert isinstance(GraphvizNotFoundError("x"), RuntimeError)


def test_vis_without_the_dot_program_raises(monkeypatch, tmp_path):
    graph = traced_graph()
    fake = types.ModuleType("graphviz")
    fake.Source = lambda source: pytest.fail("must not render without the dot program")
    monkeypatch.setitem(sys.modules, "graphviz", fake)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    target = tmp_path / "graph.svg"
    with pytest.raises(GraphvizNotFoundError, match=r"program `dot`, which is not on PATH.*apt-get install"):
        graph.vis(target)
    assert not target.exists()


@pytest.mark.parametrize("fmt", ["jpeg", "SVG", "", "dot"])
def test_vis_rejects_an_unknown_format_before_drawing(fmt, tmp_path):
    graph = traced_graph()
    before = graph.to_dot()
    with pytest.raises(ImageFormatError, match=rf"formats svg, png, pdf, not '{fmt}'"):
        graph.vis(tmp_path / "graph.out", format=fmt)
    assert not (tmp_path / "graph.out").exists()
    assert graph.to_dot() == before
    assert isinstance(ImageFormatError("x"), ValueError)


def test_drawing_leaves_no_hook_on_the_model():
    model = make_model()
    with model.trace(torch.rand(1, 5)) as tracer:
        model.layer1.output.save()
    with pytest.raises(ImageFormatError):
        tracer.graph.vis(format="gif")
    assert hook_count(model._model) == 0


# -- rendering (needs Graphviz) --------------------------------------------------------------


@needs_graphviz
def test_vis_returns_an_svg_with_every_node_and_edge():
    graph = traced_graph()
    svg = graph.vis()
    assert isinstance(svg, bytes)
    titles = {t.text for t in ET.fromstring(svg).iter(f"{SVG}title")}
    assert {f"n{i}" for i in range(len(graph.nodes))} <= titles
    assert {"n0->n1", "n3->n4", "n3->n5"} <= titles


@needs_graphviz
@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_vis_writes_a_file_in_each_format(fmt, magic, tmp_path):
    target = tmp_path / f"graph.{fmt}"
    assert traced_graph().vis(str(target), format=fmt) == target
    assert target.read_bytes().startswith(magic)


# -- the picture on the tracing page -------------------------------------------------------


def _svg_nodes_and_edges(svg_text):
    nodes, edges = {}, set()
    for group in ET.fromstring(svg_text).iter(f"{SVG}g"):
        title = group.find(f"{SVG}title")
        if group.get("class") == "node":
            nodes[title.text] = "\n".join(t.text for t in group.findall(f"{SVG}text"))
        elif group.get("class") == "edge":
            edges.add(title.text)
    return nodes, edges


def test_the_committed_picture_shows_the_example_graph():
    example = runpy.run_path(str(EXAMPLE), run_name="__example__")
    dot_nodes, dot_edges, _ = parse_dot(example["tracer"].graph.to_dot())
    svg_nodes, svg_edges = _svg_nodes_and_edges(PICTURE.read_text())
    expected = {name: html.unescape(label.replace("\\n", "\n")) for name, (label, _) in dot_nodes.items()}
    assert svg_nodes == expected, (
        "docs/_static/tracing_graph.svg is out of date; regenerate it with: python -c \"import runpy; "
        "runpy.run_path('docs/examples/vis_graph.py')['tracer'].graph.vis('docs/_static/tracing_graph.svg')\"")
    assert svg_edges == {f"{a}->{b}" for a, b in dot_edges}
