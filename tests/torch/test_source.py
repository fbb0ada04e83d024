"""envoy.source: call sites inside a forward, against direct calls of the same code.

The modules below are written so each call site's value is easy to compute directly;
expected values come from calling the module's pieces by hand, never from the library.
"""

import functools
import sys
import traceback

import pytest
import torch

from nnsight_core import EnvoyAttributeError, Graph, MissedCallError, SourceError
from nnsight_core.source import rewrite
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

LOG = []


def logged(fn):
    """A functools.wraps decorator with a side effect the test can see."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        LOG.append(fn.__name__)
        return fn(*args, **kwargs)

    return wrapper


def double(x):
    return torch.mul(x, 2)


class Base(torch.nn.Module):
    def forward(self, x):
        return x + 1


class Busy(Base):
    """Every shape of forward that real models have."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 4)
        self.__secret = 3.0  # name-mangled attribute

    @logged
    def forward(self, x, *args, repeat=2, fail=False, **kwargs):
        if fail:
            raise ValueError("boom")                       # a line the traceback must name
        h = self.inner(x)
        parts = [torch.relu(h * k) for k in range(repeat)]  # calls inside a comprehension
        h = torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]
        if kwargs.get("early"):
            return self.out(h)                              # early return
        h = double(h) * self.__secret
        y = super().forward(h)                              # zero-argument super()
        return self.out(y)


FAIL_LINE = Busy.forward.__wrapped__.__code__.co_firstlineno + 3


def direct(net, x, repeat=2, early=False):
    """The forward computed by hand, returning each call site's value."""
    values = {}
    h = values["inner_0"] = net.inner(x)
    parts = [torch.relu(h * k) for k in range(repeat)]
    values["relu_0"] = parts
    h = torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]
    if early:
        values["out_0"] = net.out(h)
        return values
    values["double_0"] = h * 2
    h = values["double_0"] * 3.0
    values["forward_0"] = h + 1
    values["out_1"] = net.out(values["forward_0"])
    return values


class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.busy = Busy()
        self.other = torch.nn.Linear(4, 4)

    def forward(self, x, **kwargs):
        return self.other(self.busy(x, **kwargs))


@pytest.fixture
def model():
    LOG.clear()
    return NNsight(Wrapper())


def test_call_sites_are_named_by_callee_and_occurrence_in_source_order(model):
    names = rewrite(Busy.forward).names()
    assert names == ["ValueError_0", "inner_0", "relu_0", "range_0", "stack_0", "sum_0", "len_0",
                     "get_0", "out_0", "double_0", "forward_0", "out_1"]
    text = str(model.busy.source)
    line = next(l for l in text.splitlines() if "torch.stack" in l)
    assert line.lstrip().startswith("stack_0, sum_0, len_0 ->")
    assert f"{FAIL_LINE}" in next(l for l in text.splitlines() if "boom" in l)


def test_outputs_equal_direct_calls(model):
    x = torch.rand(3, 4)
    net = model._model.busy
    with torch.no_grad(), model.trace(x):
        src = model.busy.source
        inner = src.inner_0.output.save()
        inner_in = src.inner_0.input.save()
        relus = [src.relu_0.output.save(), src.relu_0.next().output.save()]   # once per k
        doubled = src.double_0.output.save()
        sup = src.forward_0.output.save()
        out = src.out_1.output.save()
        final = model.busy.output.save()
    with torch.no_grad():
        expected = direct(net, x)
    assert torch.equal(inner_in.value, x)
    assert torch.equal(inner.value, expected["inner_0"])
    for saved, value in zip(relus, expected["relu_0"], strict=True):
        assert torch.equal(saved.value, value)
    assert torch.equal(doubled.value, expected["double_0"])
    assert torch.equal(sup.value, expected["forward_0"])
    assert torch.equal(out.value, expected["out_1"]) and torch.equal(final.value, expected["out_1"])
    assert LOG == ["forward"]  # the decorator still ran, once


