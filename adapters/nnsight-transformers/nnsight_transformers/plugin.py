"""Hook implementations for :class:`~nnsight_transformers.LanguageModel`.

Loading builds the model on the meta device from its config (no weight file
read) until dispatch; inputs are tokenized per invoke and left-padded to one
batch; execution runs the forward pass (with position ids computed from the
attention mask) or ``generate``.

The plugin manager imports this module for every trace of every model, so it
imports nothing heavy: ``transformers`` is imported only where a
``LanguageModel`` (whose module already imported it) is being handled.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import sys
import typing
from collections.abc import Mapping
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import torch

from nnsight_core import BatchError, InputError, ModelKeyError, hookimpl

# Arguments only generate() uses: a forward pass (trace) would silently ignore them.
_GENERATE_ONLY = frozenset({"max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample",
                            "temperature", "top_k", "top_p", "num_beams", "num_return_sequences",
                            "repetition_penalty", "streamer", "stopping_criteria", "logits_processor",
                            "generation_config"})
# Keywords that give an encoder-decoder's forward pass its decoder inputs.
_DECODER_INPUTS = frozenset({"decoder_input_ids", "decoder_inputs_embeds", "labels"})
# from_pretrained arguments that name the checkpoint, so config and tokenizer need them too.
_CHECKPOINT_KWARGS = ("revision", "gguf_file", "subfolder", "trust_remote_code", "cache_dir", "token",
                      "local_files_only", "force_download")


def _owns(model: Any) -> bool:
    # A LanguageModel can only exist once its module was imported; no need to import it here.
    module = sys.modules.get("nnsight_transformers.model")
    return module is not None and isinstance(model, module.LanguageModel)


def share_pad_token(module: torch.nn.Module, tokenizer: Any) -> None:
    """Give a sequence classifier without a pad token the tokenizer's, so invokes can batch.

    Classifiers that pool the last real token (GPT-2, Llama, ...) find it through
    ``config.pad_token_id`` and refuse batches of more than one row without it;
    with left padding the last position is always a real token, so the
    tokenizer's pad token (eos when it had none) is right. Models that have a pad
    token keep it.
    """
    config = getattr(module, "config", None)
    if (type(module).__name__.endswith("ForSequenceClassification") and config is not None
            and getattr(config, "pad_token_id", 0) is None and tokenizer.pad_token_id is not None):
        config.pad_token_id = tokenizer.pad_token_id


@hookimpl
def nnsight_load(model: Any, model_key: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                 meta: bool) -> Optional[torch.nn.Module]:
    if not _owns(model):
        return None
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoTokenizer

    if isinstance(model_key, torch.nn.Module):
        return model_key
    if not isinstance(model_key, (str, os.PathLike)):
        raise ModelKeyError(f"LanguageModel takes a model id, a folder or a module, not "
                            f"{type(model_key).__name__}.")
    checkpoint = {k: kwargs[k] for k in _CHECKPOINT_KWARGS if k in kwargs}
    if model.tokenizer is None:
        model.__dict__["tokenizer"] = AutoTokenizer.from_pretrained(
            model_key, **{**checkpoint, **model.tokenizer_kwargs})
    if meta:
        config = AutoConfig.from_pretrained(model_key, **checkpoint)
        # The skeleton has the dtype the weights will load in, so a scan before dispatch reports it.
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        extra = {"dtype": dtype} if isinstance(dtype, torch.dtype) else {}
        with init_empty_weights():
            return model.automodel.from_config(
                config, trust_remote_code=checkpoint.get("trust_remote_code", False), **extra)
    module = model.automodel.from_pretrained(model_key, *args, **kwargs)
    share_pad_token(module, model.tokenizer)
    return module


@hookimpl
def nnsight_prepare_inputs(model: Any, inputs: Tuple[Any, ...],
                           kwargs: Dict[str, Any]) -> Optional[Tuple[Dict[str, torch.Tensor], int]]:
    if not _owns(model):
        return None
    if len(inputs) != 1:
        raise InputError(f"a LanguageModel invoke takes one input (a prompt, prompts, token ids or a "
                         f"dict with input_ids), got {len(inputs)}; open one invoke per input.")
    value = inputs[0]
    tokenizer = model.tokenizer
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and value
                                  and all(isinstance(v, str) for v in value)):
        if kwargs.get("return_tensors", "pt") != "pt" or kwargs.get("padding_side", "left") != "left":
            raise InputError("an invoke's tokenizer arguments cannot change return_tensors or "
                             "padding_side: LanguageModel needs PyTorch tensors padded on the left.")
        options = {"padding": True, "return_tensors": "pt", "return_token_type_ids": False, **kwargs}
        encoded = tokenizer([value] if isinstance(value, str) else list(value), **options)
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
    else:
        if kwargs:
            raise InputError(f"keyword arguments of an invoke ({', '.join(kwargs)}) go to the "
                             "tokenizer, so they only apply when the invoke's input is text.")
        ids, mask = _ids_and_mask(value, tokenizer.pad_token_id)
    if ids.shape[1] == 0 or not bool(mask.sum(-1).all()):
        raise InputError(f"the invoke's input {value!r} has a prompt with no tokens: give every "
                         "prompt at least one token.")
    _check_vocabulary(model._model, ids)
    return {"input_ids": ids, "attention_mask": mask}, ids.shape[0]


@hookimpl
def nnsight_batch_inputs(model: Any, prepared: List[Dict[str, torch.Tensor]],
                         batch_sizes: List[int]) -> Optional[Dict[str, torch.Tensor]]:
    if not _owns(model):
        return None
    width = max(p["input_ids"].shape[1] for p in prepared)
    pad = model.tokenizer.pad_token_id
    ids = [_pad_left(p["input_ids"], width, pad) for p in prepared]
    masks = [_pad_left(p["attention_mask"], width, 0) for p in prepared]
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}


@hookimpl
def nnsight_execute(model: Any, batched: Dict[str, torch.Tensor], kwargs: Dict[str, Any],
                    method: Optional[str]) -> Any:
    if not _owns(model):
        return None
    module = model._model
    if method is None:
        ignored = sorted(_GENERATE_ONLY.intersection(kwargs))
        if ignored:
            raise InputError(f"trace() was given generate() arguments ({', '.join(ignored)}): a trace runs "
                             f"one forward pass and would ignore them; use model.generate(..., {ignored[0]}=...).")
    _check_keywords(module, method or "forward", kwargs)
    if _pools_first_token(module) and not bool(batched["attention_mask"][:, 0].all()):
        raise BatchError(
            f"{type(module).__name__} pools its first token (a BERT-style pooler), but LanguageModel "
            "pads prompts of different token counts on the left, so a shorter prompt's first token would "
            "be padding and its result wrong: run prompts of equal token counts together, or one "
            "prompt per trace.")
    device = module.device
    batched = {k: v.to(device) for k, v in batched.items()}
    if method == "generate":
        kwargs.setdefault("pad_token_id", model.tokenizer.pad_token_id)
        output = module.generate(**batched, **kwargs)
        return model._attached["generator"](output)
    if method is not None:
        return getattr(module, method)(**batched, **kwargs)
    if getattr(module.config, "is_encoder_decoder", False) and not _DECODER_INPUTS.intersection(kwargs):
        # A forward pass of an encoder-decoder needs decoder inputs: by default its first step.
        rows = batched["input_ids"].shape[0]
        kwargs["decoder_input_ids"] = torch.full((rows, 1), _decoder_start(module), device=device)
    if "position_ids" not in kwargs and _takes_position_ids(type(module)):
        # Left padding must not shift absolute positions (GPT-2): count real tokens only.
        kwargs["position_ids"] = (batched["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    return module(**batched, **kwargs)


def _pools_first_token(module: torch.nn.Module) -> bool:
    """Whether the model's result is read from its first token (a pooler on an encoder's output)."""
    base = getattr(module, "base_model", None)
    return getattr(base, "pooler", None) is not None and not module.can_generate()


def _decoder_start(module: torch.nn.Module) -> int:
    """The token an encoder-decoder's decoder starts from.

    Raises:
        InputError: The config names none (then the trace must pass ``decoder_input_ids``).
    """
    for config in (getattr(module, "generation_config", None), module.config):
        start = getattr(config, "decoder_start_token_id", None)
        if isinstance(start, int):
            return start
    raise InputError(f"{type(module).__name__} is an encoder-decoder whose config has no "
                     "decoder_start_token_id: pass the decoder's inputs, "
                     "model.trace(prompt, decoder_input_ids=...).")


def _check_keywords(module: torch.nn.Module, method: str, kwargs: Dict[str, Any]) -> None:
    """Raise before the model runs if a keyword argument of trace()/generate() is one the model
    would silently ignore (a ``**kwargs`` swallows any name) or reject.

    Accepted for ``forward``: see :func:`_forward_keywords`. For ``generate``: those, the
    named parameters of ``generate`` and ``prepare_inputs_for_generation``, the keywords
    ``generate`` takes from its ``**kwargs`` (``tokenizer``, ...) and every field of a
    ``GenerationConfig`` (the default one and the model's). With ``custom_generate`` (a
    recipe with its own arguments), nothing is checked; for other methods, only methods
    without ``**kwargs`` are.

    Raises:
        InputError: Naming the keyword, the model class and the accepted names.
    """
    cls = type(module)
    if method == "generate":
        if "custom_generate" in kwargs:
            return
        config = getattr(module, "generation_config", None)
        accepted = _generate_keywords(cls) | {k for k in vars(config or object()) if not k.startswith("_")}
    elif method == "forward":
        accepted = _forward_keywords(cls)
    else:
        accepted = _named_keywords(getattr(cls, method, None), strict_only=True)
    unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
    if not unknown:
        return
    close = [m for name in unknown for m in difflib.get_close_matches(name, accepted, n=1)]
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    if method == "generate":
        takes = (f"generate()'s own arguments, any GenerationConfig field (max_new_tokens, do_sample, "
                 f"temperature, top_p, ...) and what {cls.__name__}.forward() accepts: "
                 f"{', '.join(sorted(_forward_keywords(cls)))}")
    else:
        takes = ", ".join(sorted(accepted)) or "none"
    raise InputError(f"{cls.__name__}.{method}() takes no keyword argument {', '.join(map(repr, unknown))} "
                     f"(given to {'generate' if method == 'generate' else 'trace'}()), so the model would "
                     f"ignore or reject it.{hint} It accepts {takes}.")


@functools.lru_cache(maxsize=None)
def _forward_keywords(cls: type) -> FrozenSet[str]:
    """The keywords ``cls.forward`` takes: its named parameters, the keys of the TypedDict in a
    ``**kwargs: Unpack[...]`` annotation (``TransformersKwargs``, ``FlashAttentionKwargs``), and,
    when it has ``**kwargs``, what every transformers model takes through them: ``return_dict``
    (read by the ``can_return_tuple`` decorator), ``TransformersKwargs`` (model-agnostic:
    ``output_attentions``, ``output_hidden_states``, ...; also for a ``**kwargs`` without an
    annotation, as ``generate``'s own validation assumes) and the old names of renamed
    keywords (``past_key_values`` for ``cache``)."""
    forward = cls.forward
    named = _named_keywords(forward, strict_only=False)
    var_keyword = _var_keyword(forward)
    if var_keyword is None:
        return named
    from transformers.utils.generic import TransformersKwargs

    typed = _typed_dict_keys(var_keyword.annotation) or frozenset()
    common = _typed_dict_keys(TransformersKwargs) or frozenset()
    return named | typed | common | {"return_dict"} | _renamed_keywords(forward)


@functools.lru_cache(maxsize=None)
def _generate_keywords(cls: type) -> FrozenSet[str]:
    from transformers import GenerationConfig

    generate = cls.generate
    own = _named_keywords(generate, strict_only=False) | _renamed_keywords(generate)
    prepare = _named_keywords(getattr(cls, "prepare_inputs_for_generation", None), strict_only=False)
    # generate() pops these from its **kwargs itself (the tokenizer is needed for stop_strings).
    popped = {"tokenizer", "assistant_tokenizer", "trust_remote_code"}
    fields = {k for k in vars(GenerationConfig()) if not k.startswith("_")}
    return own | prepare | popped | fields | _forward_keywords(cls)


def _named_keywords(function: Any, strict_only: bool) -> Optional[FrozenSet[str]]:
    """Names ``function`` takes as keywords (``self`` and ``*args``/``**kwargs`` aside); with
    ``strict_only``, None when it also has ``**kwargs`` (then any name may be meaningful)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None if strict_only else frozenset()
    if strict_only and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                               inspect.Parameter.KEYWORD_ONLY)) - {"self"}


