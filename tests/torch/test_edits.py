"""model.edit(): persistent edits applied by every later trace; clear_edits() removes them.

Expected values come from the plain module with raw ``register_forward_hook`` hooks.
"""

import pytest
import torch

from nnsight_core import InvokeError, TraceStateError
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight


def zero_first_column(module, args, output):
    output = output.clone()
    output[:, 0] = 0
    return output


def raw(net, x, hooks=()):
    """``net(x)`` with raw forward hooks ``[(module, fn), ...]`` registered for the call."""
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    try:
        with torch.no_grad():
            return net(x)
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture
def model(net):
    return NNsight(net)


def test_an_edit_applies_to_every_later_trace_of_the_edited_model(model, net):
    with model.edit() as edited:
        model.layer1.output[:, 0] = 0
    assert hook_count(net) == 0                           # recording runs nothing, hooks nothing
    for x in (torch.rand(2, 5), torch.rand(4, 5)):
        with edited.trace(x):
            out = edited.output.save()
        torch.testing.assert_close(out.value, raw(net, x, [(net.layer1, zero_first_column)]))
    assert hook_count(net) == 0


def test_the_original_model_is_unaffected(model, net):
    x = torch.rand(3, 5)
    with model.edit() as edited:
        model.layer1.output[:, 0] = 0
    assert edited is not model and edited._model is model._model   # same module, new wrapper
    with model.trace(x):
        out = model.output.save()
    torch.testing.assert_close(out.value, raw(net, x))
    assert len(model._edits) == 0 and len(edited._edits) == 1


def test_inplace_edits_the_model_itself_and_clear_edits_removes_them(model, net):
    x = torch.rand(2, 5)
    with model.edit(inplace=True) as edited:
        model.layer2.output = model.layer2.output * 3
    assert edited is model
    with model.trace(x):
        out = model.output.save()
    tripled = raw(net, x, [(net.layer2, lambda m, a, o: o * 3)])
    torch.testing.assert_close(out.value, tripled)

    model.clear_edits()
    with model.trace(x):
        out = model.output.save()
    torch.testing.assert_close(out.value, raw(net, x))


def test_clear_edits_on_the_edited_copy(model, net):
    x = torch.rand(2, 5)
    with model.edit() as edited:
        model.layer1.output[:, 0] = 0
    edited.clear_edits()
    with edited.trace(x):
        out = edited.output.save()
    torch.testing.assert_close(out.value, raw(net, x))


def test_an_edit_applies_to_each_invoke_on_its_own_rows(model, net):
    a, b = torch.rand(1, 5), torch.rand(2, 5)
    with model.edit() as edited:
        model.layer1.output[:, 0] = model.layer1.output[:, 1]
    with edited.trace() as tracer:
        with tracer.invoke(a):
            out_a = edited.output.save()
        with tracer.invoke(b):
            out_b = edited.output.save()

    def copy_column(module, args, output):
        output = output.clone()
        output[:, 0] = output[:, 1]
        return output

    expected = raw(net, torch.cat([a, b]), [(net.layer1, copy_column)])
    torch.testing.assert_close(out_a.value, expected[:1])
    torch.testing.assert_close(out_b.value, expected[1:])


def test_the_trace_builds_on_the_edit_of_the_same_module(model, net):
    x = torch.rand(3, 5)
    with model.edit() as edited:
        model.layer1.output[:, 0] = 0
    with edited.trace(x):
        seen = edited.layer1.output.clone().save()            # the trace sees the edited value
        edited.layer1.output = edited.layer1.output * 2       # then applies its own edit
        out = edited.output.save()
    expected = raw(net, x, [(net.layer1, zero_first_column), (net.layer1, lambda m, a, o: o * 2)])
    torch.testing.assert_close(out.value, expected)
    with torch.no_grad():
        first = net.layer1(x)
    first[:, 0] = 0
    torch.testing.assert_close(seen.value, first)


def test_edits_add_up_in_order(model, net):
    x = torch.rand(2, 5)
    with model.edit(inplace=True):
        model.layer1.output = model.layer1.output + 1
    with model.edit(inplace=True):
        model.layer1.output[:, 0] = 0
    with model.edit() as edited:                              # copies the two, adds a third
        model.layer1.output = model.layer1.output * -1
    with edited.trace(x):
        out = edited.output.save()
    hooks = [(net.layer1, lambda m, a, o: o + 1), (net.layer1, zero_first_column),
             (net.layer1, lambda m, a, o: o * -1)]
    torch.testing.assert_close(out.value, raw(net, x, hooks))
    with model.trace(x):                                      # the original keeps its two
        out = model.output.save()
    torch.testing.assert_close(out.value, raw(net, x, hooks[:2]))


