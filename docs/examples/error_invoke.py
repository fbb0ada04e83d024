"""InvokeError: invokes opened, nested or sized in a way the Runner cannot batch."""

from collections import OrderedDict

import torch

from nnsight_core import InvokeError
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


# Mistake 1: trace() without inputs, and a module value outside any invoke.
try:
    with model.trace():
        model.layer1.output.save()
except InvokeError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected InvokeError")

# Mistake 2: trace() with inputs already opened invoke 0; it takes no more invokes.
try:
    with model.trace(x) as tracer:
        with tracer.invoke(x):
            pass
except InvokeError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected InvokeError")

# The fix: either trace(inputs), or trace() with invoke blocks.
with model.trace() as tracer:
    with tracer.invoke(x):
        output = model.output.save()
assert torch.equal(output.value, net(x))
assert no_hooks_left()
