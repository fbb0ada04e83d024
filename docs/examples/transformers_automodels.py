"""LanguageModel(..., automodel=...): encoder-decoders, classifiers and masked LMs."""

import torch
from transformers import (AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification,
                          AutoTokenizer)

from nnsight_core import UnsupportedMethodError
from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import tiny_checkpoint

# A T5: the encoder runs once, the decoder once per generated token.
folder = tiny_checkpoint("t5")
t5 = LanguageModel(folder, automodel=AutoModelForSeq2SeqLM)
with t5.generate("The Eiffel Tower is in", max_new_tokens=3):
    last_input_token = t5.encoder.final_layer_norm.output.t[-1].save()   # .t: the encoder's tokens
    steps = t5.decoder.block[1].all().output[0].save()                    # one value per step
    t5.lm_head.next().output[:, -1, 7] = 1e4                              # step 1 only: token 7
    ids = t5.generator.output.save()
print("T5 decoder ids:", ids.value.tolist(), "| steps:", len(steps.value))
assert ids.value[0, 2].item() == 7 and last_input_token.value.shape == (1, 32)

# A trace of an encoder-decoder runs the decoder's first step (or pass decoder_input_ids=...).
hf = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
prompt_ids = AutoTokenizer.from_pretrained(folder)("Paris", return_tensors="pt")["input_ids"]
with t5.trace("Paris"):
    logits = t5.output.logits.save()
with torch.no_grad():
    start = torch.tensor([[hf.config.decoder_start_token_id]])
    torch.testing.assert_close(logits.value, hf(input_ids=prompt_ids, decoder_input_ids=start).logits)

# A sequence classifier: read and edit its logits.
classifier = LanguageModel(tiny_checkpoint("bert", automodel=AutoModelForSequenceClassification),
                           automodel=AutoModelForSequenceClassification)
with classifier.trace("The Eiffel Tower is in the city of"):
    classifier.classifier.output[:, 0] = 5.0
    scores = classifier.output.logits.save()
print("classifier logits:", scores.value.shape, "| label 0 forced:", scores.value[0, 0].item())

# A masked LM: the logits at the mask.
masked = LanguageModel(tiny_checkpoint("bert", automodel=AutoModelForMaskedLM), automodel=AutoModelForMaskedLM)
with masked.trace(f"The Eiffel Tower is in {masked.tokenizer.mask_token}"):
    at_mask = masked.output.logits.t[-1].save()
print("masked LM logits at the mask:", tuple(at_mask.value.shape))

# What does not apply is a clear error.
try:
    classifier.generate("Paris", max_new_tokens=2)
except UnsupportedMethodError as error:
    print(f"UnsupportedMethodError: {error}")
