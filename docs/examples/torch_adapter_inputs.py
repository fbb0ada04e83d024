"""What NNsight passes to the module: positional inputs, per-invoke keywords, trace keywords."""

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)


class Net(torch.nn.Module):
    """A module whose forward takes a tensor plus keyword arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = torch.nn.Linear(4, 8)
        self.layer2 = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                scale: float = 1.0) -> torch.Tensor:
        hidden = self.layer1(x)
        if bias is not None:
            hidden = hidden + bias
        return self.layer2(hidden) * scale


net = Net()
model = NNsight(net)
a, b = torch.rand(1, 4), torch.rand(2, 4)
bias_a, bias_b = torch.rand(1, 8), torch.rand(2, 8)

# Positional inputs go to forward; the invoke owns dimension 0 of its first tensor (1 row, then 2).
# invoke() keywords are that invoke's keyword inputs: batch-first tensors are concatenated.
# Other keywords of trace() are passed to the one batched call: here scale=3.0.
with model.trace(scale=3.0) as tracer:
    with tracer.invoke(a, bias=bias_a):
        out_a = model.output.save()
    with tracer.invoke(b, bias=bias_b):
        out_b = model.output.save()

with torch.no_grad():
    torch.testing.assert_close(out_a.value, net(a, bias=bias_a, scale=3.0))
    torch.testing.assert_close(out_b.value, net(b, bias=bias_b, scale=3.0))

# With inputs given to trace() itself, invoker_args are the keyword inputs of that one invoke.
with model.trace(a, invoker_args={"bias": bias_a}):
    out = model.output.save()
with torch.no_grad():
    torch.testing.assert_close(out.value, net(a, bias=bias_a))

# trace=False: keywords go to the call as well.
with torch.no_grad():
    torch.testing.assert_close(model.trace(a, trace=False, scale=2.0), net(a, scale=2.0))
