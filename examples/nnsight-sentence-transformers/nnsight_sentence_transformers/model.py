"""SentenceTransformerModel: read and edit a sentence-transformers embedding model while it encodes.

``SentenceTransformer.encode()`` sorts its inputs by length and runs them in
mini-batches, so the rows its modules see are not in the caller's order. A
trace needs invoke *i* to own rows ``[a, b)`` of every module it touches, so
:func:`encode` runs the same steps as ``encode()`` on the whole batch at once,
in invoke order: ``preprocess`` (tokenize, pad on the right), one forward pass
of the ``SentenceTransformer``, then ``encode()``'s post-processing
(truncation, normalization, quantization, conversion). The embeddings equal
``encode()``'s to float tolerance: mean pooling ignores padding, so the width
of the padded batch does not change a sentence's embedding.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from sentence_transformers import SentenceTransformer, quantize_embeddings
from sentence_transformers.util import batch_to_device, truncate_embeddings

from nnsight_core import InputError, ModelKeyError, NNsightModel

__all__ = ["ENCODE_OPTIONS", "SentenceTransformerModel", "encode", "load"]

#: The ``encode()`` arguments a trace honours (as keyword arguments of ``trace``), with their defaults.
ENCODE_OPTIONS: Dict[str, Any] = {
    "prompt_name": None,
    "prompt": None,
    "output_value": "sentence_embedding",
    "precision": "float32",
    "convert_to_numpy": True,
    "convert_to_tensor": False,
    "normalize_embeddings": False,
    "truncate_dim": None,
}

# encode() arguments about how to split or place the work, which one batched forward pass cannot honour.
_NOT_FOR_A_TRACE = {
    "batch_size": "a trace runs all its invokes as one batch, in invoke order",
    "device": "move the model with model.to(device) before the trace",
    "pool": "a trace runs in this process",
    "chunk_size": "a trace runs in this process",
}
_PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


class SentenceTransformerModel(NNsightModel):
    """Wraps a ``SentenceTransformer`` so its layers can be read and edited while it encodes sentences.

    Example:
        >>> model = SentenceTransformerModel(minilm_folder())      # meta skeleton, weights at the first trace
        >>> with model.trace(["A man is eating food.", "A cat sleeps."]) as tracer:
        ...     hidden = model[0].model.encoder.layer[3].output.save()
        >>> tracer.output.shape, hidden.value.shape                # ((2, 384), (2, tokens, 384))

    Args:
        model_key: A model folder or hub id (loaded lazily), or a ``SentenceTransformer``.
        *args: Passed to ``SentenceTransformer(model_key, ...)``.
        dispatch: Load the real weights at once instead of at the first trace.
        **kwargs: Passed to ``SentenceTransformer(model_key, ...)`` (``device``,
            ``model_kwargs``, ``trust_remote_code``, ``truncate_dim``, ...).

    Inputs of ``trace``/``invoke``: one sentence ``str``, or a list of them; each
    sentence is one row, and invokes own consecutive rows in invoke order.
    Keyword arguments of ``trace`` are ``encode()``'s (see :data:`ENCODE_OPTIONS`)
    or the model's own (``task``, ``processing_kwargs``). After the trace,
    ``tracer.output`` is what ``encode()`` returns for the same sentences: by
    default a ``(sentences, dim)`` numpy array.

    Raises:
        ModelKeyError: ``model_key`` is a module that is not a ``SentenceTransformer``
            (also a ``TypeError``).
    """

    def __init__(self, model_key: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(model_key, torch.nn.Module) and not isinstance(model_key, SentenceTransformer):
            raise ModelKeyError(
                f"SentenceTransformerModel wraps a SentenceTransformer, not a {type(model_key).__name__}: "
                "pass SentenceTransformer(...) or its folder or hub id; wrap other modules with "
                "nnsight_torch.NNsight.")
        super().__init__(model_key, *args, **kwargs)


def load(model_key: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], meta: bool) -> SentenceTransformer:
    """Build the ``SentenceTransformer`` for a key: on the meta device (a skeleton) or with its weights.

    Raises:
        ModelKeyError: ``model_key`` is not a path or hub id (also a ``TypeError``).
    """
    if not isinstance(model_key, (str, os.PathLike)):
        raise ModelKeyError(f"SentenceTransformerModel takes a model folder, a hub id or a "
                            f"SentenceTransformer, not {type(model_key).__name__} {model_key!r}.")
    if meta:
        kwargs = {**kwargs, "device": "meta"}
    return SentenceTransformer(os.fspath(model_key), *args, **kwargs)


def encode(model: SentenceTransformer, sentences: Sequence[str], kwargs: Dict[str, Any]) -> Any:
    """What ``model.encode(sentences, **kwargs)`` returns, computed in one forward pass in the given order.

    Args:
        model: The sentence-transformers model.
        sentences: Every invoke's sentences, in invoke order.
        kwargs: ``encode()`` options (see :data:`ENCODE_OPTIONS`) and the model's own keyword arguments.

    Returns:
        The embeddings, one row per sentence: a numpy array by default, a tensor with
        ``convert_to_tensor=True``, a list of tensors with ``convert_to_numpy=False``.

    Raises:
        InputError: A keyword argument that a trace cannot honour, or a bad value for one.
    """
    options, model_kwargs = _split_options(model, kwargs)
    prompt = _prompt(model, options["prompt"], options["prompt_name"])
    model.eval()  # as encode() does: no dropout
    features = model.preprocess(list(sentences), prompt=prompt, **model_kwargs)
    # A plain dict, not the tokenizer's BatchEncoding: the core narrows a value to an invoke's rows
    # through torch's pytree, which walks dicts but treats an unregistered mapping as one leaf.
    features = model(dict(batch_to_device(features, model.device)), **model_kwargs)
    return _postprocess(model, features["sentence_embedding"], options)


def _split_options(model: SentenceTransformer, kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Sort a trace's keyword arguments into encode() options and the model's own arguments."""
    options = dict(ENCODE_OPTIONS)
    model_kwargs = {}
    own = set(model.get_model_kwargs()) | {"task", "processing_kwargs"}
    for name, value in kwargs.items():
        if name in options:
            options[name] = value
        elif name in own:
            model_kwargs[name] = value
        elif name in _NOT_FOR_A_TRACE:
            raise InputError(f"encode()'s {name}= does not apply to a trace: {_NOT_FOR_A_TRACE[name]}.")
        elif name != "show_progress_bar":  # one forward pass: there is no progress to show
            raise InputError(f"a SentenceTransformerModel trace got an unknown keyword argument {name}=: "
                             f"it takes encode()'s {', '.join(ENCODE_OPTIONS)} and the model's "
                             f"{', '.join(sorted(own))}.")
    if options["output_value"] != "sentence_embedding":
        raise InputError(f"a trace returns sentence embeddings, not output_value="
                         f"{options['output_value']!r}: read token embeddings inside the trace with "
                         "model.output['token_embeddings'].save().")
    if options["precision"] not in _PRECISIONS:
        raise InputError(f"precision={options['precision']!r} is not one of {', '.join(_PRECISIONS)}.")
    return options, model_kwargs


