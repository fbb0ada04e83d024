"""`.save()` keeps the value itself, not a copy: a later in-place edit shows in it."""

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
    saved = model.layer1.output.save()          # recorded before the edit ...
    copied = model.layer1.output.clone().save()
    model.layer1.output[:, 0] = 0               # ... yet edited by it

assert torch.all(saved.value[:, 0] == 0)
with torch.no_grad():
    assert torch.equal(copied.value, net.layer1(x))   # .clone().save() kept the original
