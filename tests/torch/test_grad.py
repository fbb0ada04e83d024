"""Gradients inside a trace on the tiny MLP: ``proxy.grad`` (read, assign) and ``.backward()``.

Expected values come from plain autograd on the same module: ``retain_grad()`` on the
tensor a raw forward hook sees, and tensor hooks that return a new gradient.
"""

import pytest
import torch

from nnsight_core import (AssignmentError, GradientError, Graph, InterventionError, MissedCallError,
                          OutOfOrderEditError)
from nnsight_core.serialize import run
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

from tests.helpers import make_net

X = torch.rand(3, 5, generator=torch.Generator().manual_seed(1))
Y = torch.rand(2, 5, generator=torch.Generator().manual_seed(2))


def plain(net, x, loss=lambda out: out.sum(), edit=None):
    """Run ``net`` on ``x`` with plain autograd; return (layer1 output with its .grad, model output).

    ``edit`` is a tensor hook for layer1's output (it may return a new gradient).
    """
    seen = {}

    def keep(module, args, output):
        output.retain_grad()
        if edit is not None:
            output.register_hook(edit)
        seen["h"] = output

    handle = net.layer1.register_forward_hook(keep)
    try:
        out = net(x)
        loss(out).backward()
    finally:
        handle.remove()
    return seen["h"], out


def assert_clean(net, model, x=X):
    """No hook left on the module, and the next trace works."""
    assert hook_count(net) == 0
    with torch.no_grad(), model.trace(x):
        out = model.output.save()
    torch.testing.assert_close(out.value, net(x))


def test_backward_fills_parameter_and_input_grads_like_plain_autograd(net):
    model = NNsight(net)
    x = X.clone().requires_grad_()
    with model.trace(x):
        received = model.input.save()
        (model.output ** 2).mean().backward()
    reference = make_net()
    xr = X.clone().requires_grad_()
    (reference(xr) ** 2).mean().backward()
    for mine, theirs in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad)
    torch.testing.assert_close(x.grad, xr.grad)
    # After the trace a saved proxy's .grad is its tensor's own .grad.
    torch.testing.assert_close(received.grad, xr.grad)


def test_grad_of_a_module_input_equals_autograd(net):
    model = NNsight(net)
    with model.trace(X):
        grad = model.layer2.input.grad.save()
        model.output.sum().backward()
    seen = {}

    def keep(module, args):
        args[0].retain_grad()
        seen["x"] = args[0]

    reference = make_net()
    handle = reference.layer2.register_forward_pre_hook(keep)
    reference(X).sum().backward()
    handle.remove()
    torch.testing.assert_close(grad.value, seen["x"].grad)


def test_grad_of_a_view_is_that_view_of_the_gradient(net):
    model = NNsight(net)
    with model.trace(X):
        h = model.layer1.output
        columns = h[:, 2:5].grad.save()
        transposed = h.t().grad.save()
        row = h[1].grad.save()
        model.output.sum().backward()
    hidden, _ = plain(make_net(), X)
    torch.testing.assert_close(columns.value, hidden.grad[:, 2:5])
    torch.testing.assert_close(transposed.value, hidden.grad.t())
    torch.testing.assert_close(row.value, hidden.grad[1])


def test_grad_of_a_value_the_model_uses_after_an_assignment(net):
    model = NNsight(net)
    with model.trace(X):
        new = model.layer1.output * 3
        model.layer1.output = new
        grad = new.grad.save()
        model.output.sum().backward()
    hidden, _ = plain(make_net(), X)
    # d loss / d (new layer1 output) is what the old output's gradient would be at the new value.
    reference = make_net()
    seen = {}

    def triple(module, args, output):
        output = output * 3
        output.retain_grad()
        seen["h"] = output
        return output

    handle = reference.layer1.register_forward_hook(triple)
    reference(X).sum().backward()
    handle.remove()
    torch.testing.assert_close(grad.value, seen["h"].grad)
    assert not torch.allclose(grad.value, hidden.grad)


def test_assigning_grad_replaces_the_gradient_that_flows_back(net):
    model = NNsight(net)
    x = X.clone().requires_grad_()
    with model.trace(x):
        h = model.layer1.output
        before = h.grad.save()
        h.grad = h.grad * 2
        after = h.grad.save()                   # read after the assignment: the new gradient
        model.output.sum().backward()
    reference = make_net()
    xr = X.clone().requires_grad_()
    plain(reference, xr, edit=lambda g: g * 2)
    torch.testing.assert_close(net.layer1.weight.grad, reference.layer1.weight.grad)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(after.value, 2 * before.value)
    # Layers after layer1 are unaffected by an edit of layer1's gradient.
    torch.testing.assert_close(net.layer2.weight.grad, reference.layer2.weight.grad)


