"""Draw the graph a trace recorded: its DOT source, and an SVG picture where Graphviz is installed.

The picture on the tracing page, docs/_static/tracing_graph.svg, is this
graph's ``vis()``; tests/core/test_vis.py checks that it is up to date and
says how to regenerate it.
"""

from collections import OrderedDict

import torch

from nnsight_core import GraphvizNotFoundError
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(3, 5)
model = NNsight(net)

with model.trace(x) as tracer:
    hidden = model.layer1.output.save()
    model.layer1.output[:, 0] = 0
    model.layer2.output = model.layer2.output * 2
    norm = torch.linalg.norm(model.output, dim=-1).save()

print(tracer.graph.to_dot())  # DOT source: pure Python, always available
try:
    svg = tracer.graph.vis()  # the SVG image, as bytes
except GraphvizNotFoundError:  # no `graphviz` package or no `dot` program here
    svg = None

# Every node is drawn with its op, and each argument is an edge.
dot = tracer.graph.to_dot()
for node in tracer.graph.nodes:
    assert f'n{node.index} [label="%{node.index} {node.op}' in dot
    for dep in node.deps:
        assert f"n{dep.index} -> n{node.index} " in dot
assert svg is None or b"<svg" in svg
