"""Scan: shapes inside a trace, computed on fake tensors; wrongly shaped edits caught before the model runs."""

from collections import OrderedDict

import torch

from nnsight_core import AssignmentError, ScanError
from nnsight_torch import NNsight
from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import tiny_llama_checkpoint

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("act", torch.nn.ReLU()),
    ("layer2", torch.nn.Linear(10, 2)),
]))
model = NNsight(net)
x = torch.rand(3, 5)

# Inside the trace, .shape, .dtype, .device and .ndim are plain values: use them in Python.
with model.trace(x):
    hidden = model.layer1.output
    print("layer1:", hidden.shape, hidden.dtype, hidden.device)
    print("its last column:", hidden[:, -1].shape, "| the model's output:", model.output.shape)
    ramp = torch.linspace(0, 1, hidden.shape[-1])          # a tensor sized from the scan
    model.layer1.output = hidden * ramp
    out = model.output.save()
with torch.no_grad():
    assert torch.equal(out.value, net.layer2(net.act(net.layer1(x) * torch.linspace(0, 1, 10))))

# A wrongly shaped assignment raises before the model runs, naming the line that made it.
seen = []
handle = net.layer1.register_forward_pre_hook(lambda module, args: seen.append(type(args[0]).__name__))
try:
    with model.trace(x):
        model.layer1.output = torch.zeros(3, 4)
        model.output.save()
except AssignmentError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected AssignmentError")
finally:
    handle.remove()
print("layer1 was called with:", seen)                      # only the scan's fake tensors
assert seen == ["FakeTensor"]

# What fake tensors cannot know (values) is a ScanError; the real run still computes it.
with model.trace(x):
    hidden = model.layer1.output
    positive = hidden[hidden > 0]
    try:
        positive.shape
    except ScanError as error:
        print(f"{type(error).__name__}: {error}")
    kept = positive.save()
with torch.no_grad():
    assert torch.equal(kept.value, net.layer1(x)[net.layer1(x) > 0])

# A language model scans before its weights are loaded: generation step 0 is known.
llm = LanguageModel(tiny_llama_checkpoint())
prompt = "The Eiffel Tower is in"
with llm.generate(prompt, max_new_tokens=3):
    step0 = llm.lm_head.output.shape
    print("step 0 logits:", step0, "| weights loaded:", llm.dispatched)
    logits = llm.lm_head.output.save()
    ids = llm.generator.output.save()
n = llm.tokenizer(prompt, return_tensors="pt")["input_ids"].shape[1]
assert logits.value.shape == step0 and ids.value.shape == (1, n + 3)

# scan=False: nothing is scanned; .shape is then recorded like any attribute.
with model.trace(x, scan=False):
    shape = model.layer1.output.shape.save()
print("recorded:", shape.value)
