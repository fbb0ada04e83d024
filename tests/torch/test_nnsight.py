"""NNsight on plain torch modules; expected values from raw forward hooks and direct calls."""

from collections import OrderedDict

import pytest
import torch

from nnsight_core import (EnvoyAttributeError, InputError, InterventionError, InvokeError, MissedCallError,
                          ModuleIndexError, OutOfOrderEditError, TraceStateError)
from nnsight_core import Interleaver
from nnsight_core.graph import EMPTY
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

from tests.helpers import Shared, make_net


def raw_outputs(net, x, names, edits=None):
    """Run ``net(x)`` with plain forward hooks recording (and optionally editing) outputs."""
    seen, handles = {}, []
    for name in names:
        def hook(module, args, output, name=name):
            if edits and name in edits:
                output = edits[name](output)
            seen[name] = output.detach().clone()
            return output
        handles.append(net.get_submodule(name).register_forward_hook(hook))
    try:
        out = net(x)
    finally:
        for h in handles:
            h.remove()
    return seen, out


def test_reference_example_trace_with_input():
    # nnsight 0.2's NNsight docstring example, verbatim apart from the model set-up.
    input_size, hidden_dims, output_size = 5, 10, 2
    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict([
        ('layer1', torch.nn.Linear(input_size, hidden_dims)),
        ('sigma1', torch.nn.Sigmoid()),
        ('layer2', torch.nn.Linear(hidden_dims, output_size)),
        ('sigma2', torch.nn.Sigmoid()),
    ]))
    net = model
    example_input = torch.rand((1, input_size))

    from nnsight import NNsight

    with NNsight(model).trace(example_input) as model:

        l2_input = model.layer2.input.save()
        l2_output = model.layer2.output.save()

        output = model.output.save()

    print(l2_input)
    print(l2_output)
    print(output)

    seen, out = raw_outputs(net, example_input, ["sigma1", "layer2"])
    torch.testing.assert_close(l2_input.value, seen["sigma1"], rtol=0, atol=0)
    torch.testing.assert_close(l2_output.value, seen["layer2"], rtol=0, atol=0)
    torch.testing.assert_close(output.value, out, rtol=0, atol=0)
    assert str(output) == str(output.value)


def test_reference_example_two_invokes():
    input_size = 5
    net = make_net()
    model = net
    example_input = torch.rand((1, input_size))
    example_input2 = torch.rand((1, input_size))

    from nnsight import NNsight

    with NNsight(model).trace() as model:

        with model.invoke(example_input):

            output1 = model.output.save()

        with model.invoke(example_input2):

            output2 = model.output.save()

    print(output1)
    print(output2)

    torch.testing.assert_close(output1.value, net(example_input), rtol=0, atol=1e-6)
    torch.testing.assert_close(output2.value, net(example_input2), rtol=0, atol=1e-6)


def test_print_model_is_the_module_repr(net):
    assert repr(NNsight(net)) == repr(net)
    assert str(NNsight(net)) == str(net)


def test_wrapper_attributes(net):
    model = NNsight(net)
    assert model.model_key == "Sequential" and model._model is net   # the seed: a str, the class name
    with model.edit() as edited:                                       # edits copy the wrapper
        pass
    assert edited.model_key == "Sequential" and edited._model is net and edited._lock is model._lock
    assert model.custom_model and model.dispatched
    assert model.args == () and model.kwargs == {}
    assert model.to(torch.float64) is model
    assert next(net.parameters()).dtype == torch.float64


def test_save_returns_the_proxy_and_saves_the_value_for_every_reader(net):
    """``.save()`` marks the value (as nnsight's ``save()`` returns ``self``): reading one module
    value twice at one call is one proxy, so saving it through either keeps it for both."""
    model, x = NNsight(net), torch.rand(2, 5)
    with torch.no_grad(), model.trace(x) as tracer:
        first = model.layer1.output
        again = model.layer1.output.save()
        twice = again.save()
    assert first is again is twice
    assert [(n.op, n.saved) for n in tracer.graph.nodes] == [("output", True)]
    with torch.no_grad():
        expected = net.layer1(x)
    torch.testing.assert_close(first.value, expected, rtol=0, atol=0)


