"""Use the toy adapter of the adapter guide: lazy loading, invokes, edits, checked against PyTorch.

The adapter is the package in ``plugin_toy_adapter/``. Installed (``pip install -e
docs/examples/plugin_toy_adapter``), its entry point registers it; here it is
registered at run time instead, so that the example runs without installing it.
"""

import pathlib
import sys

import torch

from nnsight_core import get_plugin_manager

sys.path.insert(0, str(pathlib.Path(__file__).parent / "plugin_toy_adapter"))
from nnsight_toy import ToyModel, build, plugin  # noqa: E402 - the folder is on the path now

manager = get_plugin_manager()
registered_here = manager.get_plugin("toy") is None  # True unless nnsight-toy is installed
if registered_here:
    manager.register(plugin, name="toy")

model = ToyModel("mlp:5,8,2")  # nnsight_load(meta=True): a skeleton, no weights yet
print(model)
print("dispatched:", model.dispatched, "| layer0.weight on", model._model.layer0.weight.device)

first, second = [0.1, 0.2, 0.3, 0.4, 0.5], [[0.5, 0.4, 0.3, 0.2, 0.1], [1.0, 0.0, 1.0, 0.0, 1.0]]
with model.trace() as tracer:
    with tracer.invoke(first):  # nnsight_prepare_inputs: one row
        hidden = model.layer0.output.save()
    with tracer.invoke(second):  # two rows; nnsight_batch_inputs concatenates 1 + 2 rows
        model.relu0.output[:] = 0
        out = model.output.save()
print("dispatched:", model.dispatched, "| hidden:", tuple(hidden.shape), "| out:", tuple(out.shape))

# The same values from plain PyTorch: the seeded module, called directly.
reference = build("mlp:5,8,2")
with torch.no_grad():
    torch.testing.assert_close(hidden.value, reference.layer0(torch.tensor([first])))
    torch.testing.assert_close(out.value, reference.layer1(torch.zeros(2, 8)))

if registered_here:
    manager.unregister(name="toy")
sys.path.remove(str(pathlib.Path(__file__).parent / "plugin_toy_adapter"))
