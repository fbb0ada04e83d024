"""GradientError: a gradient was asked for where autograd cannot provide it."""

from collections import OrderedDict

import torch

from nnsight_core import GradientError
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(3, 5)
model = NNsight(net)


def no_hooks_left() -> bool:
    """After any error the model holds no hook of the library."""
    return hook_count(net) == 0


# The mistake: reading .grad inside torch.no_grad(), where autograd records nothing.
try:
    with torch.no_grad(), model.trace(x):
        grad = model.layer1.output.grad.save()
        model.output.sum().backward()
except GradientError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected GradientError")

# The fix: trace with gradients enabled, and record .backward() after reading .grad.
with model.trace(x):
    grad = model.layer1.output.grad.save()
    model.output.sum().backward()
hidden = net.layer1(x)
hidden.retain_grad()
net.layer2(hidden).sum().backward()
assert torch.allclose(grad.value, hidden.grad)
assert no_hooks_left()
