"""InterventionError: a recorded operation failed while the model ran."""

from collections import OrderedDict

import torch

from nnsight_core import InterventionError
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


# The mistake: layer1's output is (3, 10), which cannot be multiplied by a (3, 3) matrix.
try:
    with model.trace(x):
        (model.layer1.output @ torch.ones(3, 3)).save()
except InterventionError as error:
    print(f"{type(error).__name__}: {error}")
    caught = error
else:
    raise AssertionError("expected InterventionError")

# The original exception is chained as the cause.
assert isinstance(caught.__cause__, RuntimeError)
assert no_hooks_left()

# The fix: shapes that match; .shape is known inside the trace (the scan computes it).
with model.trace(x):
    shape = model.layer1.output.shape
    product = (model.layer1.output @ torch.ones(10, 3)).save()
assert shape == (3, 10)
with torch.no_grad():
    assert torch.equal(product.value, net.layer1(x) @ torch.ones(10, 3))
