"""LanguageModel: trace, edit and generate with a Hugging Face causal language model."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from nnsight_core import InputError, ModelKeyError, Runner, UnsupportedMethodError
from nnsight_torch import NNsight

from .names import ARCHITECTURES, is_causal_lm, standard_rename
from .plugin import share_pad_token
from .proxy import LanguageModelProxy

__all__ = ["LanguageModel", "Generator"]


class Generator(torch.nn.Module):
    """Identity module called with the generated ids, so ``model.generator.output`` can read them."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return ``ids`` unchanged (the hook on this call is what exposes them)."""
        return ids


class LanguageModel(NNsight):
    """Wraps an ``AutoModelForCausalLM`` and its tokenizer for tracing and generation.

    Example:
        >>> from nnsight_transformers.testing import tiny_llama_checkpoint
        >>> model = LanguageModel(tiny_llama_checkpoint())    # a folder or hub id; meta skeleton
        >>> with model.trace("The Eiffel Tower is in the city of"):
        ...     hidden = model.model.layers[1].output.save()
        ...     logits = model.lm_head.output.t[-1].save()
        >>> hidden.value.shape, logits.value.shape      # (batch, tokens, width), (batch, vocab)
        (torch.Size([1, 10, 32]), torch.Size([1, 300]))
        >>> with model.generate("Hello", max_new_tokens=5):
        ...     ids = model.generator.output.save()
        >>> ids.value.shape[1] - len(model.tokenizer("Hello")["input_ids"])   # the new tokens
        5

    Args:
        model_key: A model id or folder (loaded lazily), or a module (then ``tokenizer`` is required).
        tokenizer: A tokenizer; loaded from ``model_key`` when omitted.
        automodel: The ``transformers`` auto class that loads the model.
        tokenizer_kwargs: Extra arguments for ``AutoTokenizer.from_pretrained``.
        rename: Aliases ``{real path or child name: alias}`` (see ``NNsight``); they extend
            and override the standard names.
        standard_names: The standard names ``layers``, ``attn``, ``mlp``, ``embed``,
            ``ln_final``, ``lm_head`` (:mod:`nnsight_transformers.names`), checked at load.
            None (default): on for a causal LM of a built-in architecture (GPT-2, Llama,
            Qwen2, Mistral, Gemma, Phi, GPT-NeoX, OPT), off otherwise. True: required
            (a model without them, or of another architecture, raises ``RenameError``
            unless ``rename=`` names the missing ones). False: off.
        dispatch: Load the real weights at once instead of at the first trace.
        **kwargs: Passed to ``from_pretrained`` (``device_map``, ``dtype``, ``gguf_file``,
            ``revision``, ...); those that name the checkpoint (``gguf_file``, ``revision``,
            ``subfolder``, ...) also go to the config and tokenizer.

    Inputs of ``trace``/``invoke``/``generate``: a prompt ``str``, prompts
    ``List[str]``, token ids ``List[int]`` or a 1-D tensor (one row), batches
    ``List[List[int]]`` or a 2-D tensor, or a dict / ``BatchEncoding`` with
    ``input_ids`` (and ``attention_mask``). Invokes are left-padded to one batch
    with the right attention mask and position ids. Keyword arguments of an
    invoke go to the tokenizer (text inputs only).

    Attributes:
        tokenizer: The tokenizer; pads on the left and has a pad token (eos if it had none).
        automodel: The auto class used to load the model.
        standard_names: Whether the standard names are on (decided at load).
        generator: Envoy whose ``.output`` is the ids ``generate`` returned.
    """

    proxy_class = LanguageModelProxy

    def __init__(self, model_key: Any, *args: Any, tokenizer: Optional[PreTrainedTokenizerBase] = None,
                 automodel: Any = AutoModelForCausalLM, tokenizer_kwargs: Optional[Dict[str, Any]] = None,
                 rename: Optional[Dict[str, str]] = None, standard_names: Optional[bool] = None,
                 **kwargs: Any) -> None:
        if isinstance(model_key, torch.nn.Module) and tokenizer is None:
            raise ModelKeyError(
                f"LanguageModel was given a {type(model_key).__name__} module without a tokenizer: "
                "pass tokenizer=AutoTokenizer.from_pretrained(...), or pass the model id or folder "
                "instead of the module."
            )
        self.__dict__["tokenizer"] = tokenizer
        self.__dict__["automodel"] = automodel
        self.__dict__["tokenizer_kwargs"] = dict(tokenizer_kwargs or {})
        self.__dict__["standard_names"] = standard_names
        self.__dict__["_given_rename"] = rename
        super().__init__(model_key, *args, rename=rename, **kwargs)
        del self.__dict__["_given_rename"]
        _prepare_tokenizer(self.tokenizer)
        share_pad_token(self._model, self.tokenizer)
        self.attach("generator", Generator())

    def check_requirements(self, invoke: int, prepared: Any, requirements: Dict[str, Any]) -> None:
        """A graph that used ``.t[i]`` with ``i >= 0`` (or a slice) runs only on prompts of the
        length it was recorded with: those positions became offsets from the end.

        Raises:
            InputError: The invoke's prompt has another number of tokens.
        """
        requirements = dict(requirements)
        tokens = requirements.pop("tokens", None)
        if tokens is not None:
            given = prepared["input_ids"].shape[1]
            if given != tokens:
                raise InputError(
                    f"invoke {invoke} of the graph indexes tokens (.t[i] with i >= 0, or a slice) "
                    f"recorded on a prompt of {tokens} token(s), but this prompt has {given}: the "
                    f"positions would point at other tokens. Give a prompt of {tokens} tokens, "
                    "record the trace again on this one, or index from the end (.t[-1]).")
        super().check_requirements(invoke, prepared, requirements)

    def default_rename(self) -> Dict[str, str]:
        """The standard names (:mod:`nnsight_transformers.names`) when they are on, checked
        against the model's structure; ``rename=`` extends and overrides them.

        Raises:
            RenameError: The standard names are on but the model lacks a module they need.
        """
        wanted = self.standard_names
        if wanted is None:  # the default: on for the causal LMs of the built-in architectures
            model_type = getattr(getattr(self._model, "config", None), "model_type", None)
            wanted = model_type in ARCHITECTURES and is_causal_lm(self._model)
        self.__dict__["standard_names"] = bool(wanted)
        return standard_rename(self._model, self._given_rename) if wanted else {}

    def generate(self, *inputs: Any, invoker_args: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Runner:
        """A trace that runs ``generate()``; keyword arguments (``max_new_tokens``, ...) go to it.

        Every module runs once per generation step, so ``.next()`` addresses the
        next step; ``model.generator.output`` is the generated ids (prompt
        included, left padding of shorter invokes included; for an encoder-decoder,
        the decoder's ids). The encoder of an encoder-decoder runs once, its
        decoder once per step.

        Raises:
            UnsupportedMethodError: The model cannot generate (a classifier, a masked LM).
        """
        if not self._model.can_generate():
            raise UnsupportedMethodError(
                f"{type(self._model).__name__} cannot generate (it has no language-model head for "
                f"next tokens; it was loaded with automodel={getattr(self.automodel, '__name__', self.automodel)}): "
                "use model.trace(...) to run it, or load a model that generates, e.g. "
                "automodel=AutoModelForCausalLM or AutoModelForSeq2SeqLM.")
        return self.runner(*inputs, method="generate", invoker_args=invoker_args, **kwargs)


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad on the left (the one place this is set) and make sure there is a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
