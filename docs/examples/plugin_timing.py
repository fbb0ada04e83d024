"""A plugin that is not an adapter: a hook wrapper that times every execution of any model."""

import time
from collections import OrderedDict

import torch

from nnsight_core import get_plugin_manager, hookimpl
from nnsight_core.__main__ import plugin_infos
from nnsight_torch import NNsight


class ExecutionTimer:
    """Times ``nnsight_execute``, whichever adapter answers it, without touching that adapter."""

    def __init__(self) -> None:
        self.timings = []  # (wrapper class, method, seconds)

    # A wrapper runs around the adapters' implementations: the code before `yield`
    # first, then the adapters (at `yield`), then the rest. An implementation may
    # take only the hook arguments it needs.
    @hookimpl(wrapper=True)
    def nnsight_execute(self, model, method):
        start = time.perf_counter()
        try:
            return (yield)  # the adapter's result (or its exception) passes through unchanged
        finally:
            seconds = time.perf_counter() - start
            self.timings.append((type(model).__name__, method or "forward", seconds))


torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
model = NNsight(net)
x = torch.rand(3, 5)

timer = ExecutionTimer()
manager = get_plugin_manager()
manager.register(timer, name="timer")  # an installed plugin would come from its entry point
try:
    hooks = next(info.hooks for info in plugin_infos() if info.name == "timer")
    print("timer implements:", ", ".join(hooks))
    with model.trace(x):
        model.layer1.output[:, 0] = 0
        out = model.output.save()
    raw = model.trace(x, trace=False)
finally:
    manager.unregister(timer)

for cls, method, seconds in timer.timings:
    print(f"{cls}.{method}: {seconds * 1e3:.3f} ms")

# Timing changed nothing: the same outputs as plain PyTorch.
assert hooks == ["nnsight_execute (wrapper)"]
assert [(cls, method) for cls, method, _ in timer.timings] == [("NNsight", "forward")] * 2
with torch.no_grad():
    hidden = net.layer1(x)
    hidden[:, 0] = 0
    torch.testing.assert_close(out.value, net.layer2(hidden))
    torch.testing.assert_close(raw, net(x))
