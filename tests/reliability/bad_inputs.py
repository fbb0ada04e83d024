"""The bad-input catalogue: wrong usages of the library, each with the exception it must raise.

Every entry is a small function that makes one mistake with ``model``, a fresh
wrapper of its adapter. It is data for two consumers:

* ``tests/reliability/test_bad_inputs.py`` runs each case on a fresh model and
  checks the exception's exact class and message, that no hook or trace state
  is left behind, and that the model's next trace equals a fresh model's;
* the ``bad-input-catalogue`` directive of ``docs/_ext/nnsight_docs.py``
  renders it in ``docs/errors.rst``: the case's code and the message it raises,
  captured when the documentation is built.

This module imports nothing from pytest, so the documentation build can load
it by path. Adding an adapter: add a builder of a fresh, tiny model to
:data:`BUILDERS` under the adapter's name, then append cases with
``@case("<name>", ...)``; the test needs a matching entry in its ``CHECKS``
(how to compare the model with a fresh one).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import torch

from nnsight_core import (AdapterNotFoundError, AssignmentError, BatchError, EnvoyAttributeError,
                          InputError, InterventionError, InvokeError, MissedCallError, ModelKeyError,
                          ModuleIndexError, NNsightModel, OutOfOrderEditError, ProxyCallError,
                          ProxyControlFlowError, ProxyScopeError, TokenIndexError, TraceStateError,
                          ValueNotSetError)
from nnsight_torch import NNsight

__all__ = ["Case", "CASES", "BUILDERS", "Net", "X", "PROMPT", "case"]

# [setup]
class Net(torch.nn.Module):
    """layer1 -> blocks[0] -> blocks[1] -> layer2; ``spare`` is never called."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer1 = torch.nn.Linear(5, 8)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)])
        self.layer2 = torch.nn.Linear(8, 2)
        self.spare = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer1(x)
        for block in self.blocks:
            h = torch.relu(block(h))
        return self.layer2(h)


X = torch.rand(2, 5, generator=torch.Generator().manual_seed(1))  # NNsight(Net()): 2 rows
PROMPT = "The Eiffel Tower is in the city of"                        # LanguageModel: a tiny Llama
# [/setup]


@dataclass(frozen=True)
class Case:
    """One wrong usage and the exception it must raise.

    Attributes:
        id: Unique name (the function's name).
        adapter: Key of :data:`BUILDERS` whose fresh model ``run`` receives.
        mistake: One line saying what the user did wrong.
        error: The exact exception class expected (not a subclass).
        match: A regular expression the message must contain (``re.search``).
        run: The code that makes the mistake, given a fresh model.
    """

    id: str
    adapter: str
    mistake: str
    error: type
    match: str
    run: Callable[[Any], None]


#: Every case, in the order the documentation shows them.
CASES: List[Case] = []