def test_empty_trace_equals_plain_forward_bit_for_bit(net):
    x = torch.rand(4, 5)
    model = NNsight(net)
    with model.trace(x) as tracer:
        pass
    assert torch.equal(tracer.output, net(x))
    assert hook_count(net) == 0


def test_save_every_module(net):
    x = torch.rand(3, 5)
    model = NNsight(net)
    names = ["layer1", "sigma1", "layer2", "sigma2"]
    with model.trace(x):
        saved = {n: getattr(model, n).output.save() for n in names}
    seen, _ = raw_outputs(net, x, names)
    for n in names:
        assert torch.equal(saved[n].value, seen[n]), n


def test_in_place_edit_matches_raw_hook(net):
    x = torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x):
        before = model.layer1.output.clone().save()
        model.layer1.output[:, 0] = 0
        after = model.layer1.output.save()
        out = model.output.save()

    def zero(o):
        o = o.clone()
        o[:, 0] = 0
        return o

    seen, expected = raw_outputs(net, x, ["layer1"], edits={"layer1": zero})
    assert torch.equal(after.value, seen["layer1"])
    assert torch.equal(out.value, expected)
    assert bool((before.value[:, 0] != 0).all())


def test_assignment_edit_matches_raw_hook(net):
    x = torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x):
        model.layer2.output = model.layer2.output * 2
        out = model.output.save()
    _, expected = raw_outputs(net, x, ["layer2"], edits={"layer2": lambda o: o * 2})
    assert torch.equal(out.value, expected)


def test_read_after_assignment_sees_the_new_value(net):
    x = torch.rand(1, 5)
    model = NNsight(net)
    with model.trace(x):
        model.layer1.output = torch.ones(1, 10)
        read = model.layer1.output.save()
        out = model.output.save()
    assert torch.equal(read.value, torch.ones(1, 10))
    assert torch.equal(out.value, net[3](net[2](net[1](torch.ones(1, 10)))))


def test_operators_and_torch_functions_on_proxies(net):
    x = torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x):
        h = model.layer1.output
        results = {
            "add": (h + 1).save(), "radd": (1 + h).save(), "sub": (h - 0.5).save(),
            "rsub": (0.5 - h).save(), "mul": (h * 3).save(), "div": (h / 2).save(),
            "floordiv": (h // 0.3).save(), "mod": (h % 0.3).save(), "pow": (h ** 2).save(),
            "matmul": (h @ torch.ones(10, 3)).save(), "neg": (-h).save(), "abs": abs(h).save(),
            "lt": (h < 0).save(), "ge": (h >= 0).save(), "eq": (h == h).save(),
            "cat": torch.cat([h, h], dim=1).save(), "relu": torch.nn.functional.relu(h).save(),
            "sum": h.sum(dim=1).save(), "method": h.softmax(-1).save(), "shape": h.size().save(),
            "tensor_lhs": (torch.ones(2, 10) * h).save(), "getitem": h[:, 2:4].save(),
        }
    seen, _ = raw_outputs(net, x, ["layer1"])
    v = seen["layer1"]
    expected = {
        "add": v + 1, "radd": 1 + v, "sub": v - 0.5, "rsub": 0.5 - v, "mul": v * 3, "div": v / 2,
        "floordiv": v // 0.3, "mod": v % 0.3, "pow": v ** 2, "matmul": v @ torch.ones(10, 3),
        "neg": -v, "abs": abs(v), "lt": v < 0, "ge": v >= 0, "eq": v == v,
        "cat": torch.cat([v, v], dim=1), "relu": torch.relu(v), "sum": v.sum(dim=1),
        "method": v.softmax(-1), "shape": v.shape, "tensor_lhs": torch.ones(2, 10) * v,
        "getitem": v[:, 2:4],
    }
    for name, proxy in results.items():
        if name == "shape":
            assert proxy.value == expected[name]
        else:
            torch.testing.assert_close(proxy.value, expected[name], rtol=0, atol=0, msg=name)


def test_patch_from_invoke_one_into_invoke_two(net):
    x1, x2 = torch.rand(1, 5), torch.rand(1, 5)
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x1):
            h1 = model.layer1.output
        with tracer.invoke(x2):
            model.layer1.output = h1
            out2 = model.output.save()
        with tracer.invoke(x2):
            plain2 = model.output.save()
    seen, _ = raw_outputs(net, x1, ["layer1"])
    _, expected = raw_outputs(net, x2, ["layer1"], edits={"layer1": lambda o: seen["layer1"]})
    torch.testing.assert_close(out2.value, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain2.value, net(x2), rtol=0, atol=1e-6)


