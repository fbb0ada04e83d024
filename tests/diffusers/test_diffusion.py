"""DiffusionModel on tiny Stable Diffusion and DiT pipelines; expected values from the plain pipeline and raw hooks."""

import pytest
import torch
from nnsight_diffusers import DiffusionModel

from nnsight_core import InputError, MissedCallError, ModelKeyError
from nnsight_core.testing import hook_count

from tests.helpers import generators, plain_pipeline as plain

PROMPTS = ["a photo of a cat", "the red dog"]
STEPS = 3
RUN = {"num_inference_steps": STEPS, "output_type": "pt"}


def run_plain(pipe, inputs, seed=0, module="unet", edit=None, **kwargs):
    """Run the plain pipeline with a raw forward hook on ``module``; return (per-call outputs, images).

    ``edit(call, sample)`` may change the module's output sample in place at any call.
    """
    seen = []

    def hook(mod, args, output):
        sample = output[0].clone()
        if edit is not None:
            edit(len(seen), sample)
        seen.append(sample.detach().clone())
        return (sample,) + tuple(output[1:]) if isinstance(output, tuple) else type(output)(sample=sample)

    key = "prompt" if module == "unet" else "class_labels"
    handle = getattr(pipe, module).register_forward_hook(hook)
    try:
        with torch.no_grad():
            images = pipe(**{key: inputs}, generator=generators(seed, len(inputs),
                                                                 kwargs.get("num_images_per_prompt", 1)),
                          **{**RUN, **kwargs}).images
    finally:
        handle.remove()
    return seen, images


def zero_rows(rows):
    """A raw-hook edit zeroing ``rows`` of the first call's sample."""
    def edit(call, sample):
        if call == 0:
            sample[rows] = 0
    return edit


def test_components_are_envoys_and_print_as_one_tree(sd_folder):
    model = DiffusionModel(sd_folder)
    text = repr(model)
    for name in ("(unet): UNet2DConditionModel", "(vae): AutoencoderKL", "(text_encoder): CLIPTextModel"):
        assert name in text
    assert type(model.unet.down_blocks[0]._module).__name__ == "CrossAttnDownBlock2D"
    assert model.scheduler is model.pipeline.scheduler


def test_a_folder_loads_lazily_on_the_meta_device(sd_folder):
    model = DiffusionModel(sd_folder)
    assert not model.dispatched
    assert {p.device.type for p in model._model.parameters()} == {"meta"}
    with torch.no_grad(), model.trace(PROMPTS[0], seed=0):
        model.unet.output[0].save()
    assert model.dispatched
    assert {p.device.type for p in model._model.parameters()} == {"cpu"}


def test_from_pretrained_kwargs_pass_through(sd_folder):
    model = DiffusionModel(sd_folder, dtype=torch.float64, dispatch=True)
    assert model.unet._module.dtype == torch.float64


def test_a_pipeline_object_is_wrapped_as_is(sd_folder):
    pipe = plain(sd_folder)
    model = DiffusionModel(pipe)
    assert model.pipeline is pipe and model.dispatched and model.unet._module is pipe.unet
    assert model.model_key == type(pipe).__name__ == "StableDiffusionPipeline"   # the seed: a str
    assert DiffusionModel(sd_folder).model_key == sd_folder


def test_generate_with_a_seed_equals_the_plain_pipeline(sd_folder):
    model = DiffusionModel(sd_folder)
    with torch.no_grad(), model.generate(PROMPTS, seed=3, **RUN):
        images = model.output.save()
    _, expected = run_plain(plain(sd_folder), PROMPTS, seed=3)
    torch.testing.assert_close(images.value.images, expected, rtol=0, atol=0)


def test_a_generator_passes_through(sd_folder):
    model = DiffusionModel(sd_folder)
    with torch.no_grad(), model.generate(PROMPTS[0], generator=torch.Generator().manual_seed(7), **RUN) as tracer:
        pass
    with torch.no_grad():
        expected = plain(sd_folder)(PROMPTS[0], generator=torch.Generator().manual_seed(7), **RUN).images
    torch.testing.assert_close(tracer.output.images, expected, rtol=0, atol=0)


def test_trace_runs_one_denoising_step(sd_folder):
    model = DiffusionModel(sd_folder)
    with torch.no_grad(), model.trace(PROMPTS[0], seed=0, output_type="pt") as tracer:
        first = model.unet.output[0].save()
    seen, expected = run_plain(plain(sd_folder), [PROMPTS[0]], num_inference_steps=1)
    assert len(seen) == 1
    torch.testing.assert_close(first.value, seen[0], rtol=0, atol=0)
    torch.testing.assert_close(tracer.output.images, expected, rtol=0, atol=0)


