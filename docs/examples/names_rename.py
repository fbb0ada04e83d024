"""rename= on any wrapper: aliases of paths (from the root) and of child names (at every depth)."""

import torch

from nnsight_core import EnvoyAttributeError
from nnsight_torch import NNsight


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = torch.nn.Linear(4, 4)
        self.mlp = torch.nn.Linear(4, 4)

    def forward(self, x):
        x = x + self.self_attn(x)
        return x + self.mlp(x)


class Body(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Body()
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.model(x))


torch.manual_seed(0)
net, x = Net(), torch.randn(3, 4)
model = NNsight(net, rename={"model.layers": "layers",   # a dotted path: model.layers
                             "self_attn": "attn",         # a child name: .attn at every depth
                             "head": "lm_head"})

# The aliases reach the same envoys; the real names keep working; print shows torch's names.
assert model.layers is model.model.layers
assert model.layers[1].attn is model.model.layers[1].self_attn
assert repr(model) == repr(net)
print(model.model_key, "| aliases on the wrapper:", [n for n in ("layers", "lm_head") if n in dir(model)])

with model.trace(x) as tracer:
    attn = model.layers[1].attn.output.save()
    model.layers[0].mlp.output[:] = 0                      # edits work through aliases too
    logits = model.lm_head.output.save()

# The graph records the real module paths (hooks, JSON and caches see torch's names).
print("recorded paths:", sorted({n.target[0] for n in tracer.graph.nodes if n.op in ("output", "set_output")}))

# Expected values: raw forward hooks on the real modules.
seen = {}
handles = [net.model.layers[1].self_attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o)),
           net.model.layers[0].mlp.register_forward_hook(lambda m, a, o: torch.zeros_like(o))]
with torch.no_grad():
    expected = net(x)
for handle in handles:
    handle.remove()
assert torch.equal(attn.value, seen["attn"]) and torch.equal(logits.value, expected)

# A misspelt name: the message gives the real path, its alias form, the children and the aliases.
try:
    model.layers[0].atn
except EnvoyAttributeError as error:
    print(f"EnvoyAttributeError: {error}")
