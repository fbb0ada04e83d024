"""In-place edits act on a copy of the module value, written back to the invoke's own rows.

So parameters and the tensors autograd saved for backward are never modified.
"""

from collections import OrderedDict

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("act", torch.nn.Sigmoid()),          # sigmoid saves its output for backward
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(3, 5)
model = NNsight(net)

# 1. Autograd still works: the edit did not touch sigmoid's saved output.
with model.trace(x):
    model.act.output[:, 0] = 0
    output = model.output.save()
output.value.sum().backward()
grad = net.layer1.weight.grad.clone()
net.zero_grad()

# Plain PyTorch, editing sigmoid's output itself, breaks backward ...
hidden = torch.sigmoid(net.layer1(x))
hidden[:, 0] = 0
try:
    net.layer2(hidden).sum().backward()
except RuntimeError as error:
    assert "inplace operation" in str(error)
else:
    raise AssertionError("expected autograd to refuse an in-place edit of a saved tensor")
net.zero_grad()
# ... editing a copy is what the trace did.
hidden = torch.sigmoid(net.layer1(x)).clone()
hidden[:, 0] = 0
net.layer2(hidden).sum().backward()
torch.testing.assert_close(grad, net.layer1.weight.grad)


# 2. A module whose output is a parameter: the parameter is not zeroed.
class Positions(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.ones(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table


class WithPositions(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.positions = Positions()
        self.layer = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x + self.positions(x))


net2 = WithPositions()
model2 = NNsight(net2)
with model2.trace(torch.rand(3, 4)):
    model2.positions.output[:] = 0
    zeroed = model2.positions.output.save()
assert torch.equal(zeroed.value, torch.zeros(3, 4))
assert torch.equal(net2.positions.table, torch.ones(3, 4))   # the parameter is unchanged

# 3. The edited copy replaces only the editing invoke's rows.
a, b = torch.rand(1, 5), torch.rand(2, 5)
with model.trace() as tracer:
    with tracer.invoke(a):
        out_a = model.output.save()
    with tracer.invoke(b):
        model.layer1.output[:] = 0
        out_b = model.output.save()
with torch.no_grad():
    torch.testing.assert_close(out_a.value, net(a))                              # untouched
    torch.testing.assert_close(out_b.value, net.layer2(torch.sigmoid(torch.zeros(2, 10))))
