"""Skipping modules: envoy.skip(value) replaces a module's forward for one invoke."""

import torch

from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import tiny_llama_checkpoint
from transformers import AutoModelForCausalLM

folder = tiny_llama_checkpoint()
model = LanguageModel(folder)
prompt = "The Eiffel Tower is in the city of"

# Skip decoder layer 1: its output is its input (the residual stream passes through).
with torch.no_grad(), model.trace(prompt):
    layer = model.model.layers[1]
    layer.skip(layer.input)
    skipped = model.lm_head.output.save()

# Plain PyTorch: the layer's forward replaced on the instance by the identity.
hf = AutoModelForCausalLM.from_pretrained(folder).eval()
hf.model.layers[1].forward = lambda hidden_states, *args, **kwargs: hidden_states
with torch.no_grad():
    expected = hf(**model.tokenizer(prompt, return_tensors="pt")).logits
del hf.model.layers[1].forward
assert torch.allclose(skipped.value, expected, atol=1e-5)
print("top token without layer 1:", skipped.value[0, -1].argmax().item())

# Two invokes: only the second skips. The layer then runs on the whole batch and the
# second invoke's rows of its output are overwritten (see below for why).
with torch.no_grad(), model.trace() as tracer:
    with tracer.invoke(prompt):
        full = model.lm_head.output.save()
    with tracer.invoke(prompt):
        model.model.layers[1].skip(model.model.layers[1].input)
        partial = model.lm_head.output.save()
assert torch.allclose(partial.value, expected, atol=1e-5)
assert not torch.allclose(full.value, expected, atol=1e-4)
print("invoke 0 and invoke 1 differ:", not torch.allclose(full.value, partial.value))

# A value that cannot stand in for the output is refused before the model runs.
try:
    with torch.no_grad(), model.trace(prompt):
        model.model.layers[1].skip(torch.zeros(1, 3, 32))
except Exception as error:
    print(f"{type(error).__name__}: {error}")
