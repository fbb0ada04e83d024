"""Edit activations: in place through indexing, or by assigning a new value."""

from collections import OrderedDict

import torch

from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(3, 5)
model = NNsight(net)

with model.trace(x):
    before = model.layer1.output.clone().save()          # a copy, taken before the edit
    model.layer1.output[:, 0] = 0                        # in-place edit
    after = model.layer1.output.save()                   # the edited value
    model.layer2.output = model.layer2.output * 2        # replace by assignment
    output = model.output.save()

# Plain PyTorch: the same edits as forward hooks.
def zero_first(module, args, out):
    out = out.clone()
    out[:, 0] = 0
    return out


handles = [
    net.layer1.register_forward_hook(zero_first),
    net.layer2.register_forward_hook(lambda module, args, out: out * 2),
]
expected = net(x)
for handle in handles:
    handle.remove()

with torch.no_grad():
    assert torch.equal(before.value, net.layer1(x))
    assert torch.all(after.value[:, 0] == 0)
    assert torch.equal(after.value[:, 1:], before.value[:, 1:])
assert torch.equal(output.value, expected)
# The model is left as it was: no hook remains, and a plain call is unaffected.
assert hook_count(net) == 0
assert not torch.equal(net(x), expected)
