"""InputError: a trace or invoke got no inputs, or inputs its adapter cannot use."""

from collections import OrderedDict

import torch

from nnsight_core import InputError
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


# Mistake 1: a trace with no inputs and no invoke (the block runs nothing).
try:
    with model.trace():
        pass
except InputError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected InputError")

# Mistake 2: an invoke without inputs.
try:
    with model.trace() as tracer:
        with tracer.invoke():
            pass
except InputError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected InputError")

# Mistake 3: trace=False without inputs.
try:
    model.trace(trace=False)
except InputError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected InputError")

# Mistake 4: inputs with no tensor that has a batch dimension.
try:
    with model.trace(3.0):
        pass
except InputError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected InputError")

# The fix: give every trace or invoke the module's inputs, batch first.
with model.trace() as tracer:
    with tracer.invoke(x):
        output = model.output.save()

with torch.no_grad():
    torch.testing.assert_close(output.value, net(x))
    torch.testing.assert_close(model.trace(x, trace=False), net(x))
assert no_hooks_left()
