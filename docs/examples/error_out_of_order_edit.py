"""OutOfOrderEditError: an edit used a value computed after the edited module ran."""

from collections import OrderedDict

import torch

from nnsight_core import OutOfOrderEditError
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


# The mistake: layer1's output cannot depend on layer2's, which comes later.
try:
    with model.trace(x):
        model.layer1.output = model.layer2.output.mean() * torch.ones(3, 10)
except OutOfOrderEditError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected OutOfOrderEditError")

# The fix: compute the value in a first trace and use it in a second one.
with model.trace(x):
    late = model.layer2.output.mean().save()
with model.trace(x):
    model.layer1.output = late * torch.ones(3, 10)
    output = model.output.save()

with torch.no_grad():
    expected = net.layer2(net(x).mean() * torch.ones(3, 10))
torch.testing.assert_close(output.value, expected)
assert no_hooks_left()
