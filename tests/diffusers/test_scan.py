"""Scan on fake tensors with DiffusionModel (tiny Stable Diffusion and DiT): shapes of every
denoising step before the pipeline loads, per invoke under classifier-free guidance.

Expected shapes come from raw forward hooks on the plain pipeline; expected images from the
plain pipeline with the same seeds (the scan must not disturb the real run).
"""

import pytest
import torch
from nnsight_diffusers import DiffusionModel

from nnsight_core import AssignmentError
from nnsight_core.testing import hook_count

from tests.helpers import generators, plain_pipeline as plain

STEPS = 2
RUN = {"num_inference_steps": STEPS, "output_type": "pt"}
CASES = {"sd": ("sd_folder", "unet", ["a photo of a cat", "the red dog"], "prompt"),
         "dit": ("dit_folder", "transformer", [3, 5], "class_labels")}


def plain_run(folder, component, inputs, key):
    """Per-call sample shapes of the denoiser and the VAE decoder's output shape, and the images."""
    pipe = plain(folder)
    samples, decoded = [], []
    handles = [getattr(pipe, component).register_forward_hook(
                   lambda m, a, out: samples.append(out[0].shape)),
               pipe.vae.decoder.register_forward_hook(lambda m, a, out: decoded.append(out.shape))]
    try:
        with torch.no_grad():
            images = pipe(**{key: inputs}, generator=generators(0, len(inputs)), **RUN).images
    finally:
        for handle in handles:
            handle.remove()
    return samples, decoded, images


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_step_has_its_shape_before_the_pipeline_loads(case, request):
    fixture, component, inputs, key = CASES[case]
    folder = request.getfixturevalue(fixture)
    samples, decoded, images = plain_run(folder, component, inputs, key)
    assert len(samples) == STEPS and samples[0][0] == 2 * len(inputs)  # guidance doubles the batch
    model = DiffusionModel(folder)
    shapes = []
    with torch.no_grad(), model.generate(seed=0, **RUN) as tracer:
        for prompt in inputs:
            with tracer.invoke(prompt):
                denoiser = getattr(model, component)
                shapes.append([denoiser.output[0].shape, denoiser.next().output[0].shape,
                               model.vae.decoder.output.shape])
        assert not model.dispatched  # the scan loaded no weights
    # Each invoke owns its unconditional and its conditional row of every step.
    for first, second, image in shapes:
        assert first == second == (2, *samples[0][1:]) and samples[1] == samples[0]
        assert image == (1, *decoded[0][1:])
    torch.testing.assert_close(tracer.output.images, images, rtol=0, atol=0)
    assert hook_count(model._model.vae) == 0


def test_a_wrongly_shaped_edit_of_a_step_fails_before_loading(sd_folder):
    model = DiffusionModel(sd_folder)
    with pytest.raises(AssignmentError, match="before the model ran"):
        with torch.no_grad(), model.generate("a photo of a cat", seed=0, **RUN):
            model.unet.output[0][:] = torch.zeros(2, 4, 8, 8)            # fine: in place, step 0
            model.unet.next().output = (torch.zeros(2, 4, 4, 4),)        # step 1: half the resolution
    assert not model.dispatched
