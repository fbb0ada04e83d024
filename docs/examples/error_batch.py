"""BatchError: inputs or an edit do not fit the invoke's rows of the batch."""

from collections import OrderedDict

import torch

from nnsight_core import BatchError
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


# The mistake: invoke 0 owns 1 row, but its assignment has 2.
try:
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            model.layer1.output = torch.zeros(2, 10)
        with tracer.invoke(x[1:]):
            pass
except BatchError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected BatchError")

# The fix: give each invoke's assignment the shape of its own rows.
with model.trace() as tracer:
    with tracer.invoke(x[:1]):
        model.layer1.output = torch.zeros(1, 10)
        first = model.output.save()
    with tracer.invoke(x[1:]):
        rest = model.output.save()

with torch.no_grad():
    torch.testing.assert_close(first.value, net.layer2(torch.zeros(1, 10)))
    torch.testing.assert_close(rest.value, net(x[1:]))
assert no_hooks_left()