def test_saving_the_denoiser_at_every_step_equals_raw_hooks(sd_folder):
    model = DiffusionModel(sd_folder)
    with torch.no_grad(), model.generate(PROMPTS, seed=0, **RUN):
        steps = []
        for _ in range(STEPS):
            steps.append(model.unet.output[0].save())
            model.unet.next()
    seen, _ = run_plain(plain(sd_folder), PROMPTS)
    assert len(steps) == len(seen) == STEPS
    for step, expected in zip(steps, seen):
        torch.testing.assert_close(step.value, expected, rtol=0, atol=0)


def test_editing_only_step_2_equals_the_same_raw_hook_edit(sd_folder):
    model = DiffusionModel(sd_folder)
    with torch.no_grad(), model.generate(PROMPTS, seed=0, **RUN):
        model.unet.next().next()                     # the third call: step 2
        model.unet.output[0][:, 1] = 0
        images = model.output.save()

    def edit(call, sample):
        if call == 2:
            sample[:, 1] = 0

    _, expected = run_plain(plain(sd_folder), PROMPTS, edit=edit)
    _, unedited = run_plain(plain(sd_folder), PROMPTS)
    torch.testing.assert_close(images.value.images, expected, rtol=0, atol=0)
    assert not torch.equal(images.value.images, unedited)


