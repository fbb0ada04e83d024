"""The adapter guide (docs/adapters/writing.rst) matches the code, and its toy adapter works.

The hook reference must have one section per hookspec with the exact signature
and firstresult flag; the lifecycle diagram must list the hooks in the order
they fire; the toy adapter it walks through passes the conformance suite and
registers by entry point.
"""

import ast
import inspect
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from nnsight_core import InputError, ModelKeyError, get_plugin_manager, hookspecs
from nnsight_core.testing import AdapterConformance, hook_count

ROOT = pathlib.Path(__file__).parents[2]
GUIDE = ROOT / "docs" / "adapters" / "writing.rst"
TOY_DIR = ROOT / "docs" / "examples" / "plugin_toy_adapter"

sys.path.insert(0, str(TOY_DIR))
try:
    from nnsight_toy import ToyModel, build, plugin
finally:
    sys.path.remove(str(TOY_DIR))

SPECS = {name: fn for name, fn in vars(hookspecs).items() if hasattr(fn, f"{hookspecs.PROJECT}_spec")}


@pytest.fixture(autouse=True)
def toy_adapter():
    """Register the toy plugin for each test, unless nnsight-toy is installed (then its entry point did)."""
    manager = get_plugin_manager()
    registered_here = manager.get_plugin("toy") is None
    if registered_here:
        manager.register(plugin, name="toy")
    yield
    if registered_here:
        manager.unregister(name="toy")


class TestToyAdapter(AdapterConformance):
    """The shared conformance suite, run against the toy adapter."""

    module_path = "layer0"
    # Every test applies except .next(), which needs a module that runs twice per forward pass.
    not_applicable = {"next": "a toy MLP runs each of its layers once per forward pass"}

    def make_model(self):
        return ToyModel("mlp:5,8,2")

    def make_inputs(self):
        return [([0.1, 0.2, 0.3, 0.4, 0.5],),
                ([[0.5, 0.4, 0.3, 0.2, 0.1], [1.0, 0.0, 1.0, 0.0, 1.0]],)]


# -- the hook reference --------------------------------------------------------------


def _sections(text):
    """``{title: body}`` for the ``~``-underlined sections of the guide."""
    lines = text.splitlines()
    sections, title = {}, None
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and re.fullmatch(r"~{3,}", lines[i + 1]) and len(lines[i + 1]) == len(line):
            title = line.strip()
            sections[title] = []
        elif title is not None:
            sections[title].append(line)
    return {t: "\n".join(body) for t, body in sections.items()}


def _first_code_block(body, language):
    match = re.search(rf"^\.\. code-block:: {language}\n\n((?:   .*\n|\n)+)", body, re.MULTILINE)
    assert match, f"no `.. code-block:: {language}` in the section"
    return textwrap.dedent(match.group(1))


def _signature(fn_def):
    """(name, [(param, annotation)], return annotation) of an ``ast.FunctionDef``, normalised."""
    params = [(a.arg, ast.unparse(a.annotation)) for a in fn_def.args.args]
    return fn_def.name, params, ast.unparse(fn_def.returns)


def _spec_signature(fn):
    sig = inspect.signature(fn)
    norm = lambda annotation: ast.unparse(ast.parse(annotation, mode="eval").body)  # noqa: E731
    params = [(p.name, norm(p.annotation)) for p in sig.parameters.values()]
    return fn.__name__, params, norm(sig.return_annotation)


