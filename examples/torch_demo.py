"""The NNsight example on a tiny MLP (`python examples/torch_demo.py`): read, edit and patch activations.

Every number printed next to "plain PyTorch" is computed without nnsight, with
forward hooks, so you can see the two agree.
"""

from collections import OrderedDict

import torch

from nnsight import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("sigma1", torch.nn.Sigmoid()),
    ("layer2", torch.nn.Linear(10, 2)),
    ("sigma2", torch.nn.Sigmoid()),
]))
model = NNsight(net)
x, y = torch.rand(1, 5), torch.rand(1, 5)

print("The wrapped model prints as the module it wraps:")
print(model)

# 1. Read: save a hidden state and the output.
with model.trace(x):
    hidden = model.layer1.output.save()
    output = model.output.save()
print("\n1. layer1 output:", hidden.value)
print("   model output:  ", output.value, " plain PyTorch:", net(x))

# 2. Edit: zero one neuron in place, and double layer2's output by assignment.
with model.trace(x) as tracer:
    model.layer1.output[:, 0] = 0
    model.layer2.output = model.layer2.output * 2
    edited = model.output.save()
print("\n2. edited output:", edited.value)
print("   the recorded graph:")
print("   " + str(tracer.graph).replace("\n", "\n   "))

# 3. Patch: two invokes batch into one forward pass; invoke 1 receives
#    invoke 0's hidden state.
with model.trace() as tracer:
    with tracer.invoke(x):
        source = model.layer1.output
    with tracer.invoke(y):
        model.layer1.output = source
        patched = model.output.save()
print("\n3. y with x's layer1 activation:", patched.value)
print("   plain PyTorch:                 ", net[3](net[2](net[1](net[0](x)))))

# 4. Use a value saved in one trace in the next.
with model.trace(y):
    model.layer1.output = hidden * 0.5
    halved = model.output.save()
print("\n4. y with half of x's saved layer1 activation:", halved.value)
