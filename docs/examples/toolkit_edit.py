"""model.edit(): interventions that every later trace applies; clear_edits() removes them."""

from collections import OrderedDict

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
model = NNsight(net)
x = torch.rand(3, 5)


def zero_first_unit(module, args, output):
    """The same edit as a raw forward hook, for the expected values."""
    output = output.clone()
    output[:, 0] = 0
    return output


handle = net.layer1.register_forward_hook(zero_first_unit)
with torch.no_grad():
    expected = net(x)
handle.remove()

# A new wrapper of the same module whose every trace starts with the edit.
with model.edit() as edited:
    model.layer1.output[:, 0] = 0
with edited.trace(x):
    out = edited.output.save()
assert torch.equal(out.value, expected)

with model.trace(x):                                   # the original model is unaffected
    plain = model.output.save()
with torch.no_grad():
    assert torch.equal(plain.value, net(x))

# The trace's own interventions run after the edit and see its result.
with edited.trace(x):
    first_unit = edited.layer1.output[:, 0].save()     # zeros: edited already
    edited.layer1.output = edited.layer1.output * 2
print("layer1 unit 0 as the trace sees it:", first_unit.value.tolist())

# inplace=True edits the model itself; clear_edits() removes every edit.
with model.edit(inplace=True):
    model.layer1.output[:, 0] = 0
with model.trace(x):
    out = model.output.save()
assert torch.equal(out.value, expected)
model.clear_edits()
with model.trace(x):
    plain = model.output.save()
with torch.no_grad():
    assert torch.equal(plain.value, net(x))
