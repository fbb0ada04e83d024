"""A graph of several invokes (activation patching) saved and run again on other inputs."""

from collections import OrderedDict

import torch

from nnsight_core import Graph
from nnsight_core.serialize import run
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
model = NNsight(net)
clean, corrupted = torch.rand(1, 5), torch.rand(1, 5)

with model.trace() as tracer:
    with tracer.invoke(clean):
        source = model.layer1.output
    with tracer.invoke(corrupted):
        model.layer1.output = source                     # patch invoke 0's activation into invoke 1
        patched = model.output.save()
text = tracer.graph.to_json()

a, b = torch.rand(1, 5), torch.rand(1, 5)
with torch.no_grad():
    saved = run(model, Graph.from_json(text), invokes=[(a,), (b,)])   # one entry per invoke
    print("patched:", saved[patched.node.index])
    print("a alone:", net(a))
    torch.testing.assert_close(saved[patched.node.index], net(a))   # b's run now carries a's layer1
    torch.testing.assert_close(patched.value, net(clean))