def test_invokes_with_guidance_read_and_edit_only_their_own_rows(sd_folder):
    """The denoiser sees [uncond 0, uncond 1, cond 0, cond 1]; invoke i owns rows i and 2 + i."""
    model = DiffusionModel(sd_folder)
    with torch.no_grad(), model.generate(seed=0, guidance_scale=7.5, **RUN) as tracer:
        with tracer.invoke(PROMPTS[0]):
            first = model.unet.output[0].save()
        with tracer.invoke(PROMPTS[1]):
            second = model.unet.output[0].clone().save()   # saved values are references
            model.unet.output[0][:] = model.unet.output[0] * 0.5
            edited = model.unet.output[0].save()
            images = model.output.save()

    def edit(call, sample):
        if call == 0:
            sample[[1, 3]] *= 0.5

    seen, expected = run_plain(plain(sd_folder), PROMPTS, edit=edit)
    torch.testing.assert_close(first.value, seen[0][[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(edited.value, seen[0][[1, 3]], rtol=0, atol=0)
    torch.testing.assert_close(second.value * 0.5, seen[0][[1, 3]], rtol=0, atol=0)
    assert not torch.equal(second.value, edited.value)
    torch.testing.assert_close(images.value.images, expected[1:], rtol=0, atol=0)
    torch.testing.assert_close(tracer.output.images, expected, rtol=0, atol=0)


def test_several_images_per_prompt_map_to_their_invoke(sd_folder):
    """Two images per prompt and guidance: the denoiser's 8 rows are [u0 u0 u1 u1 c0 c0 c1 c1]."""
    model = DiffusionModel(sd_folder)
    with torch.no_grad(), model.generate(seed=0, num_images_per_prompt=2, **RUN) as tracer:
        with tracer.invoke(PROMPTS[0]):
            first = model.unet.output[0].save()
            first_images = model.output.save()
        with tracer.invoke(PROMPTS[1]):
            model.unet.output[0][:] = 0
    seen, expected = run_plain(plain(sd_folder), PROMPTS, num_images_per_prompt=2,
                               edit=zero_rows([2, 3, 6, 7]))
    torch.testing.assert_close(first.value, seen[0][[0, 1, 4, 5]], rtol=0, atol=0)
    torch.testing.assert_close(first_images.value.images, expected[:2], rtol=0, atol=0)
    torch.testing.assert_close(tracer.output.images, expected, rtol=0, atol=0)


def test_the_text_encoder_runs_once_per_guidance_branch(sd_folder):
    model = DiffusionModel(sd_folder)
    with torch.no_grad(), model.trace(seed=0) as tracer:
        with tracer.invoke(PROMPTS[0]):
            cond = model.text_encoder.output[0].save()
            uncond = model.text_encoder.next().output[0].save()
        with tracer.invoke(PROMPTS[1]):
            other = model.text_encoder.output[0].save()
    pipe = plain(sd_folder)
    with torch.no_grad():
        ids = pipe.tokenizer(PROMPTS + [""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        expected = pipe.text_encoder(ids)[0]
    torch.testing.assert_close(cond.value, expected[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(other.value, expected[1:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(uncond.value, expected[2:], rtol=0, atol=1e-6)


# -- a transformer-based, class-conditioned pipeline (DiT: no tokenizer) -------------


def test_dit_generate_and_every_step_equal_raw_hooks(dit_folder):
    model = DiffusionModel(dit_folder)
    with torch.no_grad(), model.generate([1, 4], seed=2, **RUN):
        steps = [model.transformer.output[0].save()]
        for _ in range(STEPS - 1):
            steps.append(model.transformer.next().output[0].save())
        images = model.output.save()
    seen, expected = run_plain(plain(dit_folder), [1, 4], seed=2, module="transformer")
    for step, raw in zip(steps, seen, strict=True):
        torch.testing.assert_close(step.value, raw, rtol=0, atol=0)
    torch.testing.assert_close(images.value.images, expected, rtol=0, atol=0)


def test_dit_invokes_own_both_guidance_halves(dit_folder):
    """DiT doubles the batch as [cond 0, cond 1, uncond 0, uncond 1]."""
    model = DiffusionModel(dit_folder)
    with torch.no_grad(), model.generate(seed=2, **RUN) as tracer:
        with tracer.invoke(1):
            first = model.transformer.output[0].save()
        with tracer.invoke([4]):
            model.transformer.output[0][:] = 0
    seen, expected = run_plain(plain(dit_folder), [1, 4], seed=2, module="transformer",
                               edit=zero_rows([1, 3]))
    torch.testing.assert_close(first.value, seen[0][[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(tracer.output.images, expected, rtol=0, atol=0)


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("inputs, message", [
    ((3,), "takes text prompts"),
    (([],), "empty list"),
    (("a", "b"), "one input"),
])
def test_bad_prompt_inputs(sd_folder, inputs, message):
    model = DiffusionModel(sd_folder)
    with pytest.raises(InputError, match=message):
        with model.trace(*inputs):
            pass
    assert hook_count(model._model) == 0


def test_bad_class_labels(dit_folder):
    model = DiffusionModel(dit_folder)
    with pytest.raises(InputError, match="unknown class label 'zebra'"):
        with model.trace("zebra"):
            pass
    with pytest.raises(InputError, match="class labels"):
        with model.trace(1.5):
            pass


def test_invoke_keyword_arguments_belong_to_the_trace(sd_folder):
    model = DiffusionModel(sd_folder)
    with pytest.raises(InputError, match="guidance_scale must go to trace"):
        with model.trace() as tracer:
            with tracer.invoke(PROMPTS[0], guidance_scale=2.0):
                pass


def test_seed_and_generator_together_are_refused(sd_folder):
    model = DiffusionModel(sd_folder)
    with pytest.raises(InputError, match="seed= or generator="):
        with torch.no_grad(), model.trace(PROMPTS[0], seed=0, generator=torch.Generator()):
            model.unet.output.save()
    assert hook_count(model._model) == 0


def test_a_plain_module_is_refused():
    with pytest.raises(ModelKeyError, match="wrap a single module with NNsight"):
        DiffusionModel(torch.nn.Linear(2, 2))


# -- every step, or a range of steps (the core's iteration) ----------------------------


def test_all_saves_the_denoiser_at_every_step(sd_folder):
    model = DiffusionModel(sd_folder)
    with torch.no_grad(), model.generate(PROMPTS, seed=0, **RUN):
        steps = model.unet.all().output[0].save()
    seen, _ = run_plain(plain(sd_folder), PROMPTS)
    assert len(steps.value) == STEPS
    for got, want in zip(steps.value, seen, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_an_iteration_block_edits_later_steps_per_invoke(sd_folder):
    """Steps 1 and 2 of the second invoke only: its rows 1 and 3 of each doubled batch."""
    model = DiffusionModel(sd_folder)
    with torch.no_grad(), model.generate(seed=0, **RUN) as tracer:
        with tracer.invoke(PROMPTS[0]):
            pass
        with tracer.invoke(PROMPTS[1]):
            with tracer.iter[1:]:
                model.unet.output[0][:] = model.unet.output[0] * 0.9

    def edit(call, sample):
        if call >= 1:
            sample[[1, 3]] *= 0.9

    _, expected = run_plain(plain(sd_folder), PROMPTS, edit=edit)
    torch.testing.assert_close(tracer.output.images, expected, rtol=0, atol=0)


def test_a_step_that_never_happens_raises(sd_folder):
    model = DiffusionModel(sd_folder)
    with pytest.raises(MissedCallError, match=r"model\.unet\.output \(call 3\) never reached call 3: "
                                              r"model\.unet ran 3 time"):
        with torch.no_grad(), model.generate(PROMPTS[0], seed=0, **RUN):
            model.unet.iter[3].output.save()
    assert hook_count(model._model) == 0


def test_class_label_names_map_to_their_ids(dit_folder):
    pipe = plain(dit_folder)
    pipe.labels = {"cat": 0, "dog": 1}          # what DiTPipeline builds from its id2label
    model = DiffusionModel(pipe)
    with torch.no_grad(), model.generate(["dog", "cat"], seed=1, **RUN) as named:
        pass
    _, expected = run_plain(plain(dit_folder), [1, 0], seed=1, module="transformer")
    torch.testing.assert_close(named.output.images, expected, rtol=0, atol=0)
