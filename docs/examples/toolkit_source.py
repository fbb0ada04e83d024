"""Inside a module: envoy.source exposes every call site of a forward, recursively."""

import torch

from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import tiny_llama_checkpoint
from transformers import AutoModelForCausalLM

folder = tiny_llama_checkpoint()
# Eager attention: the attention function is plain PyTorch, with a softmax to look at.
model = LanguageModel(folder, attn_implementation="eager")
prompt = "The Eiffel Tower is in the city of"
attn = model.model.layers[1].self_attn

# The forward's source, each line's call sites in the margin (no trace needed).
print(attn.source)

with torch.no_grad(), model.trace(prompt):
    # A call site is envoy-like: .output / .input / .inputs, readable and editable.
    query = attn.source.q_proj_0.output.save()
    # Recursive: the attention function the forward calls, and the softmax inside it.
    pattern = attn.source.attention_interface_0.source.softmax_0.output.clone().save()  # before the edit
    attn.source.attention_interface_0.source.softmax_0.output[:, 0] = 0   # silence head 0
    logits = model.lm_head.output.save()

print("pattern of head 1, last token:", [round(p, 3) for p in pattern.value[0, 1, -1].tolist()])
print(attn.source.attention_interface_0.source)   # known now that a trace ran it

# The same numbers with plain PyTorch: eager attention returns its weights; a forward hook
# reads them, and q_proj's output directly.
hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
seen = {}
layer = hf.model.layers[1].self_attn
handles = [layer.register_forward_hook(lambda m, a, out: seen.update(weights=out[1])),
           layer.q_proj.register_forward_hook(lambda m, a, out: seen.update(query=out))]
with torch.no_grad():
    plain_logits = hf(**model.tokenizer(prompt, return_tensors="pt")).logits
for handle in handles:
    handle.remove()
assert torch.allclose(pattern.value, seen["weights"], atol=1e-6)
assert torch.allclose(query.value, seen["query"], atol=1e-6)
assert not torch.allclose(logits.value, plain_logits, atol=1e-4)   # the edit changed the result
