"""ValueNotSetError: a value was read before it existed, or it was not saved."""

from collections import OrderedDict

import torch

from nnsight_core import ValueNotSetError
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


# Mistake 1: reading .value inside the trace, before the model ran.
try:
    with model.trace(x):
        hidden = model.layer1.output.save()
        hidden.value
except ValueNotSetError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected ValueNotSetError")

# Mistake 2: reading a value that was not saved; it was freed after its last use.
with model.trace(x):
    hidden = model.layer1.output
try:
    hidden.value
except ValueNotSetError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected ValueNotSetError")

# The fix: .save() inside the block, .value after it.
with model.trace(x):
    hidden = model.layer1.output.save()
with torch.no_grad():
    assert torch.equal(hidden.value, net.layer1(x))
assert no_hooks_left()
