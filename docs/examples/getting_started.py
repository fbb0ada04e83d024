"""A first trace: read two activations of a tiny model and check them against plain PyTorch."""

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
print(model)  # the wrapped module, printed exactly as torch prints it

with model.trace(x):
    hidden = model.layer1.output.save()  # .save(): keep the value after the trace
    output = model.output.save()         # the root module's output

print(hidden.value.shape, output.value.shape)

# The same values from a plain forward hook.
captured = {}
handle = net.layer1.register_forward_hook(lambda module, args, out: captured.update(layer1=out))
expected = net(x)
handle.remove()

assert torch.equal(hidden.value, captured["layer1"])
assert torch.equal(output.value, expected)