def case(adapter: str, mistake: str, error: type, match: str) -> Callable[[Callable], Callable]:
    """Register the decorated function as a case of ``adapter``'s catalogue."""
    re.compile(match)

    def register(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        if any(c.id == fn.__name__ for c in CASES):
            raise ValueError(f"duplicate bad-input case {fn.__name__!r}")
        CASES.append(Case(fn.__name__, adapter, mistake, error, match, fn))
        return fn

    return register


@functools.lru_cache(maxsize=None)
def _tiny_llama() -> str:
    from nnsight_transformers.testing import tiny_llama_checkpoint

    return tiny_llama_checkpoint()


def _language_model() -> Any:
    from nnsight_transformers import LanguageModel

    return LanguageModel(_tiny_llama())


@functools.lru_cache(maxsize=None)
def _tiny_pipeline() -> str:
    import tempfile

    from nnsight_diffusers.testing import tiny_stable_diffusion

    return tiny_stable_diffusion(tempfile.mkdtemp(prefix="nnsight-bad-inputs-"))


def _diffusion_model() -> Any:
    from nnsight_diffusers import DiffusionModel

    model = DiffusionModel(_tiny_pipeline())
    model.dispatch_model()
    model.pipeline.set_progress_bar_config(disable=True)
    return model


#: Adapter name -> function returning a fresh model of that adapter.
BUILDERS: Dict[str, Callable[[], Any]] = {
    "NNsight": lambda: NNsight(Net()),
    "LanguageModel": _language_model,
    "DiffusionModel": _diffusion_model,
}


# -- NNsight: building and inputs --------------------------------------------------------------


@case("NNsight", "A model id instead of a module", ModelKeyError, r"NNsight wraps a torch\.nn\.Module")
def nnsight_model_id(model):
    NNsight("openai-community/gpt2")


@case("NNsight", "Inputs without a tensor", InputError, r"no tensor with a batch dimension.*\(str\)")
def nnsight_input_not_a_tensor(model):
    with model.trace("a prompt"):
        pass


@case("NNsight", "A trace without inputs or invokes", InputError, r"the trace has no inputs")
def nnsight_trace_without_inputs(model):
    with model.trace():
        pass


@case("NNsight", "trace=False without inputs", InputError, r"trace\(trace=False\).*needs inputs")
def nnsight_trace_false_without_inputs(model):
    model.trace(trace=False)


@case("NNsight", "An invoke without inputs", InputError, r"invoke\(\) was given no inputs")
def nnsight_invoke_without_inputs(model):
    with model.trace() as tracer:
        with tracer.invoke():
            pass


@case("NNsight", "An invoke with zero rows", InvokeError, r"invoke 0 has 0 rows")
def nnsight_invoke_zero_rows(model):
    with model.trace() as tracer:
        with tracer.invoke(X[:0]):
            model.layer1.output.save()


@case("NNsight", "A keyword argument forward() does not take", InputError,
      r"Net\.forward\(\) takes no keyword argument 'scale'")
def nnsight_unsupported_kwarg(model):
    with model.trace(X, scale=2.0):
        pass


@case("NNsight", "A keyword argument given both to trace() and to an invoke", InputError,
      r"keyword argument\(s\) x were given both to an invoke and to trace\(\)")
def nnsight_keyword_twice(model):
    with model.trace(x=X) as tracer:
        with tracer.invoke(x=X):
            pass


@case("NNsight", "Invokes whose inputs differ in structure", BatchError,
      r"invoke 1's inputs are structured differently from invoke 0's")
def nnsight_invokes_differ_in_structure(model):
    with model.trace() as tracer:
        with tracer.invoke(X):
            pass
        with tracer.invoke(X, X):
            pass


@case("NNsight", "A wrapper class no installed adapter knows", AdapterNotFoundError,
      r"no adapter answered nnsight_prepare_inputs for Orphan")
def nnsight_no_adapter(model):
    class Orphan(NNsightModel):
        pass

    with Orphan(Net()).trace(X):
        pass


# -- NNsight: traces and invokes ---------------------------------------------------------------


@case("NNsight", "A module value outside any invoke of a trace without inputs", InvokeError,
      r"model\.layer1\.output was used outside an invoke")
def nnsight_value_outside_invoke(model):
    with model.trace() as tracer:
        model.layer1.output.save()
        with tracer.invoke(X):
            pass


@case("NNsight", "tracer.invoke() in a trace that was given inputs", InvokeError,
      r"already opened invoke 0")
def nnsight_invoke_in_trace_with_inputs(model):
    with model.trace(X) as tracer:
        with tracer.invoke(X):
            pass


@case("NNsight", "Nested invokes", InvokeError, r"invokes cannot be nested: invoke 0 is still open")
def nnsight_nested_invokes(model):
    with model.trace() as tracer:
        with tracer.invoke(X):
            with tracer.invoke(X):
                pass


@case("NNsight", "A trace of a model inside a trace of the same model", TraceStateError,
      r"a trace of this NNsight is already open in this thread")
def nnsight_nested_traces(model):
    with model.trace(X):
        with model.trace(X):
            pass


@case("NNsight", "model.invoke() outside a trace", TraceStateError,
      r"invoke\(\) opens an invoke inside a trace")
def nnsight_invoke_outside_trace(model):
    with model.invoke(X):
        pass


@case("NNsight", ".output outside a trace", TraceStateError,
      r"model\.layer1\.output is only available inside")
def nnsight_output_outside_trace(model):
    model.layer1.output


@case("NNsight", ".next() outside a trace", TraceStateError,
      r"model\.blocks\[0\]\.next\(\) is only available")
def nnsight_next_outside_trace(model):
    model.blocks[0].next()


@case("NNsight", ".save() after the trace", TraceStateError,
      r"\.save\(\) was called on model\.layer1\.output \(call 0, invoke 0\) outside the trace")
def nnsight_save_after_trace(model):
    with model.trace(X):
        hidden = model.layer1.output
    hidden.save()


# -- NNsight: module paths and calls --------------------------------------------------------------


@case("NNsight", "A misspelt module path", EnvoyAttributeError,
      r"model\.layer3 does not exist.*children are: layer1, blocks, layer2, spare")
def nnsight_unknown_module(model):
    with model.trace(X):
        model.layer3.output.save()


@case("NNsight", "A module index out of range", ModuleIndexError,
      r"model\.blocks\[2\] does not exist: model\.blocks has 2 modules \(0-1\)")
def nnsight_module_index(model):
    with model.trace(X):
        model.blocks[2].output.save()


@case("NNsight", "A misspelt module value (assigned)", EnvoyAttributeError,
      r"model\.layer1\.outptu = \.\.\. inside a trace would give the Linear module a new attribute")
def nnsight_misspelt_value_assignment(model):
    with model.trace(X):
        model.layer1.outptu = torch.zeros(2, 8)


@case("NNsight", "A module that never runs", MissedCallError,
      r"model\.spare\.output \(call 0, invoke 0\) was never reached: model\.spare never ran")
def nnsight_module_never_called(model):
    with model.trace(X):
        model.spare.output.save()


@case("NNsight", "An edit of a module that never runs", MissedCallError,
      r"model\.spare\.output \(call 0, invoke 0\) was never reached")
def nnsight_edit_of_module_never_called(model):
    with model.trace(X):
        model.spare.output[:] = 0


@case("NNsight", "A call index beyond the calls that happen", MissedCallError,
      r"model\.layer1\.output \(call 1, invoke 0\) was never reached: model\.layer1 ran 1 time")
def nnsight_call_beyond(model):
    with model.trace(X):
        model.layer1.next().output[:] = 0


# -- NNsight: assignments and edits ------------------------------------------------------------------


@case("NNsight", "An assignment with the wrong number of rows", BatchError,
      r"assignment to model\.layer1\.output \(call 0, invoke 0\).*owns 2 row\(s\).*give it shape \(2, 8\)")
def nnsight_assign_wrong_rows(model):
    with model.trace(X):
        model.layer1.output = torch.zeros(3, 8)


@case("NNsight", "An assignment of the wrong shape", AssignmentError,
      r"assignment to model\.layer1\.output.*has shape \(2, 7\).*give it shape \(2, 8\)")
def nnsight_assign_wrong_shape(model):
    with model.trace(X):
        model.layer1.output = torch.zeros(2, 7)


@case("NNsight", "An assignment of the wrong dtype", AssignmentError,
      r"model\.layer1\.output.*dtype torch\.float64.*cast it with `\.to\(torch\.float32\)`")
def nnsight_assign_wrong_dtype(model):
    with model.trace(X):
        model.layer1.output = torch.zeros(2, 8, dtype=torch.float64)


@case("NNsight", "An assignment on the wrong device", AssignmentError,
      r"model\.layer1\.output.*on device meta.*move it with `\.to\('cpu'\)`")
def nnsight_assign_wrong_device(model):
    with model.trace(X):
        model.layer1.output = torch.zeros(2, 8, device="meta")


@case("NNsight", "A number assigned where the module has a tensor", AssignmentError,
      r"model\.layer1\.output.*a value of type int was assigned.*`\.output\[:\] = value`")
def nnsight_assign_number(model):
    with model.trace(X):
        model.layer1.output = 0


@case("NNsight", "An input assignment of the wrong dtype", AssignmentError,
      r"assignment to model\.layer2\.input.*dtype torch\.int64")
def nnsight_assign_input_wrong_dtype(model):
    with model.trace(X):
        model.layer2.input = torch.zeros(2, 8, dtype=torch.long)


@case("NNsight", ".inputs assigned something other than (args, kwargs)", BatchError,
      r"`\.inputs` must be assigned an \(args, kwargs\) pair")
def nnsight_inputs_not_a_pair(model):
    with model.trace(X):
        model.layer1.inputs = X


@case("NNsight", "An invoke's assignment sized for the whole batch", BatchError,
      r"invoke 0 owns 1 row\(s\) of the batch but assigned a value of shape \(2, 8\)")
def nnsight_assign_batch_rows_in_invoke(model):
    with model.trace() as tracer:
        with tracer.invoke(X[:1]):
            model.layer1.output = torch.zeros(2, 8)
        with tracer.invoke(X[1:]):
            pass


@case("NNsight", "An edit computed from a later module", OutOfOrderEditError,
      r"model\.layer1\.output \(call 0\) but depends on .*model\.layer2\.output")
def nnsight_edit_from_later_module(model):
    with model.trace(X):
        model.layer1.output[:, 0] = model.layer2.output[:, 0]


@case("NNsight", "A shape mismatch inside the intervention", InterventionError,
      r"node %\d+ operator\[matmul\] of model\.layer1\.output \(call 0, invoke 0\) at \S*bad_inputs\.py:\d+")
def nnsight_shape_mismatch_in_graph(model):
    with model.trace(X):
        (model.layer1.output @ torch.ones(3, 3)).save()


# -- NNsight: proxies ---------------------------------------------------------------------------------


@case("NNsight", "Reading .value inside the trace", ValueNotSetError, r"does not exist yet")
def nnsight_value_inside_trace(model):
    with model.trace(X):
        model.layer1.output.save().value


@case("NNsight", "Reading .value of a value that was not saved", ValueNotSetError,
      r"was freed after its last use because it was not saved")
def nnsight_value_not_saved(model):
    with model.trace(X):
        hidden = model.layer1.output
    hidden.value


@case("NNsight", "An unsaved proxy used in the next trace", ValueNotSetError,
      r"model\.layer1\.output \(call 0, invoke 0\).*call \.save\(\) on it inside the trace")
def nnsight_unsaved_proxy_in_next_trace(model):
    with model.trace(X):
        hidden = model.layer1.output
    with model.trace(X):
        model.layer1.output = hidden


@case("NNsight", "A proxy of one model's open trace used in another model's trace", ProxyScopeError,
      r"belongs to another trace that is still being recorded")
def nnsight_proxy_in_other_models_trace(model):
    other = NNsight(Net())
    with model.trace(X):
        hidden = model.layer1.output
        with other.trace(X):
            other.layer1.output = hidden


@case("NNsight", "One model's module used in another model's trace", TraceStateError,
      r"model\.layer1\.output is only available inside .* of the model that owns it")
def nnsight_envoy_in_other_models_trace(model):
    other = NNsight(Net())
    with other.trace(X):
        model.layer1.output.save()


@case("NNsight", "Python control flow on a proxy", ProxyControlFlowError,
      r"if proxy: / bool\(proxy\) on .*model\.layer2\.output.*torch\.where")
def nnsight_if_on_proxy(model):
    with model.trace(X):
        if model.layer2.output.sum() > 0:
            pass


@case("NNsight", "A number conversion of a proxy (float(), int())", ProxyControlFlowError,
      r"float\(proxy\) on .*model\.layer2\.output.*proxy\.item\(\)")
def nnsight_float_of_proxy(model):
    with model.trace(X):
        scale = float(model.layer2.output.sum())
        model.layer1.output[:] = model.layer1.output * scale


@case("NNsight", "Calling a module value", ProxyCallError,
      r"model\.layer1\.output \(call 0, invoke 0\) is not callable inside a trace")
def nnsight_call_a_value(model):
    with model.trace(X):
        model.layer1.output(X)


# -- LanguageModel ---------------------------------------------------------------------------------


@case("LanguageModel", "A module without its tokenizer", ModelKeyError,
      r"was given a LlamaForCausalLM module without a tokenizer")
def lm_module_without_tokenizer(model):
    from nnsight_transformers import LanguageModel

    model.dispatch_model()
    LanguageModel(model._model)


@case("LanguageModel", "A model key that is neither an id, a folder nor a module", ModelKeyError,
      r"LanguageModel takes a model id, a folder or a module, not int")
def lm_int_model_key(model):
    from nnsight_transformers import LanguageModel

    LanguageModel(135)


@case("LanguageModel", "An input of an unsupported type", InputError,
      r"LanguageModel cannot use a float as input")
def lm_float_input(model):
    with model.trace(3.5):
        pass


@case("LanguageModel", "An empty prompt", InputError, r"has a prompt with no tokens")
def lm_empty_prompt(model):
    with model.trace(""):
        pass


@case("LanguageModel", "Two prompts as two arguments of one invoke", InputError,
      r"a LanguageModel invoke takes one input.*got 2")
def lm_two_arguments(model):
    with model.trace(PROMPT, "Rome is"):
        pass


@case("LanguageModel", "Float token ids", InputError, r"token ids must be integers.*torch\.float32")
def lm_float_ids(model):
    with model.trace(torch.rand(1, 4)):
        pass


@case("LanguageModel", "A token id outside the vocabulary", InputError,
      r"token id 5000 is outside the model's vocabulary of \d+ ids")
def lm_token_id_outside_vocabulary(model):
    with model.trace([1, 2, 5000]):
        pass


@case("LanguageModel", "A dict input without input_ids", InputError,
      r"a dict input needs 'input_ids'.*got keys \['ids'\]")
def lm_dict_without_input_ids(model):
    with model.trace({"ids": [1, 2, 3]}):
        pass


@case("LanguageModel", "An attention mask of another shape than the ids", InputError,
      r"attention_mask of shape \(1, 2\) does not match input_ids of shape \(1, 3\)")
def lm_mask_shape(model):
    with model.trace({"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1]]}):
        pass


@case("LanguageModel", "Tokenizer options for token ids", InputError,
      r"keyword arguments of an invoke \(truncation\) go to the tokenizer")
def lm_tokenizer_options_for_ids(model):
    with model.trace() as tracer:
        with tracer.invoke([1, 2, 3], truncation=True):
            pass


@case("LanguageModel", "Tokenizer options that change the tensors' format", InputError,
      r"cannot change return_tensors or padding_side")
def lm_tokenizer_return_tensors(model):
    with model.trace() as tracer:
        with tracer.invoke(PROMPT, return_tensors="np"):
            pass


@case("LanguageModel", "Token ids with zero rows", InvokeError, r"invoke 0 has 0 rows")
def lm_zero_rows(model):
    with model.trace(torch.zeros(0, 3, dtype=torch.long)):
        pass


@case("LanguageModel", "generate() arguments given to trace()", InputError,
      r"trace\(\) was given generate\(\) arguments \(max_new_tokens\)")
def lm_generate_argument_in_trace(model):
    with model.trace(PROMPT, max_new_tokens=5):
        pass


@case("LanguageModel", "A token index beyond the invoke's tokens", TokenIndexError,
      r"token index 40 is outside invoke 0, which has \d+ token\(s\)")
def lm_token_index_beyond(model):
    with model.trace(PROMPT):
        model.lm_head.output.t[40].save()


@case("LanguageModel", "A token index after the trace", TraceStateError,
      r"\.t\[\.\.\.\] / \.token\[\.\.\.\] index by an invoke's tokens")
def lm_token_index_after_trace(model):
    with model.trace(PROMPT):
        logits = model.lm_head.output.save()
    logits.t[-1]


@case("LanguageModel", "A token index outside any invoke", InvokeError,
      r"model\.lm_head\.output was used outside an invoke")
def lm_token_index_outside_invoke(model):
    with model.trace():
        model.lm_head.output.t[-1].save()


@case("LanguageModel", "A layer index out of range", ModuleIndexError,
      r"model\.model\.layers\[4\] does not exist: model\.model\.layers \(alias model\.layers\) has 2 "
      r"modules \(0-1\)")
def lm_layer_index(model):
    with model.trace(PROMPT):
        model.model.layers[4].output.save()


@case("LanguageModel", "Another architecture's module path", EnvoyAttributeError,
      r"model\.transformer does not exist.*children are: model, lm_head")
def lm_other_architecture_path(model):
    with model.trace(PROMPT):
        model.transformer.h[0].output.save()


@case("LanguageModel", "The generated ids read in a trace (no generation)", MissedCallError,
      r"model\.generator\.output \(call 0, invoke 0\) was never reached")
def lm_generator_in_trace(model):
    with model.trace(PROMPT):
        model.generator.output.save()


@case("LanguageModel", "A generation step beyond max_new_tokens", MissedCallError,
      r"model\.lm_head\.output \(call 3, invoke 0\) was never reached: model\.lm_head ran 2 time")
def lm_step_beyond_generation(model):
    with model.generate(PROMPT, max_new_tokens=2):
        model.lm_head.next(3).output.save()


@case("LanguageModel", "A hidden-state assignment of the wrong width", AssignmentError,
      r"assignment to model\.model\.layers\[0\]\.output.*give it shape \(1, \d+, 32\)")
def lm_assign_wrong_shape(model):
    with model.trace(PROMPT):
        model.model.layers[0].output = torch.zeros(1, 1, 16)


@case("LanguageModel", "A hidden-state assignment of the wrong dtype", AssignmentError,
      r"model\.model\.layers\[0\]\.output.*dtype torch\.float16.*`\.to\(torch\.float32\)`")
def lm_assign_wrong_dtype(model):
    with model.trace(PROMPT):
        hidden = model.model.layers[0].output
        model.model.layers[0].output = hidden.half()


@case("LanguageModel", "An invoke's assignment with another invoke's rows", BatchError,
      r"invoke 1 owns 1 row\(s\) of the batch but assigned a value of shape \(2, ")
def lm_assign_other_invokes_rows(model):
    with model.trace() as tracer:
        with tracer.invoke([PROMPT, "Rome is a city"]):
            both = model.model.layers[0].output
        with tracer.invoke("Paris"):
            model.model.layers[0].output = both


# -- DiffusionModel (a tiny Stable Diffusion pipeline; "a cat" style prompts) ------------------


@case("DiffusionModel", "A single module instead of a pipeline", ModelKeyError,
      r"DiffusionModel wraps a diffusers pipeline .* not a Linear module")
def diffusion_module_key(model):
    from nnsight_diffusers import DiffusionModel

    DiffusionModel(torch.nn.Linear(2, 2))


@case("DiffusionModel", "A class label given to a text-to-image pipeline", InputError,
      r"StableDiffusionPipeline takes text prompts: give a str or a list of str, not int")
def diffusion_label_for_text(model):
    with model.trace(3):
        pass


@case("DiffusionModel", "An empty list of prompts", InputError, r"empty list: give at least one prompt")
def diffusion_empty_prompts(model):
    with model.trace([]):
        pass


@case("DiffusionModel", "A pipeline argument given to an invoke", InputError,
      r"guidance_scale must go to trace\(\)/generate\(\) instead")
def diffusion_invoke_kwargs(model):
    with model.trace() as tracer:
        with tracer.invoke("a cat", guidance_scale=3.0):
            pass


@case("DiffusionModel", "Both seed= and generator=", InputError, r"either seed= or generator=, not both")
def diffusion_seed_and_generator(model):
    with model.trace("a cat", seed=0, generator=torch.Generator()):
        model.unet.output.save()


@case("DiffusionModel", "A denoising step beyond num_inference_steps", MissedCallError,
      r"model\.unet\.output \(call 2, invoke 0\) was never reached: model\.unet ran 2 time")
def diffusion_step_beyond(model):
    with model.generate("a cat", num_inference_steps=2, seed=0):
        model.unet.next(2).output.save()


@case("DiffusionModel", "An iteration range past the last step", MissedCallError,
      r"model\.unet\.output \(calls 1, 2, 3\) never reached call 2: model\.unet ran 2 time")
def diffusion_iter_beyond(model):
    with model.generate("a cat", num_inference_steps=2, seed=0) as tracer:
        with tracer.iter[1:4]:
            model.unet.output.save()


@case("DiffusionModel", "The VAE's output (the pipeline calls vae.decode, not forward)", MissedCallError,
      r"model\.vae\.output \(call 0, invoke 0\) was never reached: model\.vae never ran")
def diffusion_vae_forward(model):
    with model.trace("a cat", seed=0):
        model.vae.output.save()


@case("DiffusionModel", "A misspelt component", EnvoyAttributeError,
      r"model\.unett does not exist: .* children are: vae, text_encoder, unet")
def diffusion_unknown_component(model):
    with model.trace("a cat", seed=0):
        model.unett.output.save()


@case("DiffusionModel", "A noise prediction assigned without the guidance half", BatchError,
      r"owns 2 row\(s\) of the batch but assigned a value of shape \(1, 4, 8, 8\)")
def diffusion_assign_one_half(model):
    with model.trace("a cat", seed=0):
        model.unet.output = (torch.zeros(1, 4, 8, 8),)