def test_an_edit_using_a_value_from_another_module(model, net):
    x = torch.rand(2, 5)
    with model.edit() as edited:
        model.layer2.input = model.layer2.input * 0.5
    with edited.trace(x):
        out = edited.output.save()
    handle = net.layer2.register_forward_pre_hook(lambda m, args: (args[0] * 0.5,))
    try:
        expected = raw(net, x)
    finally:
        handle.remove()
    torch.testing.assert_close(out.value, expected)


def test_trace_false_applies_the_edits(model, net):
    x = torch.rand(2, 5)
    with model.edit() as edited:
        model.layer1.output[:, 0] = 0
    torch.testing.assert_close(edited.trace(x, trace=False),
                               raw(net, x, [(net.layer1, zero_first_column)]))
    torch.testing.assert_close(model.trace(x, trace=False), raw(net, x))


def test_an_edit_at_every_call_of_a_module():
    class Loop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 3)

        def forward(self, x):
            for _ in range(3):
                x = self.layer(x)
            return x

    torch.manual_seed(0)
    net = Loop()
    model = NNsight(net)
    x = torch.rand(2, 3)
    with model.edit() as edited:
        model.layer.all().output[:, 0] = 0
    with edited.trace(x):
        out = edited.output.save()
        calls = edited.layer.all().output.save()
    torch.testing.assert_close(out.value, raw(net, x, [(net.layer, zero_first_column)]))
    assert len(calls.value) == 3 and all(bool((c[:, 0] == 0).all()) for c in calls.value)


def test_save_inside_an_edit_is_refused_and_records_nothing(model, net):
    x = torch.rand(1, 5)
    with pytest.raises(TraceStateError, match=r"\.save\(\) of model\.layer1\.output.*inside model\.edit\(\)"):
        with model.edit(inplace=True):
            model.layer1.output.save()
    assert len(model._edits) == 0 and hook_count(net) == 0
    with model.trace(x):
        out = model.output.save()
    torch.testing.assert_close(out.value, raw(net, x))


def test_invokes_inside_an_edit_are_refused(model, net):
    with pytest.raises(InvokeError, match="takes no invokes"):
        with model.edit(inplace=True) as edited:
            with edited.invoke(torch.rand(1, 5)):
                pass
    assert len(model._edits) == 0 and hook_count(net) == 0


def test_an_error_in_the_edit_block_keeps_no_edit(model, net):
    with pytest.raises(ZeroDivisionError):
        with model.edit(inplace=True):
            model.layer1.output[:, 0] = 0
            1 / 0
    assert len(model._edits) == 0
    x = torch.rand(1, 5)
    with model.trace(x):                                      # and a trace opens fine afterwards
        out = model.output.save()
    torch.testing.assert_close(out.value, raw(net, x))


def test_an_edit_cannot_open_inside_a_trace_of_the_model(model):
    with pytest.raises(TraceStateError, match="already open"):
        with model.trace(torch.rand(1, 5)):
            with model.edit():
                pass


def test_an_edit_on_a_module_the_trace_does_not_reach_raises_after_the_run(model, net):
    from nnsight_core import MissedCallError

    with model.edit() as edited:
        model.layer1.next().output[:] = 0                      # layer1 runs once: call 1 never comes
    with pytest.raises(MissedCallError, match=r"model\.layer1\.output \(call 1"):
        with edited.trace(torch.rand(1, 5)):
            pass
    assert hook_count(net) == 0


def test_an_edit_assigning_a_constant_does_not_make_every_trace_scan(monkeypatch, model):
    """Persistent edits are replayed into each trace; they must not cost a fake-tensor scan each time."""
    from nnsight_core import scan

    calls = []
    real = scan.run_scan
    monkeypatch.setattr(scan, "run_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    with model.edit(inplace=True):
        model.layer2.output = torch.zeros(1, 2)
    x = torch.rand(1, 5)
    with torch.no_grad(), model.trace(x) as tracer:
        pass
    assert calls == []
    torch.testing.assert_close(tracer.output, torch.sigmoid(torch.zeros(1, 2)), rtol=0, atol=0)
