"""Subjects and state checks shared by the reliability suites.

A :class:`Subject` is one adapter's tiny model: ``nnsight`` (``NNsight`` of the
catalogue's ``Net``), ``gpt2`` and ``llama`` (``LanguageModel`` of the tiny
checkpoints that tests/transformers builds, with the same helpers). Each
subject knows how to run a *probe* trace (save a module's output, edit it, save
the model's output) and how to compute the probe's expected values on a fresh
plain module with a raw ``register_forward_hook``.

:func:`snapshot` and :func:`assert_clean` check that the library left a model
exactly as it found it: no hook of any kind on any module, no attribute added,
no parameter changed, no trace left open in this thread, the model's execution
lock free.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensor

from nnsight_core import _state
from nnsight_torch import NNsight

from tests.helpers import ARCHS
from tests.reliability.bad_inputs import X, Net

#: Where each subject's probe reads and edits, and which leaf module a fault is injected into.
PROBE_PATH = {"nnsight": "blocks.0", "gpt2": "transformer.h.0.mlp", "llama": "model.layers.0.mlp",
              "diffusion": "unet.conv_in"}
TRIP_PATH = {"nnsight": "blocks.1", "gpt2": "transformer.h.1.mlp.act", "llama": "model.layers.1.mlp.act_fn",
             "diffusion": "unet.conv_out"}
PROMPT = "The Eiffel Tower is in the city of"
SUBJECTS = ("nnsight",) + ARCHS + ("diffusion",)


@dataclass
class Subject:
    """One adapter's tiny model, its inputs, and plain-PyTorch expected values."""

    name: str
    make: Callable[[], Any]                       # a fresh wrapper
    fresh: Callable[[], torch.nn.Module]          # a fresh plain module with the same weights
    inputs: Any                                   # one invoke's inputs for the wrapper
    plain: Callable[[torch.nn.Module], Any]       # run a plain module on the same inputs
    final: Callable[[Any], torch.Tensor]          # the model output's main tensor
    atol: float
    seeded: bool = False                          # seed torch's RNG before each run (sampling models)

    @property
    def probe_path(self) -> str:
        return PROBE_PATH[self.name]

    @property
    def trip_path(self) -> str:
        return TRIP_PATH[self.name]

    def probe(self, model: Any) -> Dict[str, torch.Tensor]:
        """Trace once: save the probed module's output, zero its last feature, save the final output."""
        if self.seeded:
            torch.manual_seed(0)
        with torch.no_grad(), model.trace(self.inputs):
            envoy = _envoy(model, self.probe_path)
            before = envoy.output.clone().save()
            envoy.output[..., -1] = 0
            final = model.output.save()
        return {"module": before.value, "final": self.final(final.value)}

    def expected(self) -> Dict[str, torch.Tensor]:
        """The probe's values on a fresh plain module, edited by a raw forward hook."""
        module = self.fresh()
        seen = {}

        def hook(mod: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            seen["module"] = output.detach().clone()
            output = output.clone()
            output[..., -1] = 0
            return output

        handle = module.get_submodule(self.probe_path).register_forward_hook(hook)
        if self.seeded:
            torch.manual_seed(0)
        try:
            with torch.no_grad():
                seen["final"] = self.final(self.plain(module))
        finally:
            handle.remove()
        return seen

    def assert_probe_matches_fresh(self, model: Any) -> None:
        got, want = self.probe(model), self.expected()
        for key in ("module", "final"):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=self.atol,
                                       msg=lambda m, key=key: f"{self.name} {key}: {m}")


def _envoy(model: Any, path: str) -> Any:
    envoy = model
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def make_subject(name: str, checkpoints: Dict[str, str]) -> Subject:
    if name == "nnsight":
        return Subject(name, lambda: NNsight(Net()), Net, X, lambda m: m(X), lambda out: out, atol=0)
    if name == "diffusion":
        return _diffusion_subject(checkpoints["diffusion"])
    from nnsight_transformers import LanguageModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = checkpoints[name]
    ids = AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt")["input_ids"]
    return Subject(name, lambda: LanguageModel(folder),
                   lambda: AutoModelForCausalLM.from_pretrained(folder).eval(),
                   PROMPT, lambda m: m(input_ids=ids), lambda out: out.logits, atol=1e-5)


