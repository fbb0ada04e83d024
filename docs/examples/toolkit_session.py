"""model.session(): a later trace uses an earlier trace's values directly, saved or not."""

from collections import OrderedDict

import torch

from nnsight_core import ValueNotSetError
from nnsight_torch import NNsight

torch.manual_seed(0)


def make_net() -> torch.nn.Sequential:
    return torch.nn.Sequential(OrderedDict([
        ("layer1", torch.nn.Linear(5, 10)),
        ("layer2", torch.nn.Linear(10, 2)),
    ]))


net, other_net = make_net(), make_net()
model, other = NNsight(net), NNsight(other_net)
clean, corrupted = torch.rand(2, 5), torch.rand(2, 5)

with model.session() as session:
    with model.trace(clean):
        hidden = model.layer1.output                   # not saved: the session keeps it
    with model.trace(corrupted):
        model.layer1.output = hidden                   # patch clean's activation in
        patched = model.output.save()
    with other.trace(corrupted):                       # another model: the value is a plain tensor
        other.layer1.output = hidden
        crossed = other.output.save()
print("traces in the session:", len(session.traces))

with torch.no_grad():
    assert torch.equal(patched.value, net.layer2(net.layer1(clean)))
    assert torch.equal(crossed.value, other_net.layer2(net.layer1(clean)))

# When the session ends, the values that were not saved are freed.
try:
    hidden.value
except ValueNotSetError as error:
    print(f"{type(error).__name__}: {error}")