def test_every_hookspec_has_a_reference_section_with_its_exact_signature():
    sections = _sections(GUIDE.read_text())
    assert SPECS, "no hookspecs found"
    for name, fn in SPECS.items():
        body = sections.get(f"``{name}``")
        assert body is not None, f"the adapter guide has no section ``{name}``"
        code = _first_code_block(body, "python")
        tree = ast.parse(code)
        (fn_def,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert _signature(fn_def) == _spec_signature(fn), f"{name}: the guide's signature differs"
        assert [ast.unparse(d) for d in fn_def.decorator_list] == ["hookimpl"]
        assert f".. autofunction:: nnsight_core.hookspecs.{name}" in body


def test_the_reference_states_each_hooks_firstresult_flag():
    sections = _sections(GUIDE.read_text())
    for name, fn in SPECS.items():
        flag = getattr(fn, f"{hookspecs.PROJECT}_spec")["firstresult"]
        match = re.search(r"^:firstresult: (yes|no)\b", sections[f"``{name}``"], re.MULTILINE)
        assert match, f"{name}: no `:firstresult:` field"
        assert match.group(1) == ("yes" if flag else "no"), name


def test_the_reference_has_no_section_for_a_hook_that_does_not_exist():
    titles = [t for t in _sections(GUIDE.read_text()) if re.fullmatch(r"``nnsight_\w+``", t)]
    assert sorted(t.strip("`") for t in titles) == sorted(SPECS)


def test_the_section_parser_sees_a_wrong_signature():
    # Guard against a reference test that cannot fail: a changed annotation is caught.
    tree = ast.parse("@hookimpl\ndef nnsight_load(model: NNsightModel, model_key: str, args: Tuple[Any, ...],"
                     " kwargs: Dict[str, Any], meta: bool) -> Optional[torch.nn.Module]:\n    ...\n")
    assert _signature(tree.body[0]) != _spec_signature(SPECS["nnsight_load"])


# -- the lifecycle diagram -------------------------------------------------------------


def _diagram_hooks():
    text = GUIDE.read_text()
    section = text[text.index(".. _hook-lifecycle:"):text.index(".. _hook-reference:")]
    diagram = _first_code_block(section, "text")
    return re.findall(r"(nnsight_[a-z_]+)(?:\(meta=(True|False)\))?", diagram)


def test_the_lifecycle_diagram_lists_the_hooks_in_the_order_they_fire():
    calls = []

    def before(hook_name, hook_impls, kwargs):
        calls.append((hook_name, str(kwargs["meta"]) if hook_name == "nnsight_load" else ""))

    undo = get_plugin_manager().add_hookcall_monitoring(before, lambda *args: None)
    try:
        # The code of the diagram's left column.
        model = ToyModel("mlp:5,8,2")
        with model.trace() as tracer:
            with tracer.invoke([0.1, 0.2, 0.3, 0.4, 0.5]):
                hidden = model.layer0.output.save()
            with tracer.invoke([[0.5, 0.4, 0.3, 0.2, 0.1], [1.0, 0.0, 1.0, 0.0, 1.0]]):
                model.relu0.output[:] = 0
    finally:
        undo()
    assert hidden.value.shape == (1, 8)
    assert calls == _diagram_hooks()
    # nnsight_backend is asked only for remote=True, when no graph runs in this process.
    assert {name for name, _ in calls} == set(SPECS) - {"nnsight_backend"}


# -- the toy adapter's own behaviour ----------------------------------------------------


def test_toy_model_is_lazy_until_the_first_execution():
    model = ToyModel("mlp:5,8,2", seed=3)
    assert not model.dispatched and model._model.layer0.weight.is_meta
    x = [[0.1, 0.2, 0.3, 0.4, 0.5]]
    out = model.trace(x, trace=False)
    assert model.dispatched
    torch.testing.assert_close(out, build("mlp:5,8,2", seed=3)(torch.tensor(x)), rtol=0, atol=0)


def test_toy_edit_equals_a_raw_forward_hook():
    model = ToyModel("mlp:5,8,2")
    x = [[0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.1, 0.0, 0.4, 0.9]]
    with torch.no_grad(), model.trace(x):
        model.relu0.output[:, :4] = 0
        out = model.output.save()
    reference = build("mlp:5,8,2")

    def zero(module, args, output):
        output = output.clone()
        output[:, :4] = 0
        return output

    handle = reference.relu0.register_forward_hook(zero)
    try:
        with torch.no_grad():
            expected = reference(torch.tensor(x))
    finally:
        handle.remove()
    torch.testing.assert_close(out.value, expected, rtol=0, atol=0)


@pytest.mark.parametrize("spec", ["mlp:5", "mlp:5,x", "cnn:5,2", 42])
def test_toy_model_rejects_a_bad_spec(spec):
    with pytest.raises(ModelKeyError, match=r"specs of the form 'mlp:<width>,<width>"):
        ToyModel(spec)


@pytest.mark.parametrize("inputs, message", [
    (([0.1, 0.2],), r"rows of 5 floats.*shape \(1, 2\)"),
    ((["a", "b", "c", "d", "e"],), "must be numbers"),
    (([0.1] * 5, [0.2] * 5), "takes one input"),
])
def test_toy_model_rejects_bad_inputs_and_keeps_no_hook(inputs, message):
    model = ToyModel("mlp:5,8,2", dispatch=True)
    with pytest.raises(InputError, match=message):
        with model.trace(*inputs):
            model.layer0.output.save()
    assert hook_count(model._model) == 0
    with model.trace([0.1, 0.2, 0.3, 0.4, 0.5]):  # the next trace works
        out = model.output.save()
    assert out.value.shape == (1, 2)


# -- registration by entry point ----------------------------------------------------------


def test_the_toy_adapter_registers_by_entry_point(tmp_path):
    """What `pip install docs/examples/plugin_toy_adapter` does, without pip: the dist-info on the path."""
    info = tmp_path / "nnsight_toy-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nnsight-toy\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[nnsight_core]\ntoy = nnsight_toy.plugin\n")
    code = textwrap.dedent("""
        from nnsight_toy import ToyModel
        model = ToyModel("mlp:5,8,2")
        with model.trace([0.1, 0.2, 0.3, 0.4, 0.5]):
            out = model.output.save()
        print("output", tuple(out.shape))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TOY_DIR)])}
    env.pop("NNSIGHT_BLOCK_PLUGINS", None)
    listing = subprocess.run([sys.executable, "-m", "nnsight_core", "plugins"], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert ("\ntoy\n  distribution  nnsight-toy 0.1.0\n  module        nnsight_toy.plugin\n"
            "  hooks         nnsight_load, nnsight_prepare_inputs, nnsight_batch_inputs, "
            "nnsight_execute\n") in listing
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "output (1, 2)"
