"""Outside a trace an NNsight wrapper reaches the module tree: children, containers, attributes."""

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)


class Stack(torch.nn.Module):
    """Three blocks in a ModuleList, plus a non-module attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
        self.config = {"width": 4}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.relu(block(x))
        return x


net = Stack()
model = NNsight(net)
x = torch.rand(2, 4)

assert repr(model) == repr(net)             # print(model) prints the module as torch does
assert model.config == {"width": 4}         # non-module attributes are the module's own
assert len(model.blocks) == 3
assert model._model is net                  # the wrapped module

with model.trace(x):
    last = model.blocks[-1].output.save()                     # indexing
    every = [block.output.save() for block in model.blocks]   # iteration
    middle = [block.output.save() for block in model.blocks[1:]]  # slicing

calls = []
handles = [block.register_forward_hook(lambda m, a, out: calls.append(out)) for block in net.blocks]
net(x)
for handle in handles:
    handle.remove()

assert torch.equal(last.value, calls[-1])
assert all(torch.equal(saved.value, call) for saved, call in zip(every, calls))
assert all(torch.equal(saved.value, call) for saved, call in zip(middle, calls[1:]))
