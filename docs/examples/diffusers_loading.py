"""DiffusionModel: a pipeline folder loads lazily; every model component is an envoy."""

import tempfile

import torch
from diffusers import DiffusionPipeline

from nnsight_diffusers import DiffusionModel
from nnsight_diffusers.testing import tiny_stable_diffusion

# A tiny Stable-Diffusion-style pipeline with random weights, saved like a real one.
folder = tiny_stable_diffusion(tempfile.mkdtemp())

model = DiffusionModel(folder)            # components built on the meta device, no weights read
print(type(model.pipeline).__name__, "dispatched:", model.dispatched)
print([name for name, _ in model._model.named_children()])
print(model.unet.conv_in)                            # modules print as torch prints them
print("scheduler:", type(model.scheduler).__name__)  # other attributes come from the pipeline

with torch.no_grad(), model.trace("a photo of a cat", seed=0):
    latents = model.unet.output[0].save()             # trace(): one denoising step
print("dispatched:", model.dispatched, "noise prediction:", tuple(latents.value.shape))

# A pipeline object is wrapped as it is.
pipeline = DiffusionPipeline.from_pretrained(folder)
pipeline.set_progress_bar_config(disable=True)
wrapped = DiffusionModel(pipeline)
assert wrapped.unet._module is pipeline.unet
