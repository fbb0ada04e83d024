"""ScanError: a shape asked inside a trace that the scan on fake tensors cannot know."""

from collections import OrderedDict

import torch

from nnsight_core import ScanError
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


# The mistake: the number of positive entries depends on the values, which fake tensors lack.
try:
    with model.trace(x):
        hidden = model.layer1.output
        positive = hidden[hidden > 0]
        rows = positive.shape[0]
except ScanError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected ScanError")
assert no_hooks_left()

# The fix: save the value and read its shape after the trace (or keep the shape in the graph).
with model.trace(x):
    hidden = model.layer1.output
    positive = hidden[hidden > 0].save()
    count = (hidden > 0).sum().save()
with torch.no_grad():
    expected = net.layer1(x)
assert positive.shape[0] == count.value.item() == (expected > 0).sum().item()
assert no_hooks_left()
