"""The `nnsight` import name re-exports NNsight and the core's public names."""

from collections import OrderedDict

import torch

import nnsight
import nnsight_core
import nnsight_torch
from nnsight import NNsight

assert NNsight is nnsight_torch.NNsight
assert nnsight.Envoy is nnsight_core.Envoy   # the core's public helpers too

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(3, 5)

model = NNsight(net)
with model.trace(x):
    output = model.layer2.output.save()
assert torch.equal(output.value, net(x))

# A wrapper whose adapter distribution is not installed names the distribution.
try:
    from nnsight import LanguageModel  # noqa: F401
except ImportError as error:
    print(error)
