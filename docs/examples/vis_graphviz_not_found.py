"""GraphvizNotFoundError: a graph was drawn on a machine without Graphviz."""

import os
from collections import OrderedDict

import torch

from nnsight_core import GraphvizNotFoundError
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(3, 5)
model = NNsight(net)


def no_hooks_left() -> bool:
    """After any error the model holds no hook of the library."""
    return hook_count(net) == 0


with model.trace(x) as tracer:
    model.layer2.output = model.layer1.output[:, :2] * 2
    out = model.output.save()

# The mistake: drawing with vis() where the `graphviz` package or the `dot` program
# is missing. (Here PATH is emptied for a moment to stand for such a machine.)
saved_path = os.environ["PATH"]
os.environ["PATH"] = ""
try:
    tracer.graph.vis()
except GraphvizNotFoundError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected GraphvizNotFoundError")
finally:
    os.environ["PATH"] = saved_path

assert no_hooks_left()

# The fix: install Graphviz (`pip install "nnsight-core[vis]"` and the system package
# `graphviz`), or take the DOT source, which needs nothing, to any Graphviz viewer.
dot = tracer.graph.to_dot()
assert dot.startswith("digraph intervention_graph {") and "set_output" in dot