def test_in_place_patch_of_a_slice_between_invokes(net):
    x1, x2 = torch.rand(2, 5), torch.rand(3, 5)
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x1):
            h1 = model.layer1.output[0, :4]
        with tracer.invoke(x2):
            model.layer1.output[:, :4] = h1
            out2 = model.output.save()
    seen, _ = raw_outputs(net, x1, ["layer1"])

    def patch(o):
        o = o.clone()
        o[:, :4] = seen["layer1"][0, :4]
        return o

    _, expected = raw_outputs(net, x2, ["layer1"], edits={"layer1": patch})
    torch.testing.assert_close(out2.value, expected, rtol=0, atol=1e-6)


def test_value_saved_in_one_trace_used_in_the_next(net):
    x1, x2 = torch.rand(1, 5), torch.rand(1, 5)
    model = NNsight(net)
    with model.trace(x1):
        h = model.layer1.output.save()
    with model.trace(x2):
        model.layer1.output = h * 2
        out = model.output.save()
    seen, _ = raw_outputs(net, x1, ["layer1"])
    _, expected = raw_outputs(net, x2, ["layer1"], edits={"layer1": lambda o: seen["layer1"] * 2})
    torch.testing.assert_close(out.value, expected, rtol=0, atol=0)
    # Outside any trace a saved proxy computes on its value.
    torch.testing.assert_close(h + 1, seen["layer1"] + 1)
    assert h.shape == seen["layer1"].shape


def test_unsaved_value_from_a_finished_trace_raises(net):
    model = NNsight(net)
    with model.trace(torch.rand(1, 5)):
        h = model.layer1.output
    with pytest.raises(ValueError, match="not saved|freed|save"):
        with model.trace(torch.rand(1, 5)):
            model.layer2.output = h


def test_inputs_and_input_read_and_assign(net):
    x = torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x):
        args_kwargs = model.layer1.inputs.save()
        first = model.layer1.input.save()
        model.layer2.input = model.layer2.input * 0
        out = model.output.save()
    assert torch.equal(args_kwargs.value[0][0], x) and args_kwargs.value[1] == {}
    assert torch.equal(first.value, x)
    torch.testing.assert_close(out.value, net[3](net[2].bias.expand(2, 2)), rtol=0, atol=0)

    with model.trace(x):
        model.layer1.inputs = ((torch.zeros(2, 5),), {})
        out = model.output.save()
    torch.testing.assert_close(out.value, net(torch.zeros(2, 5)), rtol=0, atol=0)


def test_input_edit_in_place(net):
    x = torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x):
        model.layer1.input[:, 0] = 0
        out = model.output.save()
    x0 = x.clone()
    x0[:, 0] = 0
    torch.testing.assert_close(out.value, net(x0), rtol=0, atol=0)
    assert bool((x[:, 0] != 0).all()), "the caller's input tensor must not be edited"


def test_module_never_called_raises_naming_it():
    torch.manual_seed(0)
    net = Shared()
    model = NNsight(net)
    net.unused = torch.nn.Linear(4, 4)
    with pytest.raises(MissedCallError, match=r"model\.unused\.output \(call 0.*never ran"):
        with model.trace(torch.rand(1, 4)):
            model.unused.output.save()
    with pytest.raises(MissedCallError, match=r"model\.block\.output \(call 2.*ran 2 time"):
        with model.trace(torch.rand(1, 4)):
            model.block.next().next().output.save()
    assert hook_count(net) == 0


def test_edit_depending_on_a_later_module_raises(net):
    model = NNsight(net)
    with pytest.raises(OutOfOrderEditError, match=r"model\.layer1\.output"):
        with model.trace(torch.rand(1, 5)):
            model.layer1.output[:, 0] = model.layer2.output[:, 0]
    with pytest.raises(OutOfOrderEditError):
        with model.trace(torch.rand(1, 5)):
            model.layer1.output = model.layer2.output.sum() * model.layer1.output
    assert hook_count(net) == 0


