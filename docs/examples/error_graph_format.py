"""GraphFormatError: a graph cannot be written as JSON, or a document is not a valid graph."""

from collections import OrderedDict

import torch

from nnsight_core import Graph, GraphFormatError
from nnsight_core.serialize import run
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


# Mistake 1: the graph calls a function outside the serialisable allow-list.
with model.trace(x) as tracer:
    norm = torch.linalg.vector_norm(model.layer1.output, dim=-1).save()
try:
    tracer.graph.to_json()
except GraphFormatError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected GraphFormatError")

# Mistake 2: a document that names code instead of the vocabulary is refused unread.
document = """{"format": "nnsight_core.graph", "version": 2, "rows": [[0, 3]],
  "nodes": [{"op": "output", "target": ["layer1", 0], "invoke": 0},
            {"op": "call_function", "target": "os.system", "args": ["rm -rf ~"]}]}"""
try:
    Graph.from_json(document)
except GraphFormatError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected GraphFormatError")

# The fix: use functions of the allow-list (nnsight_core.serialize.FUNCTIONS), e.g. torch.norm.
with model.trace(x) as tracer:
    norm = torch.norm(model.layer1.output, dim=-1).save()
loaded = Graph.from_json(tracer.graph.to_json())
saved = run(model, loaded, x)
with torch.no_grad():
    expected = torch.linalg.vector_norm(net.layer1(x), dim=-1)
torch.testing.assert_close(saved[norm.node.index], expected)
assert no_hooks_left()
