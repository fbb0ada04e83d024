"""tracer.cache(): every module's output in one call, and its memory estimate before running."""

from collections import OrderedDict

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("act", torch.nn.ReLU()),
    ("layer2", torch.nn.Linear(10, 2)),
]))
model = NNsight(net)
x = torch.rand(4, 5)

with model.trace(x) as tracer:
    cache = tracer.cache()                             # every module, this invoke's rows
    print("estimated bytes:", cache.estimate())        # fake tensors: nothing runs
print("keys:", list(cache))
real = sum(entry.output.numel() * entry.output.element_size() for entry in cache.values())
print("cached bytes:   ", real)

with torch.no_grad():
    hidden = net.layer1(x)
    assert torch.equal(cache["model.layer1"].output, hidden)       # nnsight's key
    assert torch.equal(cache["layer1"].output, hidden)             # or the module path
    assert torch.equal(cache.model.act.output, hidden.relu())      # or attributes
    assert torch.equal(cache["model"].output, net(x))              # the root module

# Chosen modules, cast while the model runs, with their inputs.
with model.trace(x) as tracer:
    half = tracer.cache(modules=[model.layer2], dtype=torch.float16, include_inputs=True)
    print("estimated bytes (float16, with inputs):", half.estimate())
entry = half["model.layer2"]
print(entry.output.dtype, tuple(entry.input.shape))

# Outside an invoke: one cache per invoke, filled as each invoke closes.
with model.trace() as tracer:
    caches = tracer.cache(modules=["layer1"])
    with tracer.invoke(x[:1]):
        pass
    with tracer.invoke(x[1:]):
        pass
print({invoke: tuple(c["layer1"].output.shape) for invoke, c in caches.items()})
with torch.no_grad():
    assert torch.equal(torch.cat([caches[0]["layer1"].output, caches[1]["layer1"].output]), hidden)
