"""Per-denoising-step cost in function calls (``nnsight_core.testing.call_counts``), pinned.

A denoising step is one call of the denoiser, so what a trace adds per step is the
difference between runs of ``n + 1`` and ``n`` steps, minus the same difference of an
empty trace (which adds nothing per step: checked against the plain pipeline). Python
call counts are deterministic, so these tests guard the per-step hot path in CI.

A failure means a denoising step of a trace got dearer; find the new calls with
``sys.setprofile``, or raise the bound with a reason in the commit.
"""

from __future__ import annotations

import torch
from nnsight_diffusers import DiffusionModel

from nnsight_core.testing import CallCounts, call_counts
from tests.helpers import plain_pipeline

PROMPT = "a photo of a cat"
#: Python calls a `.all()` save of the denoiser's output may add per step (target 12, a raw
#: hook's cost; pinned at what it costs now: the hook and its event, copying the saved template).
SAVE_PER_STEP = 5
#: Python calls an in-place edit of the denoiser's output in `tracer.all()` may add per step (11:
#: three template copies, two nodes run, the hook event, the copy of the UNet's output tuple).
EDIT_PER_STEP = 11


def _per_step(make) -> CallCounts:
    """The mean cost of a step over two steps (the pipeline's own steps differ by a call or two)."""
    with torch.no_grad():
        two, four = call_counts(make(2)), call_counts(make(4))
    extra = four - two
    return CallCounts(round(extra.python / 2), round(extra.c / 2))


def _traced(model, body):
    def make(n):
        def run():
            with model.generate(PROMPT, num_inference_steps=n, output_type="pt", seed=0) as tracer:
                body(tracer)
        return run
    return make


def test_per_step_costs_of_saves_and_edits(sd_folder):
    model = DiffusionModel(sd_folder, dispatch=True)
    pipe = plain_pipeline(sd_folder)
    pipe.set_progress_bar_config(disable=True)
    raw = _per_step(lambda n: lambda: pipe(PROMPT, num_inference_steps=n, output_type="pt",
                                           generator=torch.Generator().manual_seed(0)))
    empty = _per_step(_traced(model, lambda tracer: None))
    assert abs(empty.python - raw.python) <= 1, (
        f"an empty trace now adds {empty.python - raw.python} Python calls per denoising step: "
        "something runs per step although the graph hooks no module.")

    def save(tracer):
        model.unet.all().output.save()

    def edit(tracer):
        with tracer.all():
            model.unet.output[0][:] = 0

    saved = _per_step(_traced(model, save)) - empty
    assert saved.python <= SAVE_PER_STEP, (
        f"`.all().output.save()` of the denoiser now costs {saved.python} Python calls per step "
        f"(bound {SAVE_PER_STEP}).")
    edited = _per_step(_traced(model, edit)) - empty
    assert edited.python <= EDIT_PER_STEP, (
        f"an in-place edit of the denoiser's output in `tracer.all()` now costs {edited.python} "
        f"Python calls per step (bound {EDIT_PER_STEP}).")
