"""Standard names (``layers``, ``attn``, ``mlp``, ``embed``, ``ln_final``, ``lm_head``) on eight
decoder-only architectures, and ``rename=`` on LanguageModel.

Each architecture is a tiny seeded model saved with ``save_pretrained`` and loaded back through
LanguageModel's real ``from_pretrained`` path. Expected values come from a separately loaded
``AutoModelForCausalLM`` and raw forward hooks on the real module paths written out below
(independently of the library's table).
"""

import pytest
import torch

from nnsight_core import EnvoyAttributeError, RenameError
from nnsight_core.testing import hook_count
from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import TINY_ARCHITECTURES, tiny_checkpoint

PROMPT = "The Eiffel Tower is in the city of"

# model type -> the real torch paths (layer children relative to a layer).
REAL = {
    "gpt2": ("transformer.h", "attn", "mlp", "transformer.wte", "transformer.ln_f", "lm_head"),
    "llama": ("model.layers", "self_attn", "mlp", "model.embed_tokens", "model.norm", "lm_head"),
    "qwen2": ("model.layers", "self_attn", "mlp", "model.embed_tokens", "model.norm", "lm_head"),
    "mistral": ("model.layers", "self_attn", "mlp", "model.embed_tokens", "model.norm", "lm_head"),
    "gemma": ("model.layers", "self_attn", "mlp", "model.embed_tokens", "model.norm", "lm_head"),
    "phi": ("model.layers", "self_attn", "mlp", "model.embed_tokens", "model.final_layernorm", "lm_head"),
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp", "gpt_neox.embed_in", "gpt_neox.final_layer_norm",
                 "lm_head"),
    "opt": ("model.decoder.layers", "self_attn", "fc2", "model.decoder.embed_tokens",
            "model.decoder.final_layer_norm", "lm_head"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {arch: tiny_checkpoint(arch, str(root / arch)) for arch in TINY_ARCHITECTURES}


@pytest.fixture(scope="module")
def plain(folders):
    """A plain Hugging Face copy of each tiny model, for expected values."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return {arch: (AutoModelForCausalLM.from_pretrained(f).eval(), AutoTokenizer.from_pretrained(f))
            for arch, f in folders.items()}


def analysis(model):
    """One script for every architecture: the standard names only."""
    with model.trace(PROMPT):
        resid = [model.layers[i].output.save() for i in range(len(model.layers))]
        resid_in = model.layers[0].input.save()
        attn = model.layers[0].attn.output[0].save()
        mlp = model.layers[1].mlp.output.save()
        embed = model.embed.output.save()
        final = model.ln_final.output.save()
        logits = model.lm_head.output.save()
    return {"resid": [r.value for r in resid], "resid_in": resid_in.value, "attn": attn.value,
            "mlp": mlp.value, "embed": embed.value, "final": final.value, "logits": logits.value}


def raw(hf, tok, arch, edit_mlp=False):
    """The same values from raw hooks on the real paths of the plain model."""
    layers, attn, mlp, embed, final, head = REAL[arch]
    seen, handles = {}, []
    blocks = hf.get_submodule(layers)

    def keep(key, take=lambda a, o: o):
        return lambda m, a, o: seen.__setitem__(key, take(a, o))

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(keep(("resid", i))))
    handles.append(blocks[0].register_forward_hook(keep("resid_in", lambda a, o: a[0])))
    handles.append(getattr(blocks[0], attn).register_forward_hook(keep("attn", lambda a, o: o[0])))
    if edit_mlp:
        handles.append(getattr(blocks[0], mlp).register_forward_hook(lambda m, a, o: torch.zeros_like(o)))
    handles.append(getattr(blocks[1], mlp).register_forward_hook(keep("mlp")))
    handles.append(hf.get_submodule(embed).register_forward_hook(keep("embed")))
    handles.append(hf.get_submodule(final).register_forward_hook(keep("final")))
    handles.append(hf.get_submodule(head).register_forward_hook(keep("logits")))
    try:
        with torch.no_grad():
            out = hf(**tok(PROMPT, return_tensors="pt", return_token_type_ids=False))
    finally:
        for h in handles:
            h.remove()
    seen["resid"] = [seen.pop(("resid", i)) for i in range(len(blocks))]
    return seen, out.logits


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_one_analysis_script_equals_raw_hooks_on_the_real_paths(arch, folders, plain):
    model = LanguageModel(folders[arch])
    assert model.standard_names is True
    got = analysis(model)
    expected, logits = raw(*plain[arch], arch)
    for key in ("resid_in", "attn", "mlp", "embed", "final", "logits"):
        torch.testing.assert_close(got[key], expected[key], msg=f"{arch}: {key}")
    for i, (a, b) in enumerate(zip(got["resid"], expected["resid"])):
        torch.testing.assert_close(a, b, msg=f"{arch}: layers[{i}].output")
    torch.testing.assert_close(got["logits"], logits)
    assert hook_count(model._model) == 0


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_edit_through_a_standard_name_equals_a_raw_hook_edit(arch, folders, plain):
    model = LanguageModel(folders[arch])
    with model.trace(PROMPT):
        model.layers[0].mlp.output[:] = 0
        logits = model.lm_head.output.save()
    _, expected = raw(*plain[arch], arch, edit_mlp=True)
    torch.testing.assert_close(logits.value, expected)
    _, clean = raw(*plain[arch], arch)
    assert not torch.allclose(expected, clean)    # the edit matters


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_original_paths_and_print_are_unchanged(arch, folders, plain):
    model = LanguageModel(folders[arch])
    hf = plain[arch][0]
    assert repr(model) == repr(hf)
    layers, attn, mlp, embed, final, head = REAL[arch]
    envoy = model
    for part in layers.split("."):
        envoy = getattr(envoy, part)
    assert model.layers is envoy and model.layers[1].attn is getattr(envoy[1], attn)
    assert model.layers[0].mlp is getattr(envoy[0], mlp)
    with model.trace(PROMPT) as tracer:
        model.layers[1].attn.output[0].save()
        model.ln_final.output.save()
    paths = {n.target[0] for n in tracer.graph.nodes if n.op == "output"}
    assert paths == {f"{layers}.1.{attn}", final}            # graphs record the real paths
    assert {"layers", "embed", "ln_final", "lm_head"} <= set(dir(model))
    assert {"attn", "mlp"} <= set(dir(model.layers[0]))


def test_standard_names_off_keeps_only_the_real_names(folders):
    model = LanguageModel(folders["llama"], standard_names=False)
    assert model.standard_names is False
    assert model.model.layers[0].self_attn is not None
    with pytest.raises(EnvoyAttributeError, match=r"model\.layers does not exist.*children are: model, lm_head"):
        model.layers


def test_user_rename_extends_and_overrides_standard_names(folders, plain):
    model = LanguageModel(folders["llama"], rename={"model.layers": "blocks", "mlp": "ffn"})
    assert model.blocks is model.model.layers and model.blocks[0].ffn is model.model.layers[0].mlp
    assert model.embed is model.model.embed_tokens and model.blocks[1].attn is model.model.layers[1].self_attn
    with pytest.raises(EnvoyAttributeError):
        model.layers                              # "model.layers" now has the user's alias
    with model.trace(PROMPT):
        out = model.blocks[1].ffn.output.save()
    expected, _ = raw(*plain["llama"], "llama")
    torch.testing.assert_close(out.value, expected["mlp"])


def _opt_without_final_norm(folder):
    """OPT with ``do_layer_norm_before=False`` (as opt-350m): no final layer norm."""
    from transformers import OPTConfig, OPTForCausalLM

    from nnsight_transformers.testing import _tokenizer
    vocab = _tokenizer(folder)
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                             num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64,
                             do_layer_norm_before=False, eos_token_id=0, bos_token_id=0,
                             pad_token_id=0)).save_pretrained(folder)
    return folder


def test_structure_mismatch_is_a_clear_error_at_load(tmp_path):
    folder = _opt_without_final_norm(str(tmp_path))
    with pytest.raises(RenameError) as info:
        LanguageModel(folder)
    message = str(info.value)
    assert "'opt' model (OPTForCausalLM)" in message
    assert "ln_final: model.model.decoder.final_layer_norm does not exist" in message
    assert "rename={'<real path of ln_final>': 'ln_final'}" in message and "standard_names=False" in message
    # Either fix works: name it yourself, or load without standard names.
    named = LanguageModel(folder, rename={"model.decoder.layers.1.final_layer_norm": "ln_final"})
    assert named.ln_final is named.model.decoder.layers[1].final_layer_norm and named.layers[0].attn
    assert LanguageModel(folder, standard_names=False).standard_names is False


def test_other_heads_get_no_standard_names_by_default_and_an_error_when_required(tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = tiny_checkpoint("llama", str(tmp_path))
    model = LanguageModel(folder, automodel=AutoModelForSequenceClassification)
    assert model.standard_names is False and type(model._model).__name__ == "LlamaForSequenceClassification"
    with pytest.raises(RenameError, match=r"lm_head: model\.lm_head does not exist"):
        LanguageModel(folder, automodel=AutoModelForSequenceClassification, standard_names=True)
    named = LanguageModel(folder, automodel=AutoModelForSequenceClassification, standard_names=True,
                          rename={"score": "lm_head"})
    assert named.lm_head is named.score and named.layers is named.model.layers


def test_required_standard_names_on_an_unknown_architecture_name_every_missing_one(tmp_path):
    from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    bloom = BloomForCausalLM(BloomConfig(vocab_size=300, hidden_size=32, n_layer=2, n_head=4))
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("gpt2", str(tmp_path)))
    assert LanguageModel(bloom, tokenizer=tok).standard_names is False     # default: off, no error
    with pytest.raises(RenameError, match=r"layers: no built-in entry for model type 'bloom'.*"
                                          r"lm_head: no built-in entry"):
        LanguageModel(bloom, tokenizer=tok, standard_names=True)
    model = LanguageModel(bloom, tokenizer=tok, standard_names=True,
                          rename={"transformer.h": "layers", "self_attention": "attn", "mlp": "mlp",
                                  "transformer.word_embeddings": "embed", "transformer.ln_f": "ln_final",
                                  "lm_head": "lm_head"})
    assert model.layers[1].attn is model.transformer.h[1].self_attention
    assert model.model_key == "BloomForCausalLM"
