"""AdapterNotFoundError: no installed adapter answers the hooks for this wrapper class."""

from collections import OrderedDict

import torch

from nnsight_core import AdapterNotFoundError, NNsightModel
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


class Unclaimed(NNsightModel):
    """A wrapper class that no adapter knows."""


# The mistake: a wrapper class without an adapter (no entry point answers its hooks).
unclaimed = Unclaimed(net)
try:
    with unclaimed.trace(x):
        unclaimed.layer1.output.save()
except AdapterNotFoundError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected AdapterNotFoundError")

assert no_hooks_left()


# The fix: subclass the wrapper of an installed adapter (the torch adapter answers
# for NNsight subclasses), or install and register an adapter for the class.
class Claimed(NNsight):
    """An NNsight subclass: the nnsight-torch adapter runs it."""


claimed = Claimed(net)
with claimed.trace(x):
    output = claimed.output.save()
assert torch.equal(output.value, net(x))
