"""Gradients inside a trace: read `.grad`, assign it, and run `.backward()`."""

from collections import OrderedDict

import torch

from nnsight_core import GradientError
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)), ("sigma1", torch.nn.Sigmoid()),
    ("layer2", torch.nn.Linear(10, 2)), ("sigma2", torch.nn.Sigmoid()),
]))
model = NNsight(net)
x, y = torch.rand(3, 5), torch.rand(2, 5)

# Read the gradient of a hidden state: .grad first, then the .backward() that computes it.
with model.trace(x):
    hidden = model.layer1.output
    grad = hidden.grad.save()
    attribution = (hidden * hidden.grad).sum(dim=-1).save()   # gradient x activation, per row
    model.output.sum().backward()
print("d loss / d layer1 output:", tuple(grad.value.shape))
print("attribution per row:", attribution.value)

# The same with plain autograd.
plain = net.layer1(x)
plain.retain_grad()
net.sigma2(net.layer2(net.sigma1(plain))).sum().backward()
assert torch.allclose(grad.value, plain.grad)

# Assigning .grad replaces the gradient that flows on to earlier values, as a tensor hook
# returning a new gradient does: here every parameter of layer1 gets twice its gradient.
net.zero_grad()
with model.trace(x):
    hidden = model.layer1.output
    hidden.grad = hidden.grad * 2
    model.output.sum().backward()
doubled = net.layer1.weight.grad.clone()
net.zero_grad()
plain = net.layer1(x)
plain.register_hook(lambda g: g * 2)
net.sigma2(net.layer2(net.sigma1(plain))).sum().backward()
assert torch.allclose(doubled, net.layer1.weight.grad)

# Several invokes: one backward pass over a loss that combines them; each invoke's
# .grad holds its own rows.
with model.trace() as tracer:
    with tracer.invoke(x):
        grad_x = model.layer1.output.grad.save()
        loss_x = model.output.sum()
    with tracer.invoke(y):
        grad_y = model.layer1.output.grad.save()
        (loss_x + model.output.sum()).backward()
print("rows per invoke:", grad_x.value.shape[0], grad_y.value.shape[0])
plain = net.layer1(torch.cat([x, y]))
plain.retain_grad()
net.sigma2(net.layer2(net.sigma1(plain))).sum().backward()
assert torch.allclose(grad_x.value, plain.grad[:3]) and torch.allclose(grad_y.value, plain.grad[3:])

# A .grad with no .backward() after it is refused before the model runs.
try:
    with model.trace(x):
        model.layer1.output.grad.save()
except GradientError as error:
    print(f"{type(error).__name__}: {error}")