def test_multi_invoke_assignment_writes_only_own_rows(net):
    x1, x2 = torch.rand(2, 5), torch.rand(3, 5)
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x1):
            a = model.output.save()
        with tracer.invoke(x2):
            model.layer1.output = torch.zeros(3, 10)
            b = model.output.save()
    torch.testing.assert_close(a.value, net(x1), rtol=0, atol=1e-6)
    torch.testing.assert_close(b.value, net[3](net[2](net[1](torch.zeros(3, 10)))), rtol=0, atol=1e-6)


def test_multi_invoke_wrong_row_count_raises(net):
    model = NNsight(net)
    with pytest.raises(Exception, match=r"invoke 1 owns 3 row"):
        with model.trace() as tracer:
            with tracer.invoke(torch.rand(2, 5)):
                pass
            with tracer.invoke(torch.rand(3, 5)):
                model.layer1.output = torch.zeros(2, 10)
    assert hook_count(net) == 0


def test_no_hook_left_after_errors_in_user_code_and_forward(net):
    model = NNsight(net)
    with pytest.raises(ZeroDivisionError):
        with model.trace(torch.rand(1, 5)):
            model.layer1.output.save()
            1 / 0
    assert hook_count(net) == 0

    class Fails(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("inside forward")

    net.add_module("fails", Fails())
    with pytest.raises(RuntimeError, match="inside forward"):
        with model.trace(torch.rand(1, 5)):
            model.layer1.output[:] = 0
            model.layer2.output.save()
    assert hook_count(net) == 0
    del net.fails
    x = torch.rand(1, 5)
    with model.trace(x) as tracer:
        pass
    assert torch.equal(tracer.output, net(x))


def test_error_inside_an_intervention_names_the_user_line(net):
    model = NNsight(net)
    with pytest.raises(InterventionError, match=r"test_nnsight\.py:\d+.*torch\.ones\(3, 3\)") as info:
        with model.trace(torch.rand(1, 5)):
            model.layer1.output @ torch.ones(3, 3)
            model.output.save()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert hook_count(net) == 0


def test_in_place_edit_with_autograd():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    x = torch.rand(2, 4)
    model = NNsight(net)
    with model.trace(x):
        model[1].output[:, 0] = 0        # ReLU's backward needs its own output
        out = model.output.save()
    out.value.sum().backward()
    net_grad = net[0].weight.grad.clone()
    net.zero_grad()

    def edit(module, args, output):
        output = output.clone()
        output[:, 0] = 0
        return output

    handle = net[1].register_forward_hook(edit)
    net(x).sum().backward()
    handle.remove()
    torch.testing.assert_close(net_grad, net[0].weight.grad, rtol=0, atol=0)


class ReturnsParameterView(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.arange(12.0).reshape(3, 4))

    def forward(self, x):
        return self.table[: x.shape[0]]


@pytest.mark.parametrize("grad", [True, False])
def test_in_place_edit_never_changes_parameters(grad):
    net = ReturnsParameterView()
    before = net.table.detach().clone()
    model = NNsight(net)
    with torch.set_grad_enabled(grad), model.trace(torch.rand(2, 1)):
        model.output[:] = -1
        out = model.output.save()
    assert torch.equal(out.value, -torch.ones(2, 4))
    assert torch.equal(net.table.detach(), before)


class TupleOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(3, 3)

    def forward(self, x):
        h = self.inner(x)
        return h, h.sum(-1)


class UsesTuple(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = TupleOut()
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x, scale=1.0):
        h, _ = self.block(x)
        return self.head(h) * scale


def test_tuple_outputs_index_and_edit():
    torch.manual_seed(0)
    net = UsesTuple()
    x = torch.rand(2, 3)
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x):
            hidden = model.block.output[0].save()
            total = model.block.output[1].save()
        with tracer.invoke(x):
            model.block.output[0][:] = 0
            out = model.output.save()
    h = net.block.inner(x)
    assert torch.equal(hidden.value, h)
    torch.testing.assert_close(total.value, h.sum(-1))
    torch.testing.assert_close(out.value, net.head(torch.zeros(2, 3)))


