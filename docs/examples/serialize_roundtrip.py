"""Write a trace's graph as JSON, load it back, and run it on new inputs."""

import json
from collections import OrderedDict

import torch

from nnsight_core import Graph
from nnsight_core.serialize import run
from nnsight_torch import NNsight

torch.manual_seed(0)
net = torch.nn.Sequential(OrderedDict([
    ("layer1", torch.nn.Linear(5, 10)),
    ("layer2", torch.nn.Linear(10, 2)),
]))
model = NNsight(net)
x = torch.rand(1, 5)

with model.trace(x) as tracer:
    hidden = model.layer1.output.save()
    model.layer1.output[:, 0] = 0                        # an edit, recorded like any other node
    probs = torch.softmax(model.layer2.output, dim=-1).save()
text = tracer.graph.to_json(indent=1)                    # plain JSON: ops, targets, constants

loaded = Graph.from_json(text)                            # checked field by field, no code runs
y = torch.rand(4, 5)                                      # other inputs, even another batch size
saved = run(model, loaded, y)                             # {saved node index: value}
new_hidden, new_probs = saved[hidden.node.index], saved[probs.node.index]

document = json.loads(text)
print(f"{len(document['nodes'])} nodes:", ", ".join(n["op"] for n in document["nodes"]))
print(json.dumps(next(n for n in document["nodes"] if n["op"] == "call_function")))
print("new_probs:", tuple(new_probs.shape))

# The same values plain PyTorch computes.
with torch.no_grad():
    edited = net.layer1(y).clone()
    edited[:, 0] = 0
    torch.testing.assert_close(new_hidden, edited)
    torch.testing.assert_close(new_probs, torch.softmax(net.layer2(edited), dim=-1))
    # ... and the original trace's on its own input.
    first = net.layer1(x).clone()
    first[:, 0] = 0
    torch.testing.assert_close(probs.value, torch.softmax(net.layer2(first), dim=-1))
