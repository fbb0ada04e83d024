"""The core's architecture holds: layers without cycles, a graph that is pure data, public extension points.

See docs/architecture.rst. Expected values come from plain PyTorch (direct calls).
"""

import ast
import pathlib
import subprocess
import sys
import threading
from collections import OrderedDict

import pytest
import torch

import nnsight_core
from nnsight_core import Graph, Interleaver
from nnsight_core._state import register_internal_package, user_location
from nnsight_core.graph import Node, copy_node, make_node
from nnsight_torch import NNsight

CORE = pathlib.Path(nnsight_core.__file__).parent
ROOT = CORE.parent


def make_net(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(OrderedDict([
        ("layer1", torch.nn.Linear(5, 10)), ("act", torch.nn.ReLU()), ("layer2", torch.nn.Linear(10, 2)),
    ]))


# -- layers ------------------------------------------------------------------------------------


def _deferred_core_imports(path: pathlib.Path, root: pathlib.Path = ROOT):
    """Imports of nnsight_core modules that are not at a module's top level (inside a function or
    class), except those under ``if TYPE_CHECKING:`` (type names only, never run)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, top_level):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)) and not top_level:
                names = [child.module or ""] if isinstance(child, ast.ImportFrom) else [a.name for a in child.names]
                relative = isinstance(child, ast.ImportFrom) and child.level > 0
                if relative or any(n.split(".")[0] == "nnsight_core" for n in names):
                    found.append(f"{path.relative_to(root)}:{child.lineno}: {ast.unparse(child)}")
            inner = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                         ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return found


def test_no_core_module_defers_an_import_of_another():
    deferred = [hit for path in sorted(CORE.rglob("*.py")) for hit in _deferred_core_imports(path)]
    assert deferred == [], "imports inside functions dodge the layer rules:\n" + "\n".join(deferred)


def test_the_deferred_import_check_finds_one(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .model import M\n"
                      "def f():\n    from .graph import Graph\n    return Graph\n")
    hits = _deferred_core_imports(module, tmp_path)
    assert len(hits) == 1 and "from .graph import Graph" in hits[0]


LINT_IMPORTS = pathlib.Path(sys.executable).parent / "lint-imports"


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (a test dependency)")
def test_import_linter_layer_contract_is_kept():
    command = str(LINT_IMPORTS)
    result = subprocess.run([command, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


# -- the graph is data ---------------------------------------------------------------------------


def test_nodes_and_graphs_hold_no_run_state():
    assert not {"value", "done", "skipped", "_pending", "_uses_left"} & set(Node.__slots__)
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x) as tracer:
        model.layer1.output.save()
    before = {name: repr(value) for name, value in vars(tracer.graph).items()}
    model.run_graph(tracer.graph, torch.rand(3, 5))
    assert {name: repr(value) for name, value in vars(tracer.graph).items()} == before


def test_one_graph_runs_twice_concurrently_with_the_results_of_two_solo_runs():
    """Two threads run the same recorded graph on two models with one module tree (so the runs
    really overlap) and on one model (so they queue on its lock); each gets its own values."""
    net_a, net_b = make_net(1), make_net(2)
    model_a, model_b = NNsight(net_a), NNsight(net_b)
    x, y = torch.rand(2, 5), torch.rand(4, 5)
    with model_a.trace(x) as tracer:
        h = model_a.layer1.output
        model_a.layer1.output = h * 2
        hidden = model_a.act.output.save()
        out = model_a.output.save()
    graph = tracer.graph

    def expected(net, inputs):
        with torch.no_grad():
            hidden_value = net.act(net.layer1(inputs) * 2)
            return hidden_value, net.layer2(hidden_value)

    for models in ((model_a, model_b), (model_a, model_a)):
        jobs = [(models[0], x), (models[1], y)]
        results = [None, None]
        start = threading.Barrier(2)

        def run(k):
            start.wait()
            model, inputs = jobs[k]
            for _ in range(20):  # many runs: overlaps are likely, each must stay separate
                with torch.no_grad():
                    results[k] = model.run_graph(graph, inputs)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for (model, inputs), saved in zip(jobs, results):
            want_hidden, want_out = expected(model._model, inputs)
            torch.testing.assert_close(saved[hidden.node.index], want_hidden)
            torch.testing.assert_close(saved[out.node.index], want_out)


def test_a_saved_value_does_not_keep_its_trace_inputs_or_output_alive():
    import gc
    import weakref

    net = make_net()
    model = NNsight(net)
    x = torch.rand(2, 5)
    with model.trace(x) as tracer:
        hidden = model.layer1.output.save()
    output = weakref.ref(tracer.output)
    runner = weakref.ref(tracer)
    del tracer
    gc.collect()
    assert runner() is None and output() is None
    torch.testing.assert_close(hidden.value, net.layer1(x))


# -- a public adapter contract -------------------------------------------------------------------


def test_an_adapters_frames_are_not_blamed_for_the_users_line(tmp_path, monkeypatch):
    """A toolkit that records nodes for its users registers its package; errors then name the
    user's line, not the toolkit's."""
    package = tmp_path / "acme_lens_toolkit"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from nnsight_core._state import user_location\n"
        "def where():\n    return user_location()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import acme_lens_toolkit

    here = acme_lens_toolkit.where()  # not registered: its own frame is blamed
    assert here[0].endswith("__init__.py")
    register_internal_package("acme_lens_toolkit")
    line = sys._getframe().f_lineno + 1
    here = acme_lens_toolkit.where()
    assert here == (__file__, line)


def test_entry_point_adapters_are_library_code():
    from nnsight_core._state import _internal_packages  # noqa: PLC0415 - the registry under test

    nnsight_core.get_plugin_manager()
    assert {"nnsight_torch", "nnsight_transformers", "nnsight_diffusers"} <= _internal_packages


def test_attach_and_runner_are_public():
    class Ids(torch.nn.Module):
        def forward(self, ids):
            return ids

    net = make_net()
    model = NNsight(net)
    model.attach("after", Ids())
    x = torch.rand(1, 5)
    with model.runner(x) as tracer:     # what trace() returns
        out = model.output.save()
    assert isinstance(tracer, nnsight_core.Runner)
    torch.testing.assert_close(out.value, net(x))
    assert "after" not in dict(net.named_children())


def test_interleaver_docstring_example_runs_a_graph_twice():
    net = make_net()
    model = NNsight(net)
    x = torch.rand(1, 5)
    with model.trace(x) as tracer:
        model.layer1.output.save()
    for inputs in (x, torch.rand(2, 5)):
        with Interleaver(tracer.graph, net) as interleaver:
            net(inputs)
        interleaver.check_complete()
        torch.testing.assert_close(interleaver.results()[0], net.layer1(inputs))
    assert isinstance(tracer.graph, Graph)


def test_the_fast_node_constructors_set_every_slot_as_node_init_does():
    """Graph.create_node (append_node), create_module_value, save (under a condition) and copy_node fill a Node's slots
    directly (one call per node on the hot path); a slot added to Node.__init__ but not to them
    would be missing on recorded nodes."""
    graph = Graph()
    first = graph.create_node("output", ("layer1", 0), invoke=0, where=("f.py", 1))
    recorded = graph.create_node("getitem", None, (first, (slice(None), 0)), invoke=0)
    reference = make_node(graph, 1, "getitem", None, (first, (slice(None), 0)), {}, 0, None, None)
    copy = copy_node(recorded, 7, None, recorded.args, recorded.kwargs, recorded.deps, None)
    value = graph.create_module_value(("output", "layer2", 0), 0, ("f.py", 2))
    cond = graph.create_node("apply", bool, (value,), invoke=0)
    saved = graph.save(value, 0, cond)
    assert saved.op == "save" and saved.cond is cond
    for slot in Node.__slots__:
        for node in (recorded, copy, value, saved):
            assert hasattr(node, slot), f"{slot} is not set by the fast constructor"
        if slot not in ("graph", "users", "index"):
            assert getattr(recorded, slot) == getattr(reference, slot), slot
