"""generate(): one trace over every generation step; `.next()` moves to the next step."""

import torch
from transformers import AutoModelForCausalLM

from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import tiny_llama_checkpoint

# The tiny Llama that transformers_loading.py builds by hand.
folder = tiny_llama_checkpoint()

model = LanguageModel(folder)
hf = AutoModelForCausalLM.from_pretrained(folder)
prompt = "The Eiffel Tower is in the city of"
inputs = model.tokenizer(prompt, return_tensors="pt")
n_prompt = inputs["input_ids"].shape[1]
steps = 4

# Keyword arguments go to generate(). Every module runs once per step: call 0 is the
# prompt's forward pass, call k the step that makes new token k. model.generator.output
# is what generate() returned: the prompt's ids followed by the new ones.
with model.generate(prompt, max_new_tokens=steps, do_sample=False):
    hidden = [model.model.layers[1].output.t[-1].save()]        # the prompt's last token
    for _ in range(steps - 1):
        # In later steps dimension 1 holds only the one new token: t[-1] is the way to it.
        hidden.append(model.model.layers[1].next().output.t[-1].save())
    ids = model.generator.output.save()

# Plain transformers: generate() with a forward hook recording every call.
seen = []
handle = hf.model.layers[1].register_forward_hook(lambda m, a, out: seen.append(out[:, -1]))
expected = hf.generate(**inputs, max_new_tokens=steps, do_sample=False, pad_token_id=0)
handle.remove()
print("new token ids:", ids.value[0, n_prompt:].tolist())
assert torch.equal(ids.value, expected)
assert len(seen) == steps
for got, want in zip(hidden, seen):
    torch.testing.assert_close(got.value, want)

# An intervention at one step only: negate the last layer's output while the second
# new token is made (call 1). The first new token is unchanged, the later ones differ.
with model.generate(prompt, max_new_tokens=steps, do_sample=False):
    layer = model.model.layers[1].next()          # the envoy now stands at call 1
    layer.output = -layer.output
    edited = model.generator.output.save()

calls = []


def negate_second_call(module, args, out):
    calls.append(1)
    return -out if len(calls) == 2 else out


handle = hf.model.layers[1].register_forward_hook(negate_second_call)
expected_edit = hf.generate(**inputs, max_new_tokens=steps, do_sample=False, pad_token_id=0)
handle.remove()
print("new token ids, last layer negated at step 1:", edited.value[0, n_prompt:].tolist())
assert torch.equal(edited.value, expected_edit)
assert torch.equal(edited.value[:, : n_prompt + 1], ids.value[:, : n_prompt + 1])
assert not torch.equal(edited.value, ids.value)

# Every step: loop over the calls, editing each (here: the logits of every step, so
# generation always picks token id 7).
with model.generate(prompt, max_new_tokens=steps, do_sample=False):
    for step in range(steps):
        logits = model.lm_head.output if step == 0 else model.lm_head.next().output
        logits[:, -1, 7] = 1e4
    forced = model.generator.output.save()
assert forced.value[0, n_prompt:].tolist() == [7] * steps
