"""``rename=`` on DiffusionModel: aliases of components and of child names; expected values from
the plain pipeline with raw forward hooks on the real modules."""

import pytest
import torch
from nnsight_diffusers import DiffusionModel

from nnsight_core import EnvoyAttributeError, RenameError
from nnsight_core.testing import hook_count

from tests.diffusers.test_diffusion import PROMPTS, RUN, run_plain
from tests.helpers import plain_pipeline as plain

RENAME = {"unet": "denoiser", "unet.mid_block": "middle", "resnets": "res"}


def test_aliases_reach_the_real_components(sd_folder):
    model = DiffusionModel(sd_folder, rename=RENAME)
    assert model.denoiser is model.unet and model.middle is model.unet.mid_block
    assert model.denoiser.down_blocks[0].res[0] is model.unet.down_blocks[0].resnets[0]
    assert repr(model) == repr(DiffusionModel(sd_folder))        # print shows the torch names
    assert {"denoiser", "middle", "unet"} <= set(dir(model))
    with pytest.raises(EnvoyAttributeError, match=r"aliases: .*res \(resnets\)"):
        model.middle.rez


def test_editing_through_an_alias_at_one_step_equals_the_raw_hook_edit(sd_folder):
    model = DiffusionModel(sd_folder, rename=RENAME)
    with torch.no_grad(), model.generate(PROMPTS, seed=0, **RUN) as tracer:
        first = model.denoiser.output[0].save()
        model.denoiser.next().next()                 # the third call: step 2
        model.denoiser.output[0][:, 1] = 0
        images = model.output.save()
    paths = {n.target[0] for n in tracer.graph.nodes if n.op in ("output", "set_output")}
    assert paths == {"unet", ""}                     # real paths: the unet, and the root (model.output)

    def edit(call, sample):
        if call == 2:
            sample[:, 1] = 0

    seen, expected = run_plain(plain(sd_folder), PROMPTS, edit=edit)
    torch.testing.assert_close(first.value, seen[0], rtol=0, atol=0)
    torch.testing.assert_close(images.value.images, expected, rtol=0, atol=0)
    assert hook_count(model._model) == 0


def test_a_bad_alias_is_a_rename_error(sd_folder):
    with pytest.raises(RenameError, match=r"model\.unet\.middle_block does not exist.*model\.unet has no "
                                          r"child 'middle_block'"):
        DiffusionModel(sd_folder, rename={"unet.middle_block": "middle"})
