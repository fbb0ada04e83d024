"""ProxyControlFlowError: Python control flow on a value that does not exist yet."""

from collections import OrderedDict

import torch

from nnsight_core import ProxyControlFlowError
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


# The mistake: `if` on a proxy inside the trace.
try:
    with model.trace(x):
        if model.layer1.output.sum() > 0:
            model.layer1.output[:] = 0
except ProxyControlFlowError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected ProxyControlFlowError")

# The fix: compute the condition in the graph with torch.where ...
with model.trace(x):
    hidden = model.layer1.output
    model.layer1.output = torch.where(hidden.sum() > 0, torch.zeros_like(hidden), hidden)
    output = model.output.save()

with torch.no_grad():
    h = net.layer1(x)
    h = torch.zeros_like(h) if h.sum() > 0 else h
    assert torch.equal(output.value, net.layer2(h))

# ... or save the value and branch after the block.
with model.trace(x):
    total = model.layer1.output.sum().save()
with torch.no_grad():
    assert bool(total.value > 0) == bool(net.layer1(x).sum() > 0)
assert no_hooks_left()
