"""generate(): read the denoiser at every step, and edit one step only."""

import tempfile

import torch
from diffusers import DiffusionPipeline

from nnsight_diffusers import DiffusionModel
from nnsight_diffusers.testing import tiny_stable_diffusion

folder = tiny_stable_diffusion(tempfile.mkdtemp())
pipeline = DiffusionPipeline.from_pretrained(folder)
pipeline.set_progress_bar_config(disable=True)
model = DiffusionModel(pipeline)
steps = 4
options = {"num_inference_steps": steps, "output_type": "pt"}

# The UNet runs once per denoising step: .next() moves on to the next step.
with torch.no_grad(), model.generate("a photo of a cat", seed=0, **options):
    predictions = []
    for _ in range(steps):
        predictions.append(model.unet.output[0].save())
        model.unet.next()
    images = model.output.save()
print(len(predictions), "steps, each", tuple(predictions[0].value.shape))  # guidance: 2 rows

# The same with plain diffusers and a forward hook. seed=0 means image k of every
# prompt starts from torch.Generator().manual_seed(0 + k).
seen = []
handle = pipeline.unet.register_forward_hook(lambda m, a, out: seen.append(out[0]))
with torch.no_grad():
    expected = pipeline("a photo of a cat", generator=[torch.Generator().manual_seed(0)], **options)
handle.remove()
for got, want in zip(predictions, seen, strict=True):
    assert torch.equal(got.value, want)
assert torch.equal(images.value.images, expected.images)

# Edit step 2 only: skip two calls, then zero the prediction's first channel.
with torch.no_grad(), model.generate("a photo of a cat", seed=0, **options) as tracer:
    model.unet.next().next().output[0][:, 0] = 0
change = (tracer.output.images - expected.images).abs().max()
print(f"largest pixel change from editing step 2: {change:.3f}")
assert change > 0
