"""Python operators, indexing, attributes, methods and torch functions on proxies record graph nodes."""

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
    hidden = model.layer1.output
    shifted = (hidden * 2 - 1).save()                  # operators
    first_row = hidden[0].save()                       # indexing
    dims = hidden.size().save()                        # method returning a non-tensor
    width = hidden.shape[-1]                           # .shape is known while recording (scan)
    norms = hidden.norm(dim=-1).save()                 # method call
    activated = torch.relu(hidden).save()              # torch function (__torch_function__)
    mixed = torch.cat([hidden, -hidden], dim=1).save() # proxies inside containers work too
    positive = (hidden > 0).sum().save()               # comparison, then a method

with torch.no_grad():
    h = net.layer1(x)
assert torch.equal(shifted.value, h * 2 - 1)
assert torch.equal(first_row.value, h[0])
assert dims.value == torch.Size([3, 10]) and width == 10
assert torch.equal(norms.value, h.norm(dim=-1))
assert torch.equal(activated.value, torch.relu(h))
assert torch.equal(mixed.value, torch.cat([h, -h], dim=1))
assert positive.value.item() == (h > 0).sum().item()
