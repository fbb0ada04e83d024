"""Nodes run when their inputs exist, not in the order they were written."""

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

with model.trace(x):
    output = model.layer2.output.save()   # written first, runs when layer2 has run
    model.layer1.output[:] = 0            # written second, runs when layer1 has run: earlier

with torch.no_grad():
    expected = net.layer2(torch.zeros(3, 10))
assert torch.equal(output.value, expected)   # layer2 saw the edit of layer1
