"""ImageFormatError: a graph was drawn in a format that Graph.vis does not render."""

from collections import OrderedDict

import torch

from nnsight_core import GraphvizNotFoundError, ImageFormatError
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
x = torch.rand(3, 5)
model = NNsight(net)


def no_hooks_left() -> bool:
    """After any error the model holds no hook of the library."""
    return hook_count(net) == 0


with model.trace(x) as tracer:
    hidden = model.layer1.output.save()

# The mistake: a format vis() does not render.
try:
    tracer.graph.vis(format="jpeg")
except ImageFormatError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected ImageFormatError")

assert no_hooks_left()

# The fix: "svg", "png" or "pdf" (nnsight_core.vis.FORMATS).
try:
    png = tracer.graph.vis(format="png")
    assert png.startswith(b"\x89PNG")
except GraphvizNotFoundError:
    pass  # no Graphviz on this machine; the format itself was accepted
