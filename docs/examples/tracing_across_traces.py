"""A value saved in one trace can be used in the next, like any tensor."""

from collections import OrderedDict

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
clean, corrupted = torch.rand(3, 5), torch.rand(3, 5)
model = NNsight(net)

with model.trace(clean):
    clean_hidden = model.layer1.output.save()

with model.trace(corrupted):
    model.layer1.output = (model.layer1.output + clean_hidden) / 2   # a saved proxy as an argument
    output = model.output.save()

with torch.no_grad():
    expected = net.layer2((net.layer1(corrupted) + net.layer1(clean)) / 2)
torch.testing.assert_close(output.value, expected)