def test_trace_kwargs_go_to_execution_and_invoke_kwargs_to_the_invoke():
    torch.manual_seed(0)
    net = UsesTuple()
    x = torch.rand(2, 3)
    model = NNsight(net)
    with model.trace(x, scale=3.0) as tracer:
        out = model.output.save()
    torch.testing.assert_close(out.value, net(x, scale=3.0))
    with model.trace() as tracer:
        with tracer.invoke(x, scale=2.0):
            out = model.output.save()
    torch.testing.assert_close(out.value, net(x, scale=2.0))
    with model.trace(x, invoker_args={"scale": 5.0}):
        out = model.output.save()
    torch.testing.assert_close(out.value, net(x, scale=5.0))


def test_trace_false_runs_at_once(net):
    x = torch.rand(2, 5)
    model = NNsight(net)
    assert torch.equal(model.trace(x, trace=False), net(x))
    with pytest.raises(ValueError, match="needs inputs"):
        model.trace(trace=False)


def test_runner_forwards_to_the_model(net):
    x = torch.rand(1, 5)
    with NNsight(net).trace(x) as model:
        out = model.layer2.output.save()
        w = model.layer2.weight
    assert torch.equal(out.value, net[2](net[1](net[0](x))))
    assert w is net.layer2.weight


def test_module_attributes_and_containers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ModuleList([torch.nn.Linear(3, 3) for _ in range(3)]))
    net.forward = lambda x: net[1][2](net[1][1](net[1][0](net[0](x))))
    model = NNsight(net)
    assert model[0].in_features == 3
    blocks = model[1]
    assert len(blocks) == 3 and [b._module for b in blocks] == list(net[1])
    assert [b._module for b in blocks[1:]] == list(net[1][1:])
    assert blocks[-1]._module is net[1][2]
    with pytest.raises(ModuleIndexError, match=r"model\[1\]\[7\] does not exist: model\[1\] has 3 modules \(0-2\)"):
        blocks[7]
    x = torch.rand(2, 3)
    with model.trace(x):
        outs = [b.output.save() for b in blocks]
    assert torch.equal(outs[2].value, net(x))


def test_wrong_attribute_lists_children(net):
    model = NNsight(net)
    with pytest.raises(EnvoyAttributeError, match="layer1, sigma1, layer2, sigma2"):
        model.layer3
    with pytest.raises(AttributeError):
        model.layer1.nope


def test_child_named_like_an_envoy_attribute():
    class HasOutputChild(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.output = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.output(x)

    torch.manual_seed(0)
    net = HasOutputChild()
    model = NNsight(net)
    x = torch.rand(1, 2)
    with model.trace(x):
        child = model["output"].output.save()
    assert torch.equal(child.value, net(x))


def test_values_are_freed_after_their_last_use(net):
    model = NNsight(net)
    x = torch.rand(1, 5)
    with model.trace(x) as tracer:
        doubled = model.layer1.output * 2
        kept = (doubled + 1).save()
        model.layer2.output.save()
    # After the trace every unsaved value is gone, saved ones stay.
    assert isinstance(kept.value, torch.Tensor)
    with pytest.raises(ValueError, match="freed"):
        doubled.value

    # During execution (the same graph run again, watched): when layer2 runs, the
    # intermediate is already freed.
    states, running = [], []

    class Watched(Interleaver):
        def __enter__(self):
            running.append(self)
            return super().__enter__()

    def spy(module, args, output):
        states.append(running[-1].values[doubled.node.index])

    handle = net.layer2.register_forward_hook(spy)
    try:
        saved = model.run_graph(tracer.graph, x, executor=Watched)
    finally:
        handle.remove()
    assert states == [EMPTY]
    assert set(saved) == {node.index for node in tracer.graph.nodes if node.saved}


def test_state_errors(net):
    model = NNsight(net)
    with pytest.raises(TraceStateError, match="nested"):
        with model.trace(torch.rand(1, 5)):
            with model.trace(torch.rand(1, 5)):
                pass
    with pytest.raises(TraceStateError, match="inside a trace"):
        model.invoke(torch.rand(1, 5))
    with pytest.raises(TraceStateError, match="inside"):
        model.layer1.output
    with model.trace(torch.rand(1, 5)):
        h = model.layer1.output.save()
    with pytest.raises(TraceStateError, match="outside the trace"):
        h.save()
    with pytest.raises(InvokeError, match="already opened invoke 0"):
        with model.trace(torch.rand(1, 5)) as tracer:
            with tracer.invoke(torch.rand(1, 5)):
                pass
    with pytest.raises(InputError, match="no inputs"):
        with model.trace():
            pass
    with pytest.raises(InvokeError, match="outside an invoke"):
        with model.trace() as tracer:
            with tracer.invoke(torch.rand(1, 5)):
                pass
            model.layer1.output.save()
    with pytest.raises(InvokeError, match="nested"):
        with model.trace() as tracer:
            with tracer.invoke(torch.rand(1, 5)):
                with tracer.invoke(torch.rand(1, 5)):
                    pass
    with pytest.raises(InvokeError, match="0 rows"):
        with model.trace(torch.rand(0, 5)):
            pass
    assert hook_count(net) == 0
    x = torch.rand(1, 5)
    with model.trace(x) as tracer:
        pass
    assert torch.equal(tracer.output, net(x))


def test_ad_hoc_module_call_is_not_counted_as_a_call(net):
    x = torch.rand(2, 5)
    model = NNsight(net)
    with pytest.raises(MissedCallError, match=r"model\.layer1\.output \(call 1.*ran 1 time"):
        with model.trace(x):
            model.layer1(model.layer1.input).save()
            model.layer1.next().output.save()
    assert hook_count(net) == 0


def test_ad_hoc_module_call(net):
    x = torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x):
        relayer = model.layer2(model.layer1.output).save()
        out = model.output.save()
    torch.testing.assert_close(relayer.value, net.layer2(net.layer1(x)), rtol=0, atol=0)
    torch.testing.assert_close(out.value, net(x), rtol=0, atol=0)