def test_edits_and_assignments_reach_the_rest_of_the_forward(model):
    x = torch.rand(2, 4)
    net = model._model.busy
    with torch.no_grad(), model.trace(x):
        model.busy.source.inner_0.output[:, 0] = 0            # in place
        model.busy.source.double_0.output = torch.ones(2, 4)  # replaced
        model.busy.source.out_1.input = model.busy.source.out_1.input * 0.5
        final = model.busy.output.save()
    with torch.no_grad():
        h = net.inner(x)
        h[:, 0] = 0
        h = torch.stack([torch.relu(h * k) for k in range(2)]).sum(0)
        expected = net.out((torch.ones(2, 4) * 3.0 + 1) * 0.5)
    assert torch.equal(final.value, expected)


def test_calls_happening_a_different_number_of_times(model):
    x = torch.rand(1, 4)
    with torch.no_grad(), model.trace(x, repeat=3):
        relus = model.busy.source.relu_0.all().output.save()
    assert len(relus.value) == 3
    with torch.no_grad(), model.trace(x, repeat=1, early=True):
        early = model.busy.source.out_0.output.save()
        relus = model.busy.source.relu_0.all().output.save()
    with torch.no_grad():
        expected = direct(model._model.busy, x, repeat=1, early=True)
    assert torch.equal(early.value, expected["out_0"]) and len(relus.value) == 1
    with pytest.raises(MissedCallError, match=r"model\.busy\.source\.out_1 .*never ran"):
        with torch.no_grad(), model.trace(x, early=True):
            model.busy.source.out_1.output.save()
    assert hook_count(model._model) == 0


def test_per_invoke_rows(model):
    a, b = torch.rand(1, 4), torch.rand(2, 4)
    net = model._model.busy
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(a):
            first = model.busy.source.inner_0.output.save()
        with tracer.invoke(b):
            model.busy.source.inner_0.output[:] = 0
            second = model.busy.source.out_1.output.save()
        with tracer.invoke(a):
            third = model.busy.output.save()
    with torch.no_grad():
        torch.testing.assert_close(first.value, net.inner(a), rtol=0, atol=1e-6)
        zero = torch.zeros(2, 4)
        torch.testing.assert_close(second.value, net.out(double(zero) * 3.0 + 1), rtol=0, atol=1e-6)
        torch.testing.assert_close(third.value, direct(net, a)["out_1"], rtol=0, atol=1e-6)


def test_a_module_not_asked_runs_its_original_code_and_nothing_stays():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(sys._getframe().f_code)
            return x * 2

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Probe(), Probe()

        def forward(self, x):
            return self.b(self.a(x))

    model = NNsight(Two())
    with torch.no_grad(), model.trace(torch.rand(1, 3)):
        model.b.output.save()
        print(model.a.source)  # looking at the source records nothing and changes nothing
    with torch.no_grad(), model.trace(torch.rand(1, 3)):
        model.a.output.save()
        model.b.inputs.save()
    assert all(code is Probe.forward.__code__ for code in seen)  # the same code object, every call
    assert hook_count(model._model) == 0


def test_a_sourced_module_runs_rewritten_code_for_that_run_only():
    codes = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            codes.append(sys._getframe().f_code)
            return torch.mul(x, 2)

    model = NNsight(torch.nn.Sequential(Probe(), Probe()))
    with torch.no_grad(), model.trace(torch.rand(1, 3)):
        model[0].source.mul_0.output.save()
    assert codes[0] is not Probe.forward.__code__ and codes[1] is Probe.forward.__code__
    assert codes[0].co_filename == Probe.forward.__code__.co_filename
    assert hook_count(model._model) == 0
    codes.clear()
    model._model(torch.rand(1, 3))
    assert codes == [Probe.forward.__code__] * 2


def test_the_rewrite_is_cached_per_function_not_per_instance():
    one, two = Busy(), Busy()
    assert rewrite(one.forward) is rewrite(two.forward) is rewrite(Busy.forward)
    model = NNsight(torch.nn.Sequential(one, two))
    with torch.no_grad(), model.trace(torch.rand(1, 4)):
        a = model[0].source.out_1.output.save()
        b = model[1].source.out_1.output.save()
        x = model.input.save()
    with torch.no_grad():
        assert torch.equal(a.value, direct(one, x.value)["out_1"])
        assert torch.equal(b.value, direct(two, a.value)["out_1"])


