"""One analysis script, eight architectures: LanguageModel's standard names."""

import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nnsight_core import RenameError
from nnsight_transformers import LanguageModel
from nnsight_transformers.names import ARCHITECTURES
from nnsight_transformers.testing import TINY_ARCHITECTURES, tiny_checkpoint

PROMPT = "The Eiffel Tower is in the city of"


def analysis(model):
    """Written once, with the standard names only."""
    with model.trace(PROMPT):
        residual = model.layers[-1].output.save()              # the residual stream after the last layer
        attn = model.layers[0].attn.output[0].save()
        model.layers[0].mlp.output[:] = 0                      # knock out the first MLP
        logits = model.lm_head.output.t[-1].save()
    return residual.value, attn.value, logits.value


print(f"{'model type':10} {'layers':22} {'attn':10} {'mlp':5} {'ln_final'}")
for arch in TINY_ARCHITECTURES:
    folder = tiny_checkpoint(arch)              # tiny, seeded, saved with save_pretrained
    model = LanguageModel(folder)               # the standard names are on, checked at load
    residual, attn, logits = analysis(model)
    real = ARCHITECTURES[arch]
    print(f"{arch:10} {real['layers']:22} {real['attn']:10} {real['mlp']:5} {real['ln_final']}")

    # Expected values: the plain Hugging Face model with raw hooks on the real paths.
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt", return_token_type_ids=False)
    layers = hf.get_submodule(real["layers"])
    seen = {}
    handles = [layers[-1].register_forward_hook(lambda m, a, o: seen.__setitem__("residual", o)),
               getattr(layers[0], real["attn"]).register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o[0])),
               getattr(layers[0], real["mlp"]).register_forward_hook(lambda m, a, o: torch.zeros_like(o))]
    with torch.no_grad():
        expected = hf(**ids).logits[:, -1]
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(residual, seen["residual"])
    torch.testing.assert_close(attn, seen["attn"])
    torch.testing.assert_close(logits, expected)
    assert model.model_key == folder and repr(model) == repr(hf)   # print(model) keeps torch's names

# Checked at load: an OPT without a final layer norm (like opt-350m) does not fit.
from transformers import OPTConfig, OPTForCausalLM  # noqa: E402

folder = tiny_checkpoint("opt")
OPTForCausalLM(OPTConfig(vocab_size=300, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                         num_attention_heads=4, word_embed_proj_dim=32,
                         do_layer_norm_before=False)).save_pretrained(folder)
try:
    LanguageModel(folder)
except RenameError as error:
    print(f"RenameError: {error}")
model = LanguageModel(folder, rename={"model.decoder.layers.1.final_layer_norm": "ln_final"})
assert model.ln_final is model.model.decoder.layers[1].final_layer_norm
