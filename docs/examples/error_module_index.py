"""ModuleIndexError: a module container was indexed out of range."""

from collections import OrderedDict

import torch

from nnsight_core import ModuleIndexError
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


# The mistake: the Sequential has two modules, 0 and 1.
try:
    model[2]
except ModuleIndexError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected ModuleIndexError")

# The fix: an index in range (negative indices count from the end).
with model.trace(x):
    output = model[-1].output.save()
assert torch.equal(output.value, net(x))
assert no_hooks_left()