def test_assigning_a_view_of_the_grad_replaces_only_that_part(net):
    model = NNsight(net)
    with model.trace(X):
        model.layer1.output[:, 0].grad = torch.zeros(3)
        model.output.sum().backward()

    def zero_column(grad):
        grad = grad.clone()
        grad[:, 0] = 0
        return grad

    reference = make_net()
    plain(reference, X, edit=zero_column)
    torch.testing.assert_close(net.layer1.weight.grad, reference.layer1.weight.grad)
    assert torch.all(net.layer1.weight.grad[0] == 0) and torch.any(net.layer1.weight.grad[1] != 0)


def test_a_later_layers_gradient_may_replace_an_earlier_ones(net):
    # The backward pass reaches layer2 before layer1, so layer2's gradient exists in time.
    model = NNsight(net)
    with model.trace(X):
        model.layer1.output.grad = model.sigma1.output.grad
        model.output.sum().backward()
    via_input = NNsight(make_net())
    with via_input.trace(X):
        via_input.layer1.output.grad = via_input.layer2.input.grad   # the same tensor, as an input
        via_input.output.sum().backward()
    torch.testing.assert_close(via_input._model.layer1.weight.grad, net.layer1.weight.grad)
    reference = make_net()
    seen = {}

    def keep_gradient(module, args, output):
        output.register_hook(lambda grad: seen.__setitem__("grad", grad))

    handle = reference.sigma1.register_forward_hook(keep_gradient)
    plain(reference, X, edit=lambda grad: seen["grad"])
    handle.remove()
    torch.testing.assert_close(net.layer1.weight.grad, reference.layer1.weight.grad)


def test_several_invokes_each_get_their_own_rows(net):
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(X):
            first = model.layer1.output.grad.save()
            loss = model.output.sum()
        with tracer.invoke(Y):
            second = model.layer1.output.grad.save()
            (loss + (model.output ** 2).sum()).backward()
    both = torch.cat([X, Y])
    hidden, _ = plain(make_net(), both, loss=lambda out: out[:3].sum() + (out[3:] ** 2).sum())
    torch.testing.assert_close(first.value, hidden.grad[:3])
    torch.testing.assert_close(second.value, hidden.grad[3:])


def test_one_backward_per_invoke_delivers_only_its_own_gradients(net):
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(X):
            first = model.layer1.output.grad.save()
            model.output.sum().backward(retain_graph=True)
        with tracer.invoke(Y):
            second = model.layer1.output.grad.save()
            (model.output ** 2).sum().backward()
    alone_x, _ = plain(make_net(), X)
    alone_y, _ = plain(make_net(), Y, loss=lambda out: (out ** 2).sum())
    torch.testing.assert_close(first.value, alone_x.grad)
    torch.testing.assert_close(second.value, alone_y.grad)


def test_an_invoke_edits_only_its_own_gradient_rows(net):
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(X):
            h = model.layer1.output
            h.grad = torch.zeros_like(h.grad)
        with tracer.invoke(Y):
            model.output.sum().backward()

    def zero_first_rows(grad):
        grad = grad.clone()
        grad[:3] = 0
        return grad

    reference = make_net()
    plain(reference, torch.cat([X, Y]), loss=lambda out: out[3:].sum(), edit=zero_first_rows)
    torch.testing.assert_close(net.layer1.weight.grad, reference.layer1.weight.grad)


def test_values_computed_from_a_gradient_run_during_the_backward_pass(net):
    model = NNsight(net)
    with model.trace(X):
        h = model.layer1.output
        norm = h.grad.norm(dim=-1).save()
        product = (h * h.grad).sum().save()          # gradient x activation attribution
        model.output.sum().backward()
    hidden, _ = plain(make_net(), X)
    torch.testing.assert_close(norm.value, hidden.grad.norm(dim=-1))
    torch.testing.assert_close(product.value, (hidden.detach() * hidden.grad).sum())


def test_no_tensor_hook_outlives_the_trace(net):
    model = NNsight(net)
    with model.trace(X):
        h = model.layer1.output.save()
        grad = h.grad.save()
        model.output.sum().backward(retain_graph=True)
    assert not h.value._backward_hooks              # the tensor the gradient hook was on
    kept = grad.value.clone()
    # A backward pass through the saved value after the trace does not reach the finished trace.
    h.value.sum().backward()
    torch.testing.assert_close(grad.value, kept)


def test_a_gradient_graph_round_trips_through_json(net):
    model = NNsight(net)
    with model.trace(X) as tracer:
        h = model.layer1.output
        h.grad = h.grad * 0.5
        grad = h.grad.save()
        model.output.sum().backward()
    graph = Graph.from_json(tracer.graph.to_json())
    assert [n.op for n in graph.nodes if n.op in ("grad", "set_grad", "backward")] == \
        ["grad", "grad", "set_grad", "grad", "backward"]
    saved = run(NNsight(make_net()), graph, X)
    torch.testing.assert_close(saved[grad.node.index], grad.value)


# -- errors -------------------------------------------------------------------------------------


