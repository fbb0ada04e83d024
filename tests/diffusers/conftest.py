"""Tiny diffusers pipelines, built once per session from configs and saved to disk.

Every test loads them back through ``DiffusionPipeline.from_pretrained`` (the
plain pipeline, for expected values: ``tests.helpers.plain_pipeline``) or ``DiffusionModel``
(the adapter).
"""

import pytest
import torch
from diffusers.utils import logging as diffusers_logging
from nnsight_diffusers.testing import tiny_dit, tiny_stable_diffusion

diffusers_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    return tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def dit_folder(tmp_path_factory):
    return tiny_dit(tmp_path_factory.mktemp("tiny-dit"))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

