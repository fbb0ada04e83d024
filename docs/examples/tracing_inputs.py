"""Read what a module received: `.input` (first positional argument) and `.inputs` ((args, kwargs))."""

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
    first_arg = model.layer2.input.save()      # the tensor layer2 was called with
    args_kwargs = model.layer2.inputs.save()   # ((tensor,), {})
    hidden = model.layer1.output.save()

args, kwargs = args_kwargs.value
assert len(args) == 1 and kwargs == {}
assert torch.equal(args[0], first_arg.value)

# Plain PyTorch: a forward pre-hook sees the same arguments.
captured = {}
handle = net.layer2.register_forward_pre_hook(lambda module, a: captured.update(args=a))
net(x)
handle.remove()

assert torch.equal(first_arg.value, captured["args"][0])
assert torch.equal(first_arg.value, hidden.value)  # in a Sequential, layer2 gets layer1's output

# Inputs are assignable too: .input replaces the first positional argument,
# .inputs the whole (args, kwargs) pair.
with model.trace(x):
    model.layer2.input = model.layer2.input * 0
    zero_input = model.output.save()
with model.trace(x):
    model.layer2.inputs = ((torch.ones(3, 10),), {})
    ones_input = model.output.save()

with torch.no_grad():
    assert torch.equal(zero_input.value, net.layer2(torch.zeros(3, 10)))
    assert torch.equal(ones_input.value, net.layer2(torch.ones(3, 10)))
