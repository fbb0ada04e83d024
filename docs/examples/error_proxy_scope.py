"""ProxyScopeError: a proxy of one trace was used in another trace."""

from collections import OrderedDict

import torch

from nnsight_core import ProxyScopeError
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


other_net = torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(5, 10))]))
other = NNsight(other_net)

# The mistake: using a proxy of the outer trace inside another model's trace.
try:
    with model.trace(x):
        hidden = model.layer1.output
        with other.trace(x):
            other.layer1.output = hidden
except ProxyScopeError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected ProxyScopeError")

# The fix: save it in its own trace and use the saved value after that trace exits.
with model.trace(x):
    hidden = model.layer1.output.save()
with other.trace(x):
    other.layer1.output = hidden
    patched = other.layer1.output.save()

with torch.no_grad():
    assert torch.equal(patched.value, net.layer1(x))
assert no_hooks_left()
