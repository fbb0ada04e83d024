"""TraceStateError: an API that needs an open trace (or none) was used at the wrong time."""

from collections import OrderedDict

import torch

from nnsight_core import TraceStateError
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


# Mistake 1: a module value outside any trace.
try:
    model.layer1.output
except TraceStateError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected TraceStateError")

# Mistake 2: a trace of the same model inside its own trace.
try:
    with model.trace(x):
        with model.trace(x):
            pass
except TraceStateError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected TraceStateError")

# The fix: one trace at a time; several inputs go into invokes of one trace.
with model.trace() as tracer:
    with tracer.invoke(x[:1]):
        first = model.output.save()
    with tracer.invoke(x[1:]):
        rest = model.output.save()
torch.testing.assert_close(torch.cat([first.value, rest.value]), net(x))
assert no_hooks_left()