def _prompt(model: SentenceTransformer, prompt: Optional[str], prompt_name: Optional[str]) -> Optional[str]:
    """The prompt to put before every sentence: given, named, or the model's default."""
    if prompt is not None and prompt_name is not None:
        raise InputError(f"give prompt= or prompt_name=, not both (got prompt={prompt!r} and "
                         f"prompt_name={prompt_name!r}).")
    if prompt is not None:
        return prompt
    if prompt_name is None:
        return model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None
    if prompt_name not in model.prompts:
        raise InputError(f"prompt_name={prompt_name!r} is not one of this model's prompts "
                         f"({', '.join(map(repr, model.prompts)) or 'none'}); pass prompt='...' instead.")
    return model.prompts[prompt_name]


def _postprocess(model: SentenceTransformer, embeddings: torch.Tensor, options: Dict[str, Any]) -> Any:
    """encode()'s steps after the forward pass, in its order."""
    truncate_dim = options["truncate_dim"] if options["truncate_dim"] is not None else model.truncate_dim
    if truncate_dim is not None:
        embeddings = truncate_embeddings(embeddings, truncate_dim)
    if options["normalize_embeddings"]:
        embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
    to_tensor = options["convert_to_tensor"]
    to_numpy = options["convert_to_numpy"] and not to_tensor
    if to_numpy or options["precision"] != "float32":
        # encode() runs under inference mode; a trace may record gradients, which numpy cannot hold.
        embeddings = embeddings.detach().cpu()
    if options["precision"] != "float32":
        embeddings = quantize_embeddings(embeddings, precision=options["precision"])
    if to_tensor:
        return torch.as_tensor(embeddings)
    if to_numpy:
        return embeddings if isinstance(embeddings, np.ndarray) else _to_numpy(embeddings)
    return list(torch.from_numpy(embeddings) if isinstance(embeddings, np.ndarray) else embeddings)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
