"""LanguageModel inputs, and several invokes batched with left padding."""

import torch
from transformers import AutoModelForCausalLM

from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import tiny_llama_checkpoint

# The tiny Llama that transformers_loading.py builds by hand.
folder = tiny_llama_checkpoint()

model = LanguageModel(folder)
hf = AutoModelForCausalLM.from_pretrained(folder)
tokenizer = model.tokenizer


def plain(text):
    """Logits of one prompt run alone with plain transformers."""
    with torch.no_grad():
        return hf(**tokenizer(text, return_tensors="pt")).logits


prompt = "The Eiffel Tower is in the city of"
ids = tokenizer(prompt)["input_ids"]                  # List[int]
expected = plain(prompt)

# Every input form of one prompt gives the same forward pass.
forms = {
    "str": prompt,
    "List[int]": ids,
    "1-D tensor": torch.tensor(ids),
    "List[List[int]]": [ids],
    "2-D tensor": torch.tensor([ids]),
    "dict": {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids))},
    "BatchEncoding": tokenizer(prompt, return_tensors="pt"),
}
for name, value in forms.items():
    with model.trace(value):
        logits = model.lm_head.output.save()
    torch.testing.assert_close(logits.value, expected)
    print(f"{name:<16} -> logits of shape {tuple(logits.value.shape)}")

# Invokes of different lengths share one forward pass, left-padded with an attention
# mask and position ids that count real tokens only, so each equals running it alone.
short, long = "Big Ben is in", "The Colosseum is in the city of"
with model.trace() as tracer:
    with tracer.invoke(short):
        short_logits = model.lm_head.output.save()
    with tracer.invoke(long):
        long_logits = model.lm_head.output.save()
print("batch:", tuple(tracer.output.logits.shape), "| short invoke:",
      tuple(short_logits.value.shape), "| long invoke:", tuple(long_logits.value.shape))
n_short = len(tokenizer(short)["input_ids"])
torch.testing.assert_close(short_logits.value[:, -n_short:], plain(short), atol=1e-5, rtol=1e-4)
torch.testing.assert_close(long_logits.value, plain(long), atol=1e-5, rtol=1e-4)

# One invoke may hold several prompts (List[str]): they are its rows, padded the same way.
with model.trace([short, long]) as tracer:
    both = model.lm_head.output.save()
assert both.value.shape[0] == 2
torch.testing.assert_close(both.value[1], long_logits.value[0], atol=1e-5, rtol=1e-4)

# Keyword arguments of an invoke (or trace(..., invoker_args=...)) go to the tokenizer.
with model.trace(prompt, invoker_args={"max_length": 3, "truncation": True}):
    truncated = model.lm_head.output.save()
assert truncated.value.shape[1] == 3
