"""generate(): one trace over every generation step; `.next()` moves to the next step."""

import tempfile

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from nnsight_transformers import LanguageModel

# The tiny Llama of transformers_loading.py.
folder = tempfile.mkdtemp()
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(
    ["The Eiffel Tower is in the city of Paris.", "The Colosseum is in the city of Rome.",
     "Big Ben is in the city of London."],
    trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], show_progress=False,
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>").save_pretrained(folder)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=64, eos_token_id=0, bos_token_id=0, pad_token_id=0)
LlamaForCausalLM(config).save_pretrained(folder)

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
