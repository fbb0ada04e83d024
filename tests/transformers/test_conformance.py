"""The adapter passes the core's conformance suite (nnsight_core.testing.AdapterConformance)."""

import pytest
from nnsight_transformers import LanguageModel
from transformers import AutoTokenizer

from nnsight_core.testing import AdapterConformance

from tests.helpers import LONG, MID, SHORT


class _LanguageModelConformance(AdapterConformance):
    arch = ""
    # Batched and solo runs differ by float noise only.
    atol = 1e-4
    not_applicable = {"next": "a trace runs one forward pass, where every module of a decoder-only LM "
                              "runs once; generation steps (.next() across calls) are tested in "
                              "tests/transformers/test_generate.py"}

    @pytest.fixture(autouse=True)
    def _folder(self, checkpoints):
        self.folder = checkpoints[self.arch]

    def make_model(self):
        return LanguageModel(self.folder)          # lazy: the default way to load

    def make_inputs(self):
        # Prompts of different lengths (left-padded in the batch), two prompts in one invoke, ids.
        tok = AutoTokenizer.from_pretrained(self.folder)
        return [(SHORT,), (LONG,), ([MID, SHORT],), (tok(MID)["input_ids"],)]

    def grad_loss(self, output):
        # The root module returns a CausalLMOutputWithPast: differentiate its logits.
        return (output.logits ** 2).mean()

    def align(self, batched, solo):
        # Left padding: an invoke's own tokens are the last ones of the batch.
        return batched[:, -solo.shape[1]:]


class TestGPT2Conformance(_LanguageModelConformance):
    arch = "gpt2"
    module_path = "transformer.h.0"
    source_site = ("transformer.h.0", "attn_0", "transformer.h.0.attn")


class TestLlamaConformance(_LanguageModelConformance):
    arch = "llama"
    module_path = "model.layers.0"
    source_site = ("model.layers.0", "self_attn_0", "model.layers.0.self_attn")


class TestGPT2LogitsConformance(_LanguageModelConformance):
    """The same suite on the last module (edits there change the final tensor directly)."""

    arch = "gpt2"
    module_path = "lm_head"
