"""EnvoyAttributeError: the module has no child or attribute of that name."""

from collections import OrderedDict

import torch

from nnsight_core import EnvoyAttributeError
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


# The mistake: a misspelt module path.
try:
    with model.trace(x):
        model.layer3.output.save()
except EnvoyAttributeError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected EnvoyAttributeError")

# The fix: use a name the message lists (print(model) shows the tree).
with model.trace(x):
    output = model.layer2.output.save()
assert torch.equal(output.value, net(x))
assert no_hooks_left()
