"""Invokes under classifier-free guidance: each owns both of its halves of the doubled batch."""

import tempfile

import torch
from diffusers import DiffusionPipeline

from nnsight_diffusers import DiffusionModel
from nnsight_diffusers.testing import tiny_stable_diffusion

folder = tiny_stable_diffusion(tempfile.mkdtemp())
pipeline = DiffusionPipeline.from_pretrained(folder)
pipeline.set_progress_bar_config(disable=True)
model = DiffusionModel(pipeline)
options = {"num_inference_steps": 3, "guidance_scale": 7.5, "output_type": "pt"}

with torch.no_grad(), model.generate(seed=0, **options) as tracer:
    with tracer.invoke("a photo of a cat"):
        cat = model.unet.output[0].save()
    with tracer.invoke(["the red dog", "a blue cat"]):
        dogs = model.unet.output[0].clone().save()
        # Target one half only: the second half of an invoke's rows is the conditional pass.
        model.unet.output[0][2:] = 0
print("invoke 0 sees", tuple(cat.value.shape), "- invoke 1 sees", tuple(dogs.value.shape))

# Plain diffusers: the UNet sees [uncond x3, cond x3]; invoke 0 owns rows 0 and 3,
# invoke 1 rows 1, 2, 4 and 5. The same edit by a raw hook gives the same images.
seen = []


def hook(module, args, out):
    seen.append(out[0].clone())
    if len(seen) == 1:
        out[0][[4, 5]] = 0


handle = pipeline.unet.register_forward_hook(hook)
with torch.no_grad():
    expected = pipeline(["a photo of a cat", "the red dog", "a blue cat"],
                        generator=[torch.Generator().manual_seed(0) for _ in range(3)], **options)
handle.remove()
assert torch.equal(cat.value, seen[0][[0, 3]])
assert torch.equal(dogs.value, seen[0][[1, 2, 4, 5]])
assert torch.equal(tracer.output.images, expected.images)
print("each invoke read and edited only its own rows")
