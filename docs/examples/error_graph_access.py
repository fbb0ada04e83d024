"""GraphAccessError and GraphLimitError: a loaded graph reaches past its values, or asks for too much."""

import json
from collections import OrderedDict

import torch

from nnsight_core import Graph, GraphAccessError, GraphLimitError
from nnsight_core.serialize import Limits, run
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(3, 5)
model = NNsight(net)
bias = net.layer1.bias.detach().clone()


def no_hooks_left() -> bool:
    """After any error the model holds no hook of the library, and its weights are unchanged."""
    return hook_count(net) == 0 and torch.equal(net.layer1.bias, bias)


def document(*nodes):
    return json.dumps({"format": "nnsight_core.graph", "version": 2, "rows": [[0, 3]], "nodes": list(nodes)})


# Mistake 1: a document walks from an activation through autograd to a parameter, to zero it.
attack = document(
    {"op": "output", "target": ["layer1", 0], "invoke": 0},
    {"op": "getattr", "target": "grad_fn", "args": [{"node": 0}]},            # refused here
    {"op": "getattr", "target": "next_functions", "args": [{"node": 1}]},
    {"op": "getitem", "args": [{"node": 2}, 0]}, {"op": "getitem", "args": [{"node": 3}, 0]},
    {"op": "getattr", "target": "variable", "args": [{"node": 4}]},
    {"op": "call_method", "target": "zero_", "args": [{"node": 5}]})
try:
    run(model, Graph.from_json(attack), x)
except GraphAccessError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected GraphAccessError")
assert no_hooks_left()

# Mistake 2: a few bytes that ask for 8 GiB; refused before anything is allocated.
greedy = document({"op": "output", "target": ["layer1", 0], "invoke": 0},
                  {"op": "call_function", "target": "torch.zeros", "args": [2**31]})
try:
    run(model, Graph.from_json(greedy), x)
except GraphLimitError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected GraphLimitError")
assert no_hooks_left()

# The fix: read what the values offer (fields, indexing, tensor methods), within the limits.
with model.trace(x) as tracer:
    top = model.layer2.output.max(dim=-1).indices.save()
saved = run(model, Graph.from_json(tracer.graph.to_json()), x, limits=Limits(max_elements_per_tensor=10_000))
with torch.no_grad():
    torch.testing.assert_close(saved[top.node.index], net(x).max(dim=-1).indices)
assert no_hooks_left()
