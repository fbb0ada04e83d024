"""Fixtures of the reliability suites: the tiny models (built once per session) and each subject.

The subjects and the state checks themselves live in ``tests/reliability/subjects.py``.
"""

from __future__ import annotations

from typing import Dict, Iterator

import pytest
import torch

from tests.helpers import save_tiny_lms
from tests.reliability.subjects import SUBJECTS, Subject, make_subject


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Dict[str, str]:
    """Tiny GPT-2 and Llama checkpoints (as tests/transformers builds them) and a tiny SD pipeline."""
    from nnsight_diffusers.testing import tiny_stable_diffusion

    root = tmp_path_factory.mktemp("reliability_models")
    folders = save_tiny_lms(root)

    folders["diffusion"] = tiny_stable_diffusion(root / "diffusion")
    return folders


@pytest.fixture(params=SUBJECTS)
def subject(request, checkpoints) -> Subject:
    """Each adapter's tiny model in turn: NNsight, LanguageModel (GPT-2, Llama), DiffusionModel."""
    return make_subject(request.param, checkpoints)


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny and the machine may be busy (see tests/transformers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
