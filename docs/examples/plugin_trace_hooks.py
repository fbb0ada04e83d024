"""Trace every hook call: what NNSIGHT_TRACE_HOOKS=1 prints to stderr, here sent to stdout."""

import sys
from collections import OrderedDict

import torch

from nnsight_core.plugins import enable_hook_tracing
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
model = NNsight(net)

stop = enable_hook_tracing(stream=sys.stdout)
try:
    with model.trace() as tracer:
        with tracer.invoke(torch.rand(2, 5)):
            hidden = model.layer1.output.save()
        with tracer.invoke(torch.rand(1, 5)):
            model.layer2.output[:] = 0
finally:
    stop()

assert hidden.shape == (2, 10)
