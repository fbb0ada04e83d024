"""Every call, or a range of calls: envoy.all(), envoy.iter[...], tracer.iter[...], tracer.all()."""

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)


class Loop(torch.nn.Module):
    """Applies ``layer`` then ``act`` four times, like four decoding or denoising steps."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)
        self.act = torch.nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(4):
            x = self.act(self.layer(x))
        return x


net = Loop()
x = torch.rand(2, 4)
model = NNsight(net)

# envoy.all(): the module at every call. A saved value is a list, one entry per call.
with model.trace(x):
    every = model.layer.all().output.save()
print("calls seen:", len(every.value))
plain = []
hook = net.layer.register_forward_hook(lambda m, a, out: plain.append(out))
net(x)
hook.remove()
assert all(torch.equal(got, want) for got, want in zip(every.value, plain, strict=True))

# tracer.iter[1:3]: the block applies to calls 1 and 2 of every module it uses, and
# inside it `layer` and `act` are at the same call: edit one with the other's value.
with model.trace(x) as tracer:
    with tracer.iter[1:3]:
        model.act.output = model.layer.output     # skip the tanh at calls 1 and 2
        skipped = model.layer.output.save()
print("edited calls:", len(skipped.value))

# The same edit with plain forward hooks.
seen = []
hooks = [net.layer.register_forward_hook(lambda m, a, out: seen.append(out)),
         net.act.register_forward_hook(lambda m, a, out: seen[-1] if len(seen) in (2, 3) else out)]
expected = net(x)
for hook in hooks:
    hook.remove()
assert torch.equal(tracer.output, expected)
assert torch.equal(skipped.value[0], seen[1]) and torch.equal(skipped.value[1], seen[2])

# A range the model never reaches is an error after the run, naming module and call.
try:
    with model.trace(x):
        model.layer.iter[3:6].output.save()
except Exception as error:  # noqa: BLE001 - shown, not handled
    print(type(error).__name__, ":", error)