def test_tracebacks_point_at_the_model_source_line(model):
    with pytest.raises(ValueError, match="boom") as info:
        with torch.no_grad(), model.trace(torch.rand(1, 4), fail=True):
            model.busy.source.inner_0.output.save()
    frames = traceback.extract_tb(info.value.__traceback__)
    ours = [f for f in frames if f.filename == __file__ and f.name == "forward"]
    assert ours and ours[-1].lineno == FAIL_LINE and "boom" in ours[-1].line
    assert hook_count(model._model) == 0
    with torch.no_grad(), model.trace(torch.rand(1, 4)):  # the next trace works
        model.busy.source.inner_0.output.save()


def test_recursion_into_a_plain_function(model):
    x = torch.rand(2, 4)
    net = model._model.busy
    with torch.no_grad(), model.trace(x):
        inner = model.busy.source.double_0.source.mul_0
        seen = inner.inputs.save()
        inner.output[:] = 1
        final = model.busy.output.save()
    args, kwargs = seen.value
    assert args[1] == 2 and not kwargs
    with torch.no_grad():
        h = net.inner(x)
        assert torch.equal(args[0], torch.stack([torch.relu(h * k) for k in range(2)]).sum(0))
    with torch.no_grad():
        assert torch.equal(final.value, net.out(torch.ones(2, 4) * 3.0 + 1))
    assert "mul_0 ->" in str(model.busy.source.double_0.source)


def test_wrong_names_and_unreadable_sources_raise_specific_errors(model):
    with pytest.raises(EnvoyAttributeError, match=r"model\.busy\.source\.innr_0 does not exist.*inner_0"):
        model.busy.source.innr_0
    with pytest.raises(SourceError, match="calls a module"):
        model.busy.source.inner_0.source
    with pytest.raises(EnvoyAttributeError, match="a call site has"):
        model.busy.source.inner_0.outptu
    with pytest.raises(EnvoyAttributeError, match=r"double_0\.source\.nope_0 does not exist.*mul_0"):
        with torch.no_grad(), model.trace(torch.rand(1, 4)):
            model.busy.source.double_0.source.nope_0.output.save()
    assert hook_count(model._model) == 0
    model._model.busy.forward = lambda x, **kw: x
    with pytest.raises(SourceError, match="replaced on the instance"):
        model.busy.source


def test_scan_knows_call_site_shapes_and_graph_round_trips(model):
    x = torch.rand(3, 4)
    with torch.no_grad(), model.trace(x) as tracer:
        site = model.busy.source.stack_0.output
        shape = site.shape
        saved = site.save()
    assert shape == saved.value.shape == (2, 3, 4)
    loaded = Graph.from_json(tracer.graph.to_json())
    results = model.run_graph(loaded, x)
    assert torch.equal(next(iter(results.values())), saved.value)


def test_skip_a_call_site(model):
    x = torch.rand(2, 4)
    net = model._model.busy
    with torch.no_grad(), model.trace(x):
        model.busy.source.double_0.skip(torch.zeros(2, 4))
        final = model.busy.output.save()
    with torch.no_grad():
        assert torch.equal(final.value, net.out(torch.zeros(2, 4) * 3.0 + 1))


def test_a_graph_naming_a_missing_call_site_raises_before_the_model_runs(model):
    graph = Graph()
    graph.rows.append((0, 1))
    site = graph.create_node("output", ("busy.source.nope_0", 0), invoke=0)
    graph.create_node("save", None, (site,), invoke=0)
    with pytest.raises(SourceError, match=r"model\.busy\.source\.nope_0 does not exist.*inner_0"):
        model.run_graph(graph, torch.rand(1, 4))
    assert hook_count(model._model) == 0 and LOG == []