def _var_keyword(function: Any) -> Optional[inspect.Parameter]:
    """The ``**kwargs`` parameter of ``function`` (annotations evaluated where possible), or None."""
    for evaluate in (True, False):
        try:
            parameters = inspect.signature(function, eval_str=evaluate).parameters.values()
        except (TypeError, ValueError, NameError, SyntaxError):  # eval_str: names only under TYPE_CHECKING
            continue
        return next((p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    return None


def _typed_dict_keys(annotation: Any) -> Optional[FrozenSet[str]]:
    """Keys of a TypedDict, or of the TypedDict in ``Unpack[...]``; None for anything else."""
    if repr(typing.get_origin(annotation)).endswith("Unpack"):  # typing's or typing_extensions'
        annotation = typing.get_args(annotation)[0]
    if not typing.is_typeddict(annotation):
        return None
    return frozenset(annotation.__required_keys__ | annotation.__optional_keys__)


def _renamed_keywords(function: Any) -> FrozenSet[str]:
    """Old keyword names that transformers' ``deprecate_kwarg`` decorators around ``function``
    still accept (and rename): each decorator's wrapper holds its ``old_name``."""
    names = set()
    while function is not None:
        code = getattr(function, "__code__", None)
        if code is not None and "old_name" in code.co_freevars and function.__closure__:
            value = function.__closure__[code.co_freevars.index("old_name")].cell_contents
            if isinstance(value, str):
                names.add(value)
        function = getattr(function, "__wrapped__", None)
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def _takes_position_ids(cls: type) -> bool:
    return "position_ids" in inspect.signature(cls.forward).parameters


def _ids_and_mask(value: Any, pad_id: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    mask = None
    if isinstance(value, Mapping):
        unknown = set(value) - {"input_ids", "attention_mask", "token_type_ids"}
        if "input_ids" not in value or unknown:
            raise InputError(f"a dict input needs 'input_ids' (and may have 'attention_mask'); got "
                             f"keys {sorted(value)}.")
        mask = value.get("attention_mask")
        value = value["input_ids"]
    if isinstance(value, torch.Tensor):
        ids = value
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        ids = torch.tensor([list(value)])
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        ids = _rows(value, pad_id or 0)
        if mask is None:
            mask = _rows([[1] * len(row) for row in value], 0)
        elif not isinstance(mask, torch.Tensor):
            mask = _rows(mask, 0)
    else:
        raise InputError(f"LanguageModel cannot use a {type(value).__name__} as input: give a prompt "
                         "str, a list of prompts, token ids (List[int], List[List[int]], 1-D or 2-D "
                         "tensor) or a dict with input_ids.")
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.is_floating_point():
        raise InputError(f"token ids must be integers of shape (tokens,) or (batch, tokens), got "
                         f"{ids.dtype} of shape {tuple(ids.shape)}.")
    if mask is None:
        mask = torch.ones_like(ids)
    elif not isinstance(mask, torch.Tensor):
        mask = torch.tensor(mask)
    mask = mask[None] if mask.dim() == 1 else mask
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask of shape {tuple(mask.shape)} does not match input_ids of "
                         f"shape {tuple(ids.shape)}.")
    return ids.long(), mask.long()


def _check_vocabulary(module: torch.nn.Module, ids: torch.Tensor) -> None:
    """Raise if a token id has no row in the input embedding (e.g. tokens added to the
    tokenizer without resizing the model's embeddings).

    Raises:
        InputError: Naming the offending id and the vocabulary size.
    """
    embeddings = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    size = getattr(embeddings, "num_embeddings", None)
    if size is None or ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise InputError(f"token id {bad} is outside the model's vocabulary of {size} ids (0-{size - 1}): "
                         "give ids the tokenizer produced, or resize the embeddings after adding "
                         "tokens (model._model.resize_token_embeddings(len(model.tokenizer))).")


def _rows(rows: Any, pad: int) -> torch.Tensor:
    """Ragged rows of ints as one left-padded 2-D tensor."""
    width = max(len(row) for row in rows)
    return torch.cat([_pad_left(torch.tensor([list(row)], dtype=torch.long), width, pad) for row in rows])


def _pad_left(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (missing, 0), value=value)
