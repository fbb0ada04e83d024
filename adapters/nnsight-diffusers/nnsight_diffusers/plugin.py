"""Hook implementations for :class:`~nnsight_diffusers.DiffusionModel`.

Loading builds a pipeline whose model components sit on the meta device (no
weight file read) until dispatch; each invoke's prompts (or class labels) are
listed, invokes are concatenated, and execution calls the pipeline once.

The plugin manager imports this module for every trace of every model, so it
imports nothing heavy: ``diffusers`` is imported only while a
``DiffusionModel`` (whose module already imported it) is being handled.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch

from nnsight_core import InputError, ModelKeyError, hookimpl

# from_pretrained arguments that name the checkpoint, so the meta skeleton needs them too.
_CHECKPOINT_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "subfolder")
# Component libraries the meta skeleton can build from a config; others load real weights at once.
_META_LIBRARIES = ("diffusers", "transformers")


def _owns(model: Any) -> bool:
    module = sys.modules.get("nnsight_diffusers.model")
    return module is not None and isinstance(model, module.DiffusionModel)


@hookimpl
def nnsight_load(model: Any, model_key: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                 meta: bool) -> Optional[torch.nn.Module]:
    if not _owns(model):
        return None
    from diffusers import DiffusionPipeline

    from .model import Diffuser

    if not isinstance(model_key, (str, os.PathLike)):
        raise ModelKeyError(f"DiffusionModel takes a pipeline id, a folder or a DiffusionPipeline, "
                            f"not {type(model_key).__name__}.")
    if meta:
        skeleton = _meta_pipeline(model_key, {k: kwargs[k] for k in _CHECKPOINT_KWARGS if k in kwargs})
        if skeleton is not None:
            return Diffuser(skeleton)
    return Diffuser(DiffusionPipeline.from_pretrained(model_key, *args, **kwargs))


def _meta_pipeline(key: Any, checkpoint: Dict[str, Any]) -> Any:
    """The pipeline with its model components built from their configs on the meta device.

    Tokenizers, schedulers and other light components are loaded as they are.
    Returns None (load for real) when a component comes from a library other
    than diffusers or transformers.
    """
    import diffusers
    from accelerate import init_empty_weights
    from diffusers import DiffusionPipeline

    config = DiffusionPipeline.load_config(key, **checkpoint)
    pipeline_class = getattr(diffusers, config["_class_name"], None)
    if pipeline_class is None:
        return None
    accepted = inspect.signature(pipeline_class.__init__).parameters
    parts: Dict[str, Any] = {}
    for name, spec in config.items():
        if name.startswith("_") or name not in accepted:
            continue
        if not (isinstance(spec, (list, tuple)) and len(spec) == 2):
            parts[name] = spec  # a plain setting (requires_safety_checker, id2label, ...)
            continue
        library, class_name = spec
        if library is None:
            parts[name] = None
            continue
        if library not in _META_LIBRARIES:
            return None
        cls = getattr(importlib.import_module(library), class_name)
        sub = {**checkpoint, "subfolder": os.path.join(checkpoint.get("subfolder", ""), name).strip("/")}
        if issubclass(cls, torch.nn.Module):
            with init_empty_weights():
                parts[name] = _empty(cls, key, sub)
        else:
            parts[name] = cls.from_pretrained(key, **sub)
    return pipeline_class(**parts)


def _empty(cls: type, key: Any, sub: Dict[str, Any]) -> torch.nn.Module:
    if hasattr(cls, "load_config") and hasattr(cls, "from_config"):  # a diffusers ModelMixin
        return cls.from_config(cls.load_config(key, **sub))
    config = cls.config_class.from_pretrained(key, **sub)  # a transformers PreTrainedModel
    return cls._from_config(config)


@hookimpl
def nnsight_prepare_inputs(model: Any, inputs: Tuple[Any, ...],
                           kwargs: Dict[str, Any]) -> Optional[Tuple[List[Any], int]]:
    if not _owns(model):
        return None
    if kwargs:
        raise InputError(f"a DiffusionModel invoke takes only its prompts or class labels; "
                         f"{', '.join(sorted(kwargs))} must go to trace()/generate() instead, where "
                         "they apply to the whole pipeline call.")
    if len(inputs) != 1:
        raise InputError(f"a DiffusionModel invoke takes one input (a prompt, a list of prompts, a "
                         f"class label or a list of labels), got {len(inputs)}; open one invoke per input.")
    value = inputs[0]
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    name = _input_name(model)
    if not items:
        raise InputError(f"the invoke's input is an empty list: give at least one {name[:-1]}.")
    if name == "prompts":
        if not all(isinstance(v, str) for v in items):
            raise InputError(f"{type(model.pipeline).__name__} takes text prompts: give a str or a list "
                             f"of str, not {type(value).__name__}.")
    else:
        items = [_label(model, v) for v in items]
    return items, len(items)


def _input_name(model: Any) -> str:
    parameters = inspect.signature(type(model.pipeline).__call__).parameters
    if "prompt" in parameters:
        return "prompts"
    if "class_labels" in parameters:
        return "class labels"
    raise InputError(f"DiffusionModel does not know how to give inputs to {type(model.pipeline).__name__}: "
                     "its __call__ takes neither `prompt` nor `class_labels`.")


def _label(model: Any, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"{type(model.pipeline).__name__} takes class labels (int, or a label name), "
                         f"not {type(value).__name__}.")
    if isinstance(value, str):
        labels = getattr(model.pipeline, "labels", None) or {}
        if value not in labels:
            known = ", ".join(sorted(labels)[:10]) or "none: the pipeline has no id2label"
            raise InputError(f"unknown class label {value!r} (known labels: {known}); pass its int id.")
        return labels[value]
    return value


@hookimpl
def nnsight_batch_inputs(model: Any, prepared: List[List[Any]], batch_sizes: List[int]) -> Optional[List[Any]]:
    if not _owns(model):
        return None
    return [item for items in prepared for item in items]


@hookimpl
def nnsight_execute(model: Any, batched: List[Any], kwargs: Dict[str, Any], method: Optional[str]) -> Any:
    if not _owns(model):
        return None
    if method not in (None, "generate"):
        raise InputError(f"DiffusionModel runs the pipeline (trace or generate), not {method!r}.")
    kwargs = dict(kwargs)
    seed = kwargs.pop("seed", None)
    if seed is not None:
        if kwargs.get("generator") is not None:
            raise InputError("give either seed= or generator=, not both.")
        repeats = kwargs.get("num_images_per_prompt") or 1
        kwargs["generator"] = [torch.Generator().manual_seed(seed + k % repeats)
                               for k in range(len(batched) * repeats)]
    if method is None:
        kwargs.setdefault("num_inference_steps", 1)
    key = "prompt" if _input_name(model) == "prompts" else "class_labels"
    return model._model(**{key: batched}, **kwargs)
