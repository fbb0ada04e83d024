"""ProxyCallError: a proxy that is not a method of a value was called inside a trace."""

from collections import OrderedDict

import torch

from nnsight_core import ProxyCallError
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


# The mistake: calling a module's output as if it were the module.
try:
    with model.trace(x):
        model.layer1.output(x)
except ProxyCallError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected ProxyCallError")

# The fix: call methods of values, or the module itself.
with model.trace(x):
    hidden = model.layer1.output
    total = hidden.sum(dim=1).save()
    again = model.layer2(hidden).save()

with torch.no_grad():
    torch.testing.assert_close(total.value, net.layer1(x).sum(dim=1))
    torch.testing.assert_close(again.value, net(x))
assert no_hooks_left()
