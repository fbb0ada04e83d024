"""`.save()` keeps a value past the trace; read it with `.value` (or use the proxy as the value)."""

from collections import OrderedDict

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(3, 5)
model = NNsight(net)

with model.trace(x) as tracer:
    hidden = model.layer1.output.save()
    logits = model.layer2.output.save()

# After the block: .value is the tensor; the proxy itself prints as it and computes like it.
assert isinstance(hidden.value, torch.Tensor)
print(hidden)
doubled = hidden * 2  # no trace open: this is plain tensor arithmetic on the saved value
assert torch.equal(doubled, hidden.value * 2)

# tracer.output is the model's raw output.
assert torch.equal(tracer.output, logits.value)

# The Runner forwards attribute access to the model, so this reads the same.
with NNsight(net).trace(x) as traced:
    logits_again = traced.layer2.output.save()

# Plain PyTorch: a forward hook on the same modules.
captured = {}
handles = [
    net.layer1.register_forward_hook(lambda m, a, out: captured.update(layer1=out)),
    net.layer2.register_forward_hook(lambda m, a, out: captured.update(layer2=out)),
]
net(x)
for handle in handles:
    handle.remove()

assert torch.equal(hidden.value, captured["layer1"])
assert torch.equal(logits.value, captured["layer2"])
assert torch.equal(logits_again.value, captured["layer2"])
