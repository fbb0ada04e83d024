"""Loading a LanguageModel: a meta skeleton first, the weights at the first trace."""

import tempfile

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from nnsight_core import ModelKeyError
from nnsight_transformers import LanguageModel

# A tiny Llama and a byte-level BPE tokenizer trained on three sentences, saved
# into a folder like any Hugging Face checkpoint: offline and in well under a second.
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

# A folder or hub id is loaded lazily: config and tokenizer now, the module on the
# meta device (no memory, no weight file read).
model = LanguageModel(folder)
print(model)                                                   # the module, as torch prints it
print("dispatched:", model.dispatched, "| device:", model._model.device)
assert not model.dispatched and model._model.device.type == "meta"
assert model.tokenizer.padding_side == "left" and model.tokenizer.pad_token == "<eos>"

# The first trace loads the weights (dispatch_model()); later traces reuse them.
with model.trace("The Eiffel Tower is in the city of"):
    logits = model.lm_head.output.save()
print("dispatched:", model.dispatched, "| device:", model._model.device)
assert model.dispatched

hf = AutoModelForCausalLM.from_pretrained(folder)
ids = model.tokenizer("The Eiffel Tower is in the city of", return_tensors="pt")
with torch.no_grad():
    torch.testing.assert_close(logits.value, hf(**ids).logits)

# Other keyword arguments go to from_pretrained (dtype, device_map, revision, gguf_file, ...);
# dispatch=True loads at once.
model64 = LanguageModel(folder, dtype=torch.float64, dispatch=True)
assert model64.dispatched and model64.lm_head.weight.dtype == torch.float64

# A module you built yourself needs its tokenizer.
try:
    LanguageModel(hf)
except ModelKeyError as error:
    print("ModelKeyError:", error)
wrapped = LanguageModel(hf, tokenizer=model.tokenizer)
assert wrapped.dispatched and wrapped._model is hf
