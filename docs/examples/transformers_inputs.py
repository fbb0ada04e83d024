"""LanguageModel inputs, and several invokes batched with left padding."""

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
