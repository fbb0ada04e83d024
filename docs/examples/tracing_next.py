"""A module called several times: `.next()` moves an envoy to the module's next call."""

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)


class Twice(torch.nn.Module):
    """Applies the same layer two times, so ``layer`` has calls 0 and 1."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.layer(x))


net = Twice()
x = torch.rand(2, 4)
model = NNsight(net)

with model.trace(x):
    first = model.layer.output.save()            # call 0
    second = model.layer.next().output.save()    # call 1; the envoy now stays on call 1
    model.layer.output[:] = 0                    # so this edits call 1 too
    output = model.output.save()

# Plain PyTorch: a hook that records every call.
calls = []
handle = net.layer.register_forward_hook(lambda module, args, out: calls.append(out))
net(x)
handle.remove()

assert torch.equal(first.value, calls[0])
assert torch.equal(second.value, torch.zeros(2, 4))   # saved, then zeroed in place
assert torch.equal(output.value, torch.zeros(2, 4))
