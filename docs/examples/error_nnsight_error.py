"""NNsightError: the base class, one except clause for every error of the library."""

from collections import OrderedDict

import torch

from nnsight_core import NNsightError
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


# The mistake: a module name that does not exist (an EnvoyAttributeError).
try:
    with model.trace(x):
        model.layer3.output.save()
except NNsightError as error:
    print(f"{type(error).__name__}: {error}")
    caught = error
else:
    raise AssertionError("expected NNsightError")

# Every error also subclasses the nearest built-in, so `except AttributeError`
# written for plain PyTorch keeps working.
assert isinstance(caught, AttributeError)
assert no_hooks_left()