def _diffusion_subject(folder: str) -> Subject:
    """A tiny Stable Diffusion pipeline; a trace runs one denoising step from torch's seeded RNG."""
    import numpy as np
    from diffusers import DiffusionPipeline
    from nnsight_diffusers import Diffuser, DiffusionModel

    def fresh() -> Diffuser:
        pipeline = DiffusionPipeline.from_pretrained(folder)
        pipeline.set_progress_bar_config(disable=True)
        return Diffuser(pipeline)

    def make() -> DiffusionModel:
        return DiffusionModel(fresh().pipeline)

    return Subject("diffusion", make, fresh, "a photo of a cat",
                   lambda m: m("a photo of a cat", num_inference_steps=1),
                   lambda out: torch.as_tensor(np.stack([np.asarray(i) for i in out.images])),
                   atol=0, seeded=True)


# -- state checks ----------------------------------------------------------------------------------

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_module_registration_hooks")


def modules_of(model: Any) -> Dict[str, torch.nn.Module]:
    """Every module the wrapper can hook: the wrapped tree and the modules attached beside it."""
    found = dict(model._model.named_modules())
    for name, module in model._attached.items():
        found.update({f"<attached {name}>{'.' + n if n else ''}": m for n, m in module.named_modules()})
    return found


def hooks_left(model: Any) -> list:
    """``(module path, what)`` for every hook on any module of the model, and every global module hook."""
    found = []
    for path, module in modules_of(model).items():
        for attr in _HOOK_DICTS:
            if getattr(module, attr, None):
                found.append((path, attr))
        if "forward" in module.__dict__:
            found.append((path, "instance forward"))
    from torch.nn.modules import module as module_mod

    found += [("<global>", name) for name in _GLOBAL_HOOKS if getattr(module_mod, name, None)]
    return found


def snapshot(model: Any) -> Dict[str, Any]:
    """What must not change across a trace, failed or not."""
    modules = modules_of(model)
    return {
        "state": {k: v.detach().clone() for k, v in model._model.state_dict().items()},
        "attributes": {path: sorted(vars(m)) for path, m in modules.items()},
        "training": {path: m.training for path, m in modules.items()},
        "grad_enabled": torch.is_grad_enabled(),
        "wrapper": sorted(k for k in vars(model)
                          if not k.startswith("_") and k not in model._envoy._children),
    }


def lock_is_free(lock: Any) -> bool:
    """Whether another thread can take ``lock`` at once (an RLock held here would look free from here)."""
    result = []

    def probe() -> None:
        got = lock.acquire(blocking=False)
        if got:
            lock.release()
        result.append(got)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return result[0]


def assert_clean(model: Any, before: Dict[str, Any]) -> None:
    """The model is as ``snapshot`` found it, with no hook, no open trace and its lock free."""
    assert hooks_left(model) == []
    assert _state.local.runners == [], "a trace is still registered as open in this thread"
    assert lock_is_free(model._lock), "the model's execution lock is still held"
    after = snapshot(model)
    fake = [k for k, v in after["state"].items()
            if isinstance(v, FakeTensor) or v.is_meta != before["state"][k].is_meta]
    assert fake == [], f"fake or meta tensors left in the model: {fake}"
    assert after["attributes"] == before["attributes"], "a module gained or lost an attribute"
    assert after["training"] == before["training"]
    assert after["grad_enabled"] == before["grad_enabled"]
    assert after["wrapper"] == before["wrapper"], "the wrapper gained or lost a public attribute"
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"


@contextlib.contextmanager
def tripwire(root: torch.nn.Module, path: str, error: BaseException, after: int = 0) -> Iterator["Tripwire"]:
    """Replace the submodule at ``path`` by one that raises ``error`` at its call number ``after``
    (0-based) and otherwise runs the original; the original is put back on exit."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path)
    original = parent._modules[name]
    wire = Tripwire(original, error, after)
    parent._modules[name] = wire
    try:
        yield wire
    finally:
        parent._modules[name] = original


class Tripwire(torch.nn.Module):
    """Runs ``inner`` except at call number ``after``, where it raises ``error`` inside forward."""

    def __init__(self, inner: torch.nn.Module, error: BaseException, after: int) -> None:
        super().__init__()
        self.inner = inner
        self.error = error
        self.after = after
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        call, self.calls = self.calls, self.calls + 1
        if call == self.after:
            raise self.error
        return self.inner(*args, **kwargs)
