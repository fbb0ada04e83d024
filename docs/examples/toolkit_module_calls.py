"""Ad-hoc module calls inside a trace: a logit lens with `model.lm_head(model.model.norm(h))`."""

import torch
from transformers import AutoModelForCausalLM

from nnsight_core import MissedCallError
from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import tiny_llama_checkpoint

folder = tiny_llama_checkpoint()
model = LanguageModel(folder)
prompt = "The Eiffel Tower is in the city of"

# Call the final norm and the unembedding on every layer's output: what would the model
# predict if it stopped after that layer? Each call is one call_module node of the graph.
with torch.no_grad(), model.trace(prompt) as tracer:
    lens = [model.lm_head(model.model.norm(layer.output)).save() for layer in model.model.layers]
    logits = model.lm_head.output.save()       # still the model's own lm_head call
for k, layer_logits in enumerate(lens):
    print(f"layer {k}: top token id {layer_logits.value[0, -1].argmax().item()}")
print([node.target for node in tracer.graph.nodes if node.op == "call_module"])

# The same with plain forward hooks and direct calls.
hf = AutoModelForCausalLM.from_pretrained(folder)
seen = []
hooks = [layer.register_forward_hook(lambda m, a, out: seen.append(out)) for layer in hf.model.layers]
with torch.no_grad():
    plain_logits = hf(**model.tokenizer(prompt, return_tensors="pt")).logits
    for layer_logits, hidden in zip(lens, seen, strict=True):
        assert torch.allclose(layer_logits.value, hf.lm_head(hf.model.norm(hidden)), atol=1e-5)
for hook in hooks:
    hook.remove()
assert torch.allclose(logits.value, plain_logits, atol=1e-5)

# Ad-hoc calls are not hooked and not counted: lm_head still ran once, so it has no call 1.
try:
    with torch.no_grad(), model.trace(prompt):
        model.lm_head(model.model.norm(model.model.layers[0].output)).save()
        model.lm_head.next().output.save()
except MissedCallError as error:
    print(f"{type(error).__name__}: {error}")
