"""Several invokes share one forward pass; each invoke sees only its own rows of dimension 0."""

from collections import OrderedDict

import torch

from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
clean = torch.rand(1, 5)
corrupted = torch.rand(2, 5)
model = NNsight(net)

with model.trace() as tracer:            # no inputs: open invokes instead
    with tracer.invoke(clean):           # invoke 0: row 0 of the batch
        clean_hidden = model.layer1.output.save()
    with model.invoke(corrupted):        # invoke 1: rows 1-2 (model.invoke == tracer.invoke)
        corrupted_hidden = model.layer1.output.save()
        output = model.output.save()

assert clean_hidden.value.shape == (1, 10)
assert corrupted_hidden.value.shape == (2, 10)
assert output.value.shape == (2, 2)     # invoke 1's rows of the model output
assert tracer.output.shape == (3, 2)    # the raw output of the one batched forward pass

# Plain PyTorch: one forward pass on the concatenated batch.
with torch.no_grad():
    batch = torch.cat([clean, corrupted])
    hidden = net.layer1(batch)
    expected = net.layer2(hidden)
torch.testing.assert_close(clean_hidden.value, hidden[:1])
torch.testing.assert_close(corrupted_hidden.value, hidden[1:])
torch.testing.assert_close(output.value, expected[1:])

# Activation patching: invoke 0's value is written into invoke 1's rows.
with model.trace() as tracer:
    with tracer.invoke(clean):
        source = model.layer1.output             # invoke 0's rows, shape (1, 10)
    with tracer.invoke(corrupted):
        model.layer1.output = source.expand(2, -1)
        patched = model.output.save()

with torch.no_grad():
    expected = net.layer2(net.layer1(clean).expand(2, -1))
torch.testing.assert_close(patched.value, expected)
