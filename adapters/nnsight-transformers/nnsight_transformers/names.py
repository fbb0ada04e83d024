"""Standard names for decoder-only language models: one analysis script for every architecture.

``LanguageModel`` gives a causal LM of a known architecture these aliases (its
``default_rename``), checked against the loaded skeleton:

==============  ==========================================================
``layers``      the decoder layers (``layers[i].input`` / ``.output``: the residual stream)
``attn``        a layer's self-attention (an alias of its child, at every depth)
``mlp``         a layer's MLP
``embed``       the token embedding
``ln_final``    the norm after the last layer
``lm_head``     the output projection to the vocabulary
==============  ==========================================================

Example:
    >>> from nnsight_transformers import LanguageModel
    >>> from nnsight_transformers.testing import tiny_checkpoint
    >>> model = LanguageModel(tiny_checkpoint("gpt2"))
    >>> model.layers is model.transformer.h, model.layers[0].attn is model.transformer.h[0].attn
    (True, True)
    >>> sorted(ARCHITECTURES["opt"].items())[:3]
    [('attn', 'self_attn'), ('embed', 'model.decoder.embed_tokens'), ('layers', 'model.decoder.layers')]

OPT has no MLP module (``fc1``, activation, ``fc2`` sit in the layer): its
``mlp`` is ``fc2``, whose output is the MLP's output but whose input is the
activation, not the MLP's input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from nnsight_core import RenameError
from nnsight_core.graph import display_path

__all__ = ["STANDARD_NAMES", "ARCHITECTURES", "standard_rename"]

#: The standard names, in the order messages list them.
STANDARD_NAMES = ("layers", "attn", "mlp", "embed", "ln_final", "lm_head")
#: Names of a child of every layer (aliased at every depth); the others are paths from the root.
_LAYER_CHILDREN = ("attn", "mlp")

_LLAMA = {"layers": "model.layers", "attn": "self_attn", "mlp": "mlp", "embed": "model.embed_tokens",
          "ln_final": "model.norm", "lm_head": "lm_head"}

#: ``config.model_type`` -> {standard name: real path (or child name of a layer), or alternatives}.
ARCHITECTURES: Dict[str, Dict[str, Union[str, Tuple[str, ...]]]] = {
    "gpt2": {"layers": "transformer.h", "attn": "attn", "mlp": "mlp", "embed": "transformer.wte",
             "ln_final": "transformer.ln_f", "lm_head": "lm_head"},
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    "gemma": _LLAMA,
    "phi": {**_LLAMA, "ln_final": "model.final_layernorm"},
    "gpt_neox": {"layers": "gpt_neox.layers", "attn": "attention", "mlp": "mlp",
                 "embed": "gpt_neox.embed_in", "ln_final": "gpt_neox.final_layer_norm",
                 "lm_head": ("lm_head", "embed_out")},     # embed_out before transformers 5
    "opt": {"layers": "model.decoder.layers", "attn": "self_attn", "mlp": "fc2",
            "embed": "model.decoder.embed_tokens", "ln_final": "model.decoder.final_layer_norm",
            "lm_head": "lm_head"},
}


def is_causal_lm(module: torch.nn.Module) -> bool:
    """Whether ``module`` is the causal-LM class transformers maps its model type to."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(getattr(module, "config", None), "model_type", None)
    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, ())
    return type(module).__name__ in ((names,) if isinstance(names, str) else tuple(names))


def standard_rename(module: torch.nn.Module, given: Any = None) -> Dict[str, str]:
    """The ``rename=`` table that gives ``module`` the standard names, checked against it.

    Names the user's own ``rename=`` (``given``) already assigns are left to it.

    Raises:
        RenameError: A standard name this model's structure does not have (or no built-in
            entry for its model type), naming what is missing and the ``rename=`` to pass instead.
    """
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    table = ARCHITECTURES.get(model_type, {})
    given = dict(given) if isinstance(given, Mapping) else {}
    provided = {alias: real for real, alias in given.items()}
    rename: Dict[str, str] = {}
    missing: List[str] = []
    layers: Optional[str] = provided.get("layers")
    for name in STANDARD_NAMES:
        if name in provided:
            continue
        candidates = table.get(name)
        if candidates is None:
            missing.append(f"{name}: no built-in entry for model type {model_type!r}")
            continue
        candidates = (candidates,) if isinstance(candidates, str) else candidates
        if name in _LAYER_CHILDREN:
            found, problem = _layer_child(module, layers, candidates)
        else:
            found = next((c for c in candidates if _exists(module, c)), None)
            problem = f"{display_path(candidates[0])} does not exist"
        if found is None:
            missing.append(f"{name}: {problem}")
            continue
        if name == "layers":
            layers = found
        if found != name:
            rename[found] = name
    if missing:
        example = ", ".join(f"'<real path of {m.split(':')[0]}>': '{m.split(':')[0]}'" for m in missing[:2])
        raise RenameError(
            f"LanguageModel's standard names do not fit this {model_type!r} model "
            f"({type(module).__name__}): {'; '.join(missing)}. Name those modules yourself with "
            f"rename={{{example}}} (paths as print(model) shows them; a layer's child by its name), "
            "or load it without standard names: standard_names=False.")
    return rename


def _layer_child(module: torch.nn.Module, layers: Optional[str],
                 candidates: Tuple[str, ...]) -> Tuple[Optional[str], str]:
    """The first candidate child name every decoder layer has, or None and why."""
    if layers is None or not _exists(module, layers):
        return None, "there are no layers to find it in"
    blocks = list(module.get_submodule(layers).children())
    for candidate in candidates:
        if blocks and all(candidate in block._modules for block in blocks):
            return candidate, ""
    lacking = next((i for i, b in enumerate(blocks) if candidates[0] not in b._modules), 0)
    return None, f"{display_path(f'{layers}.{lacking}')} has no child {candidates[0]!r}"


def _exists(module: torch.nn.Module, path: str) -> bool:
    try:
        found = module.get_submodule(path)
    except AttributeError:
        return False
    return found is not None
