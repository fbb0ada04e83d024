"""Print the graph a trace recorded: one node per line, in recording order."""

from collections import OrderedDict

import torch

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

print(tracer.graph)

ops = [node.op for node in tracer.graph.nodes]
assert ops == ["output", "setitem", "output", "operator", "set_output", "output", "call_function"]
assert [node.saved for node in tracer.graph.nodes] == [True, False, False, False, False, False, True]
with torch.no_grad():
    h = net.layer1(x)
    h[:, 0] = 0
    expected = torch.linalg.norm(net.layer2(h) * 2, dim=-1)
torch.testing.assert_close(norm.value, expected)
