"""Hook implementations for :class:`~nnsight_sentence_transformers.SentenceTransformerModel`.

Registered under the ``nnsight_core`` entry-point group as ``sentence_transformers``
(see this distribution's ``pyproject.toml``). Each hook answers only for
``SentenceTransformerModel`` and returns ``None`` for every other wrapper, so
the plugin manager asks the next adapter.

The plugin manager imports this module for every trace of every model, so it
imports nothing heavy: ``sentence_transformers`` is reached through
:mod:`nnsight_sentence_transformers.model` only while handling a
``SentenceTransformerModel``, whose creation already imported it.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from nnsight_core import InputError, hookimpl


def _owns(model: Any) -> bool:
    # A SentenceTransformerModel exists only once its module was imported: no need to import it here.
    module = sys.modules.get("nnsight_sentence_transformers.model")
    return module is not None and isinstance(model, module.SentenceTransformerModel)


@hookimpl
def nnsight_load(model: Any, model_key: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                 meta: bool) -> Optional[torch.nn.Module]:
    """Build the ``SentenceTransformer``: on the meta device when ``meta``, else with its weights."""
    if not _owns(model):
        return None
    from .model import load

    return load(model_key, args, kwargs, meta)


@hookimpl
def nnsight_prepare_inputs(model: Any, inputs: Tuple[Any, ...],
                           kwargs: Dict[str, Any]) -> Optional[Tuple[Tuple[str, ...], int]]:
    """One invoke's sentences, as a tuple, and their count (one row each)."""
    if not _owns(model):
        return None
    if kwargs:
        raise InputError(f"an invoke of a SentenceTransformerModel takes no keyword arguments (got "
                         f"{', '.join(kwargs)}): pass encode() options such as prompt= or "
                         "normalize_embeddings= to trace(), where they apply to every invoke.")
    if len(inputs) != 1:
        raise InputError(f"a SentenceTransformerModel invoke takes one input, a sentence or a list of "
                         f"sentences, got {len(inputs)}: pass several sentences as one list.")
    sentences = _sentences(inputs[0])
    return sentences, len(sentences)


@hookimpl
def nnsight_batch_inputs(model: Any, prepared: List[Tuple[str, ...]],
                         batch_sizes: List[int]) -> Optional[List[str]]:
    """All invokes' sentences in invoke order, so invoke ``i`` owns the rows after invokes ``0..i-1``."""
    if not _owns(model):
        return None
    return [sentence for sentences in prepared for sentence in sentences]


@hookimpl
def nnsight_execute(model: Any, batched: Sequence[str], kwargs: Dict[str, Any],
                    method: Optional[str]) -> Any:
    """Run ``encode()``'s pipeline on the batch in one forward pass and return the embeddings."""
    if not _owns(model) or method is not None:
        return None
    from .model import encode

    return encode(model._model, batched, kwargs)


def _sentences(value: Any) -> Tuple[str, ...]:
    """An invoke's input as a tuple of sentences, or an InputError saying what is wrong with it."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise InputError(f"SentenceTransformerModel encodes text: an invoke's input is a sentence str "
                         f"or a list of them, not a {type(value).__name__}.")
    if not value:
        raise InputError("an invoke got an empty list of sentences: give it at least one sentence.")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InputError(f"item {i} of the invoke's list of sentences is a {type(item).__name__}, "
                             f"not a str: {item!r}.")
    return tuple(value)
