"""Setting inputs: `.input = value` and `.inputs = (args, kwargs)` replace what a module receives."""

import torch

from nnsight_core import BatchError
from nnsight_torch import NNsight


class Head(torch.nn.Module):
    def forward(self, h, scale=1.0):
        return h * scale


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = torch.nn.Linear(5, 10)
        self.act = torch.nn.ReLU()
        self.layer2 = torch.nn.Linear(10, 2)
        self.head = Head()

    def forward(self, x):
        return self.head(self.layer2(self.act(self.layer1(x))), scale=2.0)


torch.manual_seed(0)
net = Net()
model = NNsight(net)
x, y = torch.rand(3, 5), torch.rand(2, 5)

# .input is the first positional argument; assigning it replaces what the module receives.
with torch.no_grad(), model.trace(x) as tracer:
    model.layer2.input = model.layer1.output          # skip the ReLU
with torch.no_grad():
    assert torch.allclose(tracer.output, net.head(net.layer2(net.layer1(x)), scale=2.0))

# .inputs is (args, kwargs): reading it shows keyword arguments too, assigning replaces both.
with torch.no_grad(), model.trace(x) as tracer:
    received = model.head.inputs.save()
    model.head.inputs = ((model.layer2.output,), {"scale": -1.0})
args, kwargs = received.value
print("head received", len(args), "positional argument(s) and", kwargs)
with torch.no_grad():
    assert torch.allclose(tracer.output, -net.layer2(net.act(net.layer1(x))))

# Several invokes: each assignment replaces only that invoke's rows of the batch.
with torch.no_grad(), model.trace() as tracer:
    with tracer.invoke(x):
        model.layer2.input = torch.zeros(3, 10)       # x's 3 rows
        zeroed = model.output.save()
    with tracer.invoke(y):
        untouched = model.output.save()
print("invoke 0:", zeroed.value[0], " invoke 1 unchanged:", torch.allclose(untouched.value, net(y)))
with torch.no_grad():
    assert torch.allclose(zeroed.value, net.head(net.layer2(torch.zeros(3, 10)), scale=2.0))

# A keyword value is shared by every row of the batch, so one invoke cannot change it alone.
try:
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(x):
            model.head.inputs = ((model.layer2.output,), {"scale": -1.0})
        with tracer.invoke(y):
            pass
except BatchError as error:
    print(f"{type(error).__name__}: {error}")