def test_graph_prints_readably(net):
    model = NNsight(net)
    with model.trace(torch.rand(1, 5)) as tracer:
        model.layer1.output[:, 0] = 0
        (model.layer2.output * 2).save()
    text = str(tracer.graph)
    assert "model.layer1.output (call 0, invoke 0)" in text
    assert "setitem(%0, (:, 0), 0)" in text
    assert "operator[mul](%2, 2)" in text
    assert "[saved]" in text


def test_hooked_forward_keeps_signature_and_user_hooks_see_edits(net):
    import inspect

    model = NNsight(net)
    seen = {}

    def user_hook(module, args, output):
        seen["signature"] = inspect.signature(module.forward)
        seen["output"] = output.detach().clone()

    handle = net.layer1.register_forward_hook(user_hook)
    try:
        with model.trace(torch.rand(2, 5)):
            model.layer1.output[:] = 3
    finally:
        handle.remove()
    assert str(seen["signature"]) == str(inspect.signature(torch.nn.Linear(1, 1).forward))
    assert torch.equal(seen["output"], torch.full((2, 10), 3.0))
    assert "forward" not in net.layer1.__dict__ and hook_count(net) == 0


def test_instance_forward_set_by_others_is_restored(net):
    original = net.layer1.forward

    def wrapped(x):
        return original(x) + 1

    net.layer1.forward = wrapped          # e.g. accelerate's device hooks do this
    model = NNsight(net)
    x = torch.rand(1, 5)
    with model.trace(x):
        out = model.layer1.output.save()
    assert net.layer1.forward is wrapped
    torch.testing.assert_close(out.value, net.layer1(x))
    torch.testing.assert_close(out.value, original(x) + 1)


def test_replacing_a_submodule_through_the_wrapper(net):
    model = NNsight(net)
    old = model.layer2
    torch.manual_seed(5)
    new = torch.nn.Linear(10, 2)
    model.layer2 = new
    assert net.layer2 is new and model.layer2._module is new and model.layer2 is not old
    x = torch.rand(1, 5)
    with model.trace(x):
        out = model.layer2.output.save()
    torch.testing.assert_close(out.value, new(net.sigma1(net.layer1(x))))


def test_to_keeps_envoys_working(net):
    model = NNsight(net)
    model.layer1
    model.to(torch.float64)
    x = torch.rand(1, 5, dtype=torch.float64)
    with model.trace(x):
        out = model.layer1.output.save()
    torch.testing.assert_close(out.value, net.layer1(x))
