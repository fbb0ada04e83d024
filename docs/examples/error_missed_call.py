"""MissedCallError: the graph waited on a module call that never happened."""

from collections import OrderedDict

import torch

from nnsight_core import MissedCallError
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


# The mistake: layer1 runs once per forward pass, so it has no call 1.
try:
    with model.trace(x):
        model.layer1.next().output.save()
except MissedCallError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected MissedCallError")

# The fix: address a call that happens (call 0 here).
with model.trace(x):
    hidden = model.layer1.output.save()
with torch.no_grad():
    assert torch.equal(hidden.value, net.layer1(x))
assert no_hooks_left()
