"""CacheError: tracer.cache() was given something it cannot cache."""

from collections import OrderedDict

import torch

from nnsight_core import CacheError
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


# Mistake 1: a dtype given as a string.
try:
    with model.trace(x) as tracer:
        cache = tracer.cache(dtype="float16")
except CacheError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected CacheError")

# Mistake 2: reading the inputs of a cache made without include_inputs=True.
with model.trace(x) as tracer:
    cache = tracer.cache()
try:
    cache["model.layer2"].inputs
except CacheError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected CacheError")

# The fix: a torch.dtype, and include_inputs=True for the inputs.
with model.trace(x) as tracer:
    cache = tracer.cache(dtype=torch.float16, include_inputs=True)
with torch.no_grad():
    assert torch.equal(cache["model.layer2"].input, net.layer1(x).half())
assert no_hooks_left()
