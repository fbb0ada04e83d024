"""RenameError: a rename= table does not fit the model's modules."""

from collections import OrderedDict

import torch

from nnsight_core import RenameError
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(3, 5)


def no_hooks_left() -> bool:
    """After any error the model holds no hook of the library."""
    return hook_count(net) == 0


# The mistakes: a name the model does not have, and an alias an envoy attribute would hide.
for rename in ({"layer3": "last"}, {"layer2": "output"}):
    try:
        NNsight(net, rename=rename)
    except RenameError as error:
        print(f"{type(error).__name__}: {error}")
    else:
        raise AssertionError("expected RenameError")

# The fix: real names (as print(model) shows them) and free aliases.
model = NNsight(net, rename={"layer2": "last"})
with model.trace(x):
    output = model.last.output.save()
assert torch.equal(output.value, net(x))
assert no_hooks_left()
