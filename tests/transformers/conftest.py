"""Offline fixtures for the LanguageModel tests: a byte-level BPE tokenizer trained here and
tiny GPT-2 / Llama checkpoints saved with ``save_pretrained``.

Expected values always come from plain Hugging Face calls on a separately loaded
``AutoModelForCausalLM`` (``from_pretrained`` of the same folder) and raw
``register_forward_hook`` hooks, never from the library under test. The builders, prompts
and raw-hook helpers live in ``tests/helpers.py``.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import ARCHS, Tiny, hook_free, save_tiny_lms


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """Folders holding a saved tiny model and the tokenizer, one per architecture."""
    return save_tiny_lms(tmp_path_factory.mktemp("tiny_lms"))


@pytest.fixture(scope="session")
def _tinies(checkpoints) -> dict[str, Tiny]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for arch, folder in checkpoints.items():
        hf = AutoModelForCausalLM.from_pretrained(folder).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        out[arch] = Tiny(arch, folder, hf, tok, tok.eos_token_id)
    return out


@pytest.fixture(params=ARCHS)
def tiny(request, _tinies) -> Tiny:
    """The reference copy of one architecture (parametrized over GPT-2 and Llama)."""
    t = _tinies[request.param]
    yield t
    # Tests must leave the shared reference model as they found it.
    assert hook_free(t.hf), "a test left a hook on the shared reference model"


@pytest.fixture
def lm(tiny):
    """A fresh LanguageModel loaded lazily from the tiny checkpoint folder."""
    from nnsight_transformers import LanguageModel

    return LanguageModel(tiny.folder)


@pytest.fixture(scope="session")
def gpt2(_tinies) -> Tiny:
    return _tinies["gpt2"]


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """One intra-op thread: tiny models gain nothing from more, SmolLM2-135M barely (0.13 s vs
    0.12 s a forward), and on a busy 2-core machine OpenMP's spinning made a 32-wide matmul cost
    milliseconds and a SmolLM2 forward seconds. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
