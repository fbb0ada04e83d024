"""tracer.cond, tracer.apply, tracer.log and tracer.stop on the tiny MLP; expected values from plain hooks."""

import pytest
import torch
from nnsight_torch import NNsight

from nnsight_core import InterventionError, ProxyCallError, TraceStateError, ValueNotSetError
from nnsight_core.testing import hook_count

from tests.helpers import make_net

X = torch.rand(3, 5, generator=torch.Generator().manual_seed(0))


def zeroed_layer1(net, x):
    handle = net.layer1.register_forward_hook(lambda m, a, out: out * 0)
    try:
        return net(x)
    finally:
        handle.remove()


@pytest.mark.parametrize("threshold, taken", [(-1e9, True), (1e9, False)])
def test_cond_runs_the_block_only_when_true(threshold, taken):
    net = make_net()
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        hidden = model.layer1.output
        with tracer.cond(hidden.mean() > threshold):
            model.layer1.output[:] = 0
            inside = model.layer1.output.sum().save()
        outside = model.layer1.output.clone().save()
    with torch.no_grad():
        expected = zeroed_layer1(net, X) if taken else net(X)
    torch.testing.assert_close(tracer.output, expected, rtol=0, atol=0)
    if taken:
        assert float(inside.value) == 0
        assert bool((outside.value == 0).all())
    else:
        with pytest.raises(ValueNotSetError, match="condition of its tracer.cond"):
            inside.value
        assert not bool((outside.value == 0).all())


@pytest.mark.parametrize("threshold, taken", [(-1e9, True), (1e9, False)])
def test_saving_inside_cond_a_value_recorded_outside_keeps_it_only_when_true(threshold, taken):
    net = make_net()
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        hidden = model.layer1.output
        with tracer.cond(hidden.mean() > threshold):
            kept = hidden.save()
    assert kept is not hidden and kept.node.op == "save" and not hidden.node.saved
    if taken:
        with torch.no_grad():
            torch.testing.assert_close(kept.value, net.layer1(X), rtol=0, atol=0)
    else:
        with pytest.raises(ValueNotSetError, match="condition of its tracer.cond"):
            kept.value
    with pytest.raises(ValueNotSetError, match="not saved"):
        hidden.value


def test_nested_conds_need_both():
    net = make_net()
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        h = model.layer1.output
        with tracer.cond(h.mean() > -1e9):
            with tracer.cond(h.mean() > 1e9):
                model.layer1.output[:] = 0
            reached = (h.mean() * 0 + 1).save()
    torch.testing.assert_close(tracer.output, net(X).detach(), rtol=0, atol=0)
    assert float(reached.value) == 1


def test_cond_per_invoke_uses_that_invokes_rows():
    net = make_net()
    model = NNsight(net)
    a, b = X[:1], X[1:] * 100             # only invoke 1's layer1 mean is below -1
    with torch.no_grad(), model.trace() as tracer:
        for x in (a, b):
            with tracer.invoke(x):
                with tracer.cond(model.layer1.output.mean() < -1):
                    model.layer1.output[:] = 0
    with torch.no_grad():
        expected = torch.cat([net(a), zeroed_layer1(net, b)])
    torch.testing.assert_close(tracer.output, expected, rtol=0, atol=1e-6)


def test_a_condition_of_many_elements_is_an_error():
    model = NNsight(make_net())
    with pytest.raises(InterventionError, match="not a single true/false value"):
        with torch.no_grad(), model.trace(X) as tracer:
            with tracer.cond(model.layer1.output > 0):
                model.layer1.output[:] = 0
    assert hook_count(model._model) == 0


def test_apply_calls_any_function_on_values():
    net = make_net()
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        top = tracer.apply(torch.topk, model.layer1.output, k=2, dim=-1).save()
        as_list = tracer.apply(lambda t: t.tolist(), model.layer2.output).save()
        model.layer2.output = tracer.apply(lambda t, s: t * s, model.layer2.output, 0.5)
    with torch.no_grad():
        hidden = net.layer1(X)
        handle = net.layer2.register_forward_hook(lambda m, a, out: out * 0.5)
        expected = net(X)
        handle.remove()
    torch.testing.assert_close(top.value.values, hidden.topk(2, dim=-1).values, rtol=0, atol=0)
    assert as_list.value == net.layer2(torch.sigmoid(hidden)).tolist()
    torch.testing.assert_close(tracer.output, expected, rtol=0, atol=0)


def test_log_prints_values_while_the_model_runs(capsys):
    net = make_net()
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        tracer.log("layer1 mean", model.layer1.output.mean(), sep=": ")
    printed = capsys.readouterr().out.strip()
    with torch.no_grad():
        assert printed == "layer1 mean: " + str(net.layer1(X).mean())


def test_stop_computes_nothing_after_what_was_recorded():
    net = make_net()
    calls = []
    net.layer2.register_forward_hook(lambda m, a, out: calls.append("layer2"))
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        hidden = model.layer1.output.save()
        tracer.stop()
    assert calls == [] and tracer.output is None
    torch.testing.assert_close(hidden.value, net.layer1(X).detach(), rtol=0, atol=0)
    assert hook_count(net) == 1          # only the test's own hook remains
    # the model works as before afterwards
    with torch.no_grad(), model.trace(X) as tracer:
        pass
    assert calls == ["layer2"]


def test_helpers_outside_a_trace_are_refused():
    model = NNsight(make_net())
    with model.trace(X) as tracer:
        pass
    for call in (lambda: tracer.cond(True), lambda: tracer.apply(abs, 1), tracer.stop,
                 lambda: tracer.log(1)):
        with pytest.raises(TraceStateError, match="inside the `with model.trace"):
            call()
    with pytest.raises(ProxyCallError, match="takes a callable"):
        with model.trace(X) as tracer:
            tracer.apply(3, 4)
