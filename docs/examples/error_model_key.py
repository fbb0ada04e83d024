"""ModelKeyError: a model wrapper was given a model key its adapter cannot load."""

from collections import OrderedDict

import torch

from nnsight_core import ModelKeyError
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


# The mistake: NNsight wraps a torch.nn.Module instance, not a model id.
try:
    NNsight("openai-community/gpt2")
except ModelKeyError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected ModelKeyError")

# The fix: build the module first and wrap the instance (for a Hugging Face
# model id, use LanguageModel of the nnsight-transformers adapter).
model = NNsight(net)
assert model._model is net
with model.trace(x):
    output = model.output.save()

with torch.no_grad():
    torch.testing.assert_close(output.value, net(x))
assert no_hooks_left()
