"""tracer.cond, tracer.apply, tracer.log and tracer.stop on a small MLP."""

from collections import OrderedDict

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("act", torch.nn.ReLU()),
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(1, 5)
model = NNsight(net)

# cond: the block runs only if its condition holds while the model runs.
with model.trace(x) as tracer:
    hidden = model.layer1.output
    with tracer.cond(hidden.mean() > 0):
        model.layer1.output[:] = 0                      # only when the mean is positive
    with tracer.cond(hidden.mean() <= 0):               # "else": the negated condition
        model.layer1.output[:] = model.layer1.output * 2
    # log: print values while the model runs.
    tracer.log("mean of layer1:", hidden.mean())
    # apply: any Python function, recorded as one node.
    top = tracer.apply(lambda t: t.topk(3).indices.tolist(), model.layer1.output[0]).save()

with torch.no_grad():
    raw = net.layer1(x)
    edited = raw * 0 if raw.mean() > 0 else raw * 2
    assert torch.equal(tracer.output, net.layer2(net.act(edited)))
    assert top.value == edited[0].topk(3).indices.tolist()
print("top-3 units after the edit:", top.value)

# stop: end the execution once everything recorded so far has run.
calls = []
handle = net.layer2.register_forward_hook(lambda module, args, out: calls.append(out))
with model.trace(x) as tracer:
    first = model.layer1.output.save()
    tracer.stop()
handle.remove()
print("layer2 ran", len(calls), "times; output:", tracer.output)
assert calls == [] and tracer.output is None and torch.equal(first.value, raw)
