"""Core behaviour independent of a particular adapter: graph, proxies, plugins, imports."""

import inspect
import operator
import subprocess
import sys
import textwrap
from collections import OrderedDict

import pluggy
import pytest
import torch

import nnsight_core
from nnsight_core import (OPS, AdapterNotFoundError, Graph, NNsightModel, OutputNotReturnedError,
                          ProxyControlFlowError, ValueNotSetError, hookspecs)
from nnsight_core.plugins import get_plugin_manager
from nnsight_torch import NNsight


def make_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(5, 10)),
                                            ("layer2", torch.nn.Linear(10, 2))]))


def test_core_imports_no_adapter_framework():
    code = textwrap.dedent("""
        import sys, nnsight_core, nnsight_core.testing
        bad = [m for m in ("transformers", "diffusers", "accelerate", "nnsight_torch") if m in sys.modules]
        print(",".join(bad))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_are_exported():
    for name in nnsight_core.__all__:
        assert hasattr(nnsight_core, name), name


def test_graph_vocabulary_is_closed_and_documented():
    graph = Graph()
    with pytest.raises(ValueError, match="unknown graph operation 'exec'"):
        graph.create_node("exec", "print", ())
    assert all(isinstance(doc, str) and doc for doc in OPS.values())
    # Each executable op is an Interleaver method; module-value ops are fed by hooks.
    from nnsight_core.interleaver import Interleaver
    for op in OPS:
        assert op in ("output", "inputs") or callable(getattr(Interleaver, op)), op
    documented = inspect.getdoc(nnsight_core.graph)
    assert "vocabulary" in documented


def test_a_backend_returns_the_output_or_the_error_reading_it_raises():
    net = make_net()
    model = NNsight(net)
    x = torch.ones(1, 5)

    def here(runner, keep):                       # runs the graph in this process, as a server would
        return net(x)

    with model.trace(x, backend=here) as tracer:
        assert isinstance(tracer.output, nnsight_core.Proxy)     # inside the block: the root's output proxy
    torch.testing.assert_close(tracer.output, net(x))

    def elsewhere(runner, keep):
        return OutputNotReturnedError("the output stayed on the server: save model.output inside the trace")

    with model.trace(x, backend=elsewhere) as tracer:
        pass
    for _ in range(2):                            # every read raises (never a silent None)
        with pytest.raises(OutputNotReturnedError, match="save model.output") as info:
            tracer.output
        assert isinstance(info.value, ValueNotSetError)


def test_control_flow_on_a_proxy_raises_with_the_alternative():
    model = NNsight(make_net())
    with model.trace(torch.rand(1, 5)):
        h = model.layer1.output
        with pytest.raises(ProxyControlFlowError, match="torch.where"):
            if h:
                pass
        with pytest.raises(ProxyControlFlowError, match="shape"):
            len(h)
        with pytest.raises(ProxyControlFlowError, match="unbind"):
            for _ in h:
                pass
        saved = h.save()
        with pytest.raises(ValueNotSetError, match="does not exist yet"):
            saved.value
    # After the trace the saved proxy behaves like its value.
    assert len(saved) == 1
    assert [row.shape for row in saved] == [torch.Size([10])]
    assert bool(saved.sum() == saved.value.sum())


@pytest.mark.parametrize("convert, name", [(float, "float(proxy)"), (int, "int(proxy)"),
                                           (complex, "complex(proxy)"),
                                           (operator.index, "as an integer (operator.index)")],
                         ids=["float", "int", "complex", "index"])
def test_number_conversion_of_a_proxy_raises_with_the_alternative(convert, name):
    net = make_net()
    model = NNsight(net)
    x = torch.rand(1, 5)
    with torch.no_grad(), model.trace(x):
        first = model.layer2.output[0, 0]
        count = (model.layer2.output[0, 0] > -1e9).long()
        with pytest.raises(ProxyControlFlowError) as info:
            convert(count if convert is operator.index else first)
        message = str(info.value)
        assert name in message and "model.layer2.output" in message, message
        assert ("proxy[" in message or "hidden[" in message) if convert is operator.index else "item()" in message
        with pytest.raises(TypeError):  # still a TypeError, for code that probes with try/except
            convert(first)
        first, count = first.save(), count.save()
    # After the trace a saved proxy converts like its value (plain PyTorch).
    with torch.no_grad():
        plain = net(x)[0, 0]
    if convert is operator.index:
        assert operator.index(count) == operator.index((plain > -1e9).long()) == 1
        assert [10, 20][count] == 20
    else:
        assert convert(first) == convert(plain)
        assert type(convert(first)) is convert


def test_a_subclass_may_set_attributes_before_super_init():
    class Wrapper(NNsight):
        def __init__(self, module, scale):
            self.scale = scale                       # before the envoy exists
            self.extra = torch.nn.Identity()         # even a module: a plain attribute then
            super().__init__(module)
            self.after = scale * 2

    net = make_net()
    model = Wrapper(net, 3)
    assert (model.scale, model.after) == (3, 6) and isinstance(model.extra, torch.nn.Identity)
    assert not hasattr(net, "scale") and not hasattr(net, "extra")
    x = torch.rand(1, 5)
    with torch.no_grad(), model.trace(x):
        out = model.layer2.output.save()
    with torch.no_grad():
        torch.testing.assert_close(out.value, net(x), rtol=0, atol=0)


def test_value_of_a_failed_trace_says_so():
    model = NNsight(make_net())
    with pytest.raises(RuntimeError):
        with model.trace(torch.rand(1, 5)):
            h = model.layer2.output.save()
            model.layer1.output @ torch.ones(3, 3)
    with pytest.raises(ValueNotSetError, match="never computed"):
        h.value


def test_proxy_repr_inside_and_after_the_trace():
    model = NNsight(make_net())
    x = torch.rand(1, 5)
    with model.trace(x):
        h = model.layer1.output.save()
        inside = repr(h)
    assert "model.layer1.output" in inside and "recording" in inside
    assert repr(h) == repr(model._model.layer1(x))
    assert f"{h.value.sum().item():.3f}" == f"{h.sum():.3f}"


def test_proxy_from_another_models_open_trace_raises():
    a, b = NNsight(make_net()), NNsight(make_net())
    with pytest.raises(nnsight_core.ProxyScopeError, match="another trace"):
        with a.trace(torch.rand(1, 5)):
            ha = a.layer1.output
            with b.trace(torch.rand(1, 5)):
                b.layer1.output = ha


def test_hookspecs_are_firstresult_and_documented():
    names = [n for n in dir(hookspecs) if n.startswith("nnsight_")]
    assert names == sorted(["nnsight_load", "nnsight_prepare_inputs", "nnsight_batch_inputs",
                            "nnsight_execute", "nnsight_backend"])
    for name in names:
        spec = getattr(hookspecs, name)
        opts = spec.nnsight_core_spec
        assert opts["firstresult"] is True, name
        assert "return ``None``" in inspect.getdoc(spec).replace("\n", " "), name


def test_torch_adapter_is_loaded_by_entry_point():
    manager = get_plugin_manager()
    names = dict(manager.list_name_plugin())
    assert "torch" in names
    assert names["torch"].__name__ == "nnsight_torch.plugin"


def test_unknown_wrapper_class_gets_a_clear_error():
    class Orphan(NNsightModel):
        pass

    model = Orphan(make_net())
    with pytest.raises(AdapterNotFoundError, match="no adapter answered nnsight_prepare_inputs for Orphan"):
        with model.trace(torch.rand(1, 5)):
            pass


def test_execute_can_be_wrapped_by_a_plugin():
    calls = []

    class Timer:
        @nnsight_core.hookimpl(wrapper=True)
        def nnsight_execute(self, model, batched, kwargs):
            calls.append("before")
            result = yield
            calls.append("after")
            return result

    manager = get_plugin_manager()
    plugin = Timer()
    manager.register(plugin)
    try:
        model = NNsight(make_net())
        x = torch.rand(1, 5)
        with model.trace(x) as tracer:
            pass
    finally:
        manager.unregister(plugin)
    assert calls == ["before", "after"]
    assert torch.equal(tracer.output, model._model(x))


def test_blocking_a_plugin_by_environment_variable():
    code = textwrap.dedent("""
        import torch
        from nnsight_core import AdapterNotFoundError
        from nnsight_torch import NNsight
        model = NNsight(torch.nn.Linear(2, 2))
        try:
            model.trace(torch.rand(1, 2), trace=False)
        except AdapterNotFoundError as error:
            print("blocked:", error)
    """)
    env = {"NNSIGHT_BLOCK_PLUGINS": "torch", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.startswith("blocked: no adapter answered")


def test_nnsight_facade():
    import nnsight
    from nnsight import NNsight as Facade
    assert Facade is NNsight
    assert nnsight.Graph is Graph
    with pytest.raises(AttributeError):
        nnsight.DoesNotExist


def test_nnsight_facade_names_the_missing_distribution(monkeypatch):
    import nnsight
    monkeypatch.setitem(nnsight._WRAPPERS, "FancyModel", ("nnsight_fancy_missing", "nnsight-fancy"))
    with pytest.raises(ImportError, match="'nnsight-fancy', which is not installed"):
        nnsight.FancyModel


def test_pluggy_is_used_for_plugins():
    assert isinstance(get_plugin_manager(), pluggy.PluginManager)


class Doubler(torch.nn.Module):
    def forward(self, x):
        return x * 2


class WithExtras(NNsight):
    """An NNsight subclass with a module attached beside the model, as LanguageModel.generator is."""

    def __init__(self, module):
        super().__init__(module)
        self.attach("after", Doubler())


def test_attached_module_is_an_envoy_but_not_part_of_the_model():
    net = make_net()
    model = WithExtras(net)
    assert repr(model) == repr(net) and "after" not in dict(net.named_children())
    x = torch.rand(2, 5)
    with model.trace(x):
        doubled = model.after(model.output).save()
    torch.testing.assert_close(doubled.value, net(x) * 2)
    with pytest.raises(nnsight_core.MissedCallError, match=r"model\.after\.output .*never ran"):
        with model.trace(x):
            model.after.output.save()


class TwoWays(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.inner(x)

    def twice(self, x):
        return self.inner(self.inner(x))


def test_a_runner_can_execute_another_method_of_the_model():
    from nnsight_core import Runner

    torch.manual_seed(0)
    net = TwoWays()
    model = NNsight(net)
    x = torch.rand(2, 3)
    with Runner(model, (x,), {}, {}, method="twice") as runner:
        first = model.inner.output.save()
        model.inner.next().output[:] = 0
    assert runner.method == "twice"
    torch.testing.assert_close(first.value, net.inner(x))
    assert torch.equal(runner.output, torch.zeros(2, 3))


def test_tracing_a_plain_module_imports_no_other_framework():
    code = textwrap.dedent("""
        import sys, torch
        from nnsight import NNsight
        model = NNsight(torch.nn.Linear(2, 2))
        with model.trace(torch.rand(1, 2)):
            model.output.save()
        print(",".join(m for m in ("transformers", "diffusers", "accelerate") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