def test_grad_without_a_backward_after_it_raises_before_the_model_runs(net):
    model = NNsight(net)
    calls = []
    handle = net.layer1.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(GradientError, match=r"model\.layer1\.output.*no \.backward\(\) recorded after it"):
        with model.trace(X):
            model.layer1.output.grad.save()
    with pytest.raises(GradientError, match="test_grad.py"):  # points at the user's line
        with model.trace(X):
            model.output.sum().backward()
            model.layer1.output.grad.save()               # read after the backward pass
    handle.remove()
    assert calls == []
    assert_clean(net, model)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_grad_or_backward_with_autograd_disabled_raises(net, context):
    model = NNsight(net)
    with pytest.raises(GradientError, match=r"\.grad on model\.layer1\.output .*torch\.no_grad"):
        with context(), model.trace(X):
            model.layer1.output.grad.save()
    with pytest.raises(GradientError, match=r"\.backward\(\) on .*enable_grad"):
        with context(), model.trace(X):
            model.output.sum().backward()
    assert_clean(net, model)


def test_backward_of_a_value_that_needs_no_grad_raises(net):
    model = NNsight(net)
    with pytest.raises(GradientError, match=r"backward of model\.input.*does not require grad"):
        with model.trace(X):
            model.input.sum().backward()                  # X itself does not require grad
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(GradientError, match=r"grad of model\.layer1\.output.*does not require grad"):
        with model.trace(X):
            model.layer1.output.grad.save()
            model.output.sum().backward()
    assert_clean(net, model)


def test_grad_of_a_non_tensor_names_the_fix(net):
    model = NNsight(net)
    with pytest.raises(GradientError, match=r"the value is a tuple; index it first"):
        with model.trace(X):
            model.layer1.output.unbind(0).grad.save()
            model.output.sum().backward()
    assert_clean(net, model)


def test_grad_the_backward_pass_never_reaches_raises_naming_it(net):
    model = NNsight(net)
    with pytest.raises(MissedCallError, match=r"grad of model\.layer1\.output.*not part of the computation"):
        with model.trace(X):
            (model.layer1.output * 2).grad.save()         # a new value the model never uses
            model.output.sum().backward()
    with pytest.raises(MissedCallError, match=r"grad of model\.layer2\.output.*computed only after"):
        with model.trace(X):
            model.layer2.output.grad.save()
            model.layer1.output.sum().backward()          # runs before layer2 does
    assert_clean(net, model)


def test_backward_that_never_runs_raises_for_its_gradients():
    class Skips(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1, self.unused = torch.nn.Linear(5, 4), torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.layer1(x)

    net = Skips()
    model = NNsight(net)
    with pytest.raises(MissedCallError):
        with model.trace(X):
            model.layer1.output.grad.save()
            model.unused.output.sum().backward()
    assert hook_count(net) == 0


def test_assigning_a_gradient_of_the_wrong_shape_or_type_raises(net):
    model = NNsight(net)
    with pytest.raises(AssignmentError, match=r"shape \(3, 4\) but the gradient it replaces has \(3, 10\)"):
        with model.trace(X):
            h = model.layer1.output
            h.grad = h.grad[:, :4]
            model.output.sum().backward()
    with pytest.raises(AssignmentError, match="dtype"):
        with model.trace(X):
            h = model.layer1.output
            h.grad = h.grad.double()
            model.output.sum().backward()
    with pytest.raises(AssignmentError, match="not a float"):
        with model.trace(X):
            model.layer1.output.grad = 0.0
            model.output.sum().backward()
    assert_clean(net, model)


def test_assigning_a_gradient_from_a_later_gradient_raises_out_of_order(net):
    # layer1's gradient arrives after layer2's: it cannot replace layer2's.
    model = NNsight(net)
    with pytest.raises(OutOfOrderEditError, match=r"set_grad of model\.layer2\.output"):
        with model.trace(X):
            model.layer2.output.grad = model.layer1.output.grad[:, :2]
            model.output.sum().backward()
    assert_clean(net, model)


def test_gradients_inside_an_iteration_are_refused(net):
    model = NNsight(net)
    with pytest.raises(GradientError, match=r"iteration.*envoy\.next\(\)"):
        with model.trace(X):
            model.layer1.all().output.grad.save()
    assert_clean(net, model)


def test_a_second_backward_without_retain_graph_names_the_node(net):
    model = NNsight(net)
    with pytest.raises(InterventionError, match=r"backward of model\.output.*second time"):
        with model.trace(X):
            loss = model.output.sum()
            loss.backward()
            loss.backward()
    assert_clean(net, model)


def test_a_backward_in_a_false_condition_skips_its_gradients():
    from nnsight_core import ValueNotSetError

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 2))
    model = NNsight(net)
    with model.trace(torch.rand(2, 5)) as tracer:
        hidden = model[0].output
        grad = hidden.grad.save()
        with tracer.cond(hidden.sum() > 1e9):
            model.output.sum().backward()
        out = model.output.save()
    with pytest.raises(ValueNotSetError, match="condition of its tracer.cond"):
        grad.value
    assert out.value.shape == (2, 2)
