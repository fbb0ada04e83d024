"""UnsupportedMethodError: generate() on a model that cannot generate."""

from transformers import AutoModelForSequenceClassification

from nnsight_core import UnsupportedMethodError
from nnsight_core.testing import hook_count
from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import tiny_checkpoint

folder = tiny_checkpoint("bert", automodel=AutoModelForSequenceClassification)
model = LanguageModel(folder, automodel=AutoModelForSequenceClassification)


def no_hooks_left() -> bool:
    """After any error the model holds no hook of the library."""
    return hook_count(model._model) == 0


# The mistake: a classifier has no next-token head to generate with.
try:
    model.generate("The Eiffel Tower is in", max_new_tokens=3)
except UnsupportedMethodError as error:
    print(f"{type(error).__name__}: {error}")
else:
    raise AssertionError("expected UnsupportedMethodError")

# The fix: trace it (or load a causal or seq2seq LM to generate).
with model.trace("The Eiffel Tower is in"):
    logits = model.output.logits.save()
assert logits.value.shape == (1, 3)
assert no_hooks_left()
