"""`.t[i]` / `.token[i]`: index dimension 1 by the invoke's own tokens, whatever the padding."""

import torch
from transformers import AutoModelForCausalLM

from nnsight_core import TokenIndexError
from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import tiny_llama_checkpoint

# The tiny Llama that transformers_loading.py builds by hand.
folder = tiny_llama_checkpoint()

model = LanguageModel(folder)
hf = AutoModelForCausalLM.from_pretrained(folder)
short, long = "Big Ben is in", "The Colosseum is in the city of"
n_short = len(model.tokenizer(short)["input_ids"])


def hidden_alone(text, layer=0):
    """Layer output of one prompt run alone, read with a plain forward hook."""
    seen = []
    handle = hf.model.layers[layer].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        hf(**model.tokenizer(text, return_tensors="pt"))
    handle.remove()
    return seen[0]


# The short invoke is left-padded to the long one, yet t[0] is its own first token
# and t[-1] its last; slices stay within its tokens.
with model.trace() as tracer:
    with tracer.invoke(short):
        first = model.model.layers[0].output.t[0].save()        # shape (1, hidden)
        last = model.model.layers[0].output.t[-1].save()
        all_tokens = model.model.layers[0].output.t[:].save()  # its n_short tokens, no padding
        model.model.layers[1].output.token[1] = 0               # edit one of its tokens
        edited = model.model.layers[1].output.save()
    with tracer.invoke(long):
        long_last = model.lm_head.output.t[-1].save()

alone = hidden_alone(short)
print("short prompt:", n_short, "tokens; layer-0 output of the batch row:",
      tuple(edited.value.shape), "; .t[:]:", tuple(all_tokens.value.shape))
torch.testing.assert_close(first.value, alone[:, 0], atol=1e-5, rtol=1e-4)
torch.testing.assert_close(last.value, alone[:, -1], atol=1e-5, rtol=1e-4)
torch.testing.assert_close(all_tokens.value, alone, atol=1e-5, rtol=1e-4)
assert all_tokens.value.shape[1] == n_short
pad = edited.value.shape[1] - n_short                           # padding comes first
assert torch.all(edited.value[:, pad + 1] == 0) and torch.any(edited.value[:, pad] != 0)
with torch.no_grad():
    torch.testing.assert_close(long_last.value, hf(**model.tokenizer(long, return_tensors="pt")).logits[:, -1])

# An invoke of several prompts counts tokens from its longest prompt: t[0] is the
# first token of the longest one, and the shorter ones' padding before it.
with model.trace([short, long]):
    rows = model.model.layers[0].output.t[-1].save()           # last token: right for both rows
    starts = model.model.layers[0].output.t[0].save()          # first token of the longest row
torch.testing.assert_close(rows.value[0], alone[0, -1], atol=1e-5, rtol=1e-4)
torch.testing.assert_close(starts.value[1], hidden_alone(long)[0, 0], atol=1e-5, rtol=1e-4)

# An index outside the invoke's tokens is an error that names the invoke and its length.
try:
    with model.trace(short):
        model.model.layers[0].output.t[n_short].save()
except TokenIndexError as error:
    print("TokenIndexError:", error)
