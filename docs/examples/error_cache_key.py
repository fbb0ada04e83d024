"""CacheKeyError: a cache was asked for a module it does not hold."""

from collections import OrderedDict

import torch

from nnsight_core import CacheKeyError
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


# The mistake: looking up a module that was not among the modules cached.
with model.trace(x) as tracer:
    cache = tracer.cache(modules=[model.layer1])
try:
    cache["model.layer2"]
except CacheKeyError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected CacheKeyError")

# The fix: cache the module (or every module, the default), or test membership first.
assert "model.layer2" not in cache
with model.trace(x) as tracer:
    cache = tracer.cache(modules=[model.layer1, model.layer2])
with torch.no_grad():
    assert torch.equal(cache["model.layer2"].output, net(x))
assert no_hooks_left()
