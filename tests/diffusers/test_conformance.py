"""DiffusionModel passes the core's conformance suite (nnsight_core.testing.AdapterConformance)."""

import pytest
from nnsight_diffusers import DiffusionModel

from nnsight_core.testing import AdapterConformance

# A diffusers pipeline's __call__ is decorated with torch.no_grad(): nothing inside it has a gradient.
NO_GRAD = {"grad": "the diffusers pipeline runs under torch.no_grad()"}
# Two denoising steps: the denoiser (and every module in it) runs once per step.
TWO_STEPS = {"num_inference_steps": 2}


class TestStableDiffusionConformance(AdapterConformance):
    module_path = "unet"
    output_index = 0
    # A fixed seed: every prompt starts from the same noise, batched or alone.
    trace_kwargs = {"seed": 0, "output_type": "pt"}
    atol = 1e-5
    repeated_module_path = "unet"
    repeated_kwargs = TWO_STEPS
    not_applicable = NO_GRAD

    @pytest.fixture(autouse=True)
    def _folder(self, sd_folder):
        self.folder = sd_folder

    def make_model(self):
        return DiffusionModel(self.folder)

    def make_inputs(self):
        return [("a photo of a cat",), (["the red dog", "a blue cat"],), ("a dog",)]


class TestDiTConformance(AdapterConformance):
    module_path = "transformer.transformer_blocks.0"
    source_site = ("transformer.transformer_blocks.0", "attn1_0", "transformer.transformer_blocks.0.attn1")
    trace_kwargs = {"seed": 0, "output_type": "pt"}
    atol = 1e-5
    repeated_module_path = "transformer.transformer_blocks.0"
    repeated_kwargs = TWO_STEPS
    not_applicable = NO_GRAD

    @pytest.fixture(autouse=True)
    def _folder(self, dit_folder):
        self.folder = dit_folder

    def make_model(self):
        return DiffusionModel(self.folder)

    def make_inputs(self):
        return [(3,), ([0, 1],)]
