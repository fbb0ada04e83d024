"""Scan on fake tensors (tiny MLP): ``.shape``/``.dtype``/``.device``/``.ndim`` inside a trace, and
checks of assigned tensors before the model runs.

Expected shapes come from plain forward hooks on the same module; "the model did not run" is
a module whose forward counts its calls with real (not fake) tensors.
"""

from collections import OrderedDict

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

from nnsight_core import (AssignmentError, BatchError, InterventionError, MissedCallError, NNsightError,
                          ScanError, get_plugin_manager, hookimpl)
from nnsight_core import scan as scan_module
from nnsight_core.scan import is_scanning
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight


class Counting(torch.nn.Linear):
    """A Linear that counts the forward calls it gets with real tensors."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.real_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, FakeTensor):
            self.real_calls += 1
        return super().forward(x)


def make_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict([("layer1", Counting(5, 10)), ("act", torch.nn.ReLU()),
                                            ("layer2", Counting(10, 2))]))


def raw(net: torch.nn.Module, x: torch.Tensor) -> dict:
    """Each named module's (input, output) in a plain forward pass, from raw forward hooks."""
    seen = {}
    handles = [module.register_forward_hook(
        lambda m, args, out, name=name: seen.__setitem__(name, (args[0], out)))
        for name, module in net.named_children()]
    try:
        with torch.no_grad():
            seen[""] = (x, net(x))
    finally:
        for handle in handles:
            handle.remove()
    for module in net.modules():
        if isinstance(module, Counting):
            module.real_calls = 0
    return seen


@pytest.fixture
def net() -> torch.nn.Sequential:
    return make_net()


def counting(net):
    return [net.layer1.real_calls, net.layer2.real_calls]


def test_shapes_dtypes_devices_equal_the_real_ones(net):
    x = torch.rand(3, 5)
    expected = raw(net, x)
    model = NNsight(net)
    with model.trace(x):
        for name in ("layer1", "act", "layer2"):
            envoy = getattr(model, name)
            for proxy, value in ((envoy.output, expected[name][1]), (envoy.input, expected[name][0])):
                assert type(proxy.shape) is torch.Size
                assert (proxy.shape, proxy.dtype, proxy.device, proxy.ndim) == \
                       (value.shape, value.dtype, value.device, value.ndim)
        h = model.layer1.output
        derived = {"last": h[:, -1].shape, "matmul": (h @ torch.ones(10, 4)).shape,
                   "sum": h.sum(0).shape, "cat": torch.cat([h, h], 1).shape, "t": h.t().shape,
                   "cast": h.to(torch.float64).dtype, "root": model.output.shape}
        assert counting(net) == [0, 0]  # no real forward pass so far
    v = expected["layer1"][1]
    assert derived == {"last": v[:, -1].shape, "matmul": (v @ torch.ones(10, 4)).shape,
                       "sum": v.sum(0).shape, "cat": torch.cat([v, v], 1).shape, "t": v.t().shape,
                       "cast": torch.float64, "root": expected[""][1].shape}
    assert counting(net) == [1, 1]  # the one real run, after the block


def test_shapes_build_values_the_model_then_uses(net):
    x = torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x):
        h = model.layer1.output
        model.layer1.output = h + torch.ones(h.shape) * torch.arange(h.shape[-1], dtype=h.dtype)
        out = model.output.save()
    with torch.no_grad():
        edited = net.layer1(x) + torch.arange(10.0)
        torch.testing.assert_close(out.value, net.layer2(net.act(edited)))


def test_each_invoke_has_its_own_rows(net):
    a, b = torch.rand(1, 5), torch.rand(3, 5)
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(a):
            first = model.layer1.output.shape
        with tracer.invoke(b):
            second = model.layer1.output.shape
            root = model.output.shape
    assert (first, second, root) == ((1, 10), (3, 10), (3, 2))


def test_a_wrongly_shaped_assignment_raises_before_the_model_runs(net):
    x = torch.rand(2, 5)
    model = NNsight(net)
    with pytest.raises(AssignmentError) as info:
        with model.trace(x):
            model.layer1.output = torch.zeros(2, 3)  # the line the message must name
            model.output.save()
    message = str(info.value)
    assert "model.layer1.output" in message and "(2, 3)" in message and "(2, 10)" in message
    assert "test_scan.py:" in message and "model.layer1.output = torch.zeros(2, 3)" in message
    assert "before the model ran" in message
    assert counting(net) == [0, 0] and hook_count(net) == 0
    with model.trace(x):  # the next trace works
        out = model.output.save()
    torch.testing.assert_close(out.value, raw(net, x)[""][1])


def test_a_wrong_number_of_rows_raises_batch_error_before_the_model_runs(net):
    model = NNsight(net)
    with pytest.raises(BatchError, match=r"invoke 0 owns 2 row\(s\).*before the model ran"):
        with model.trace(torch.rand(2, 5)):
            model.layer1.output = torch.zeros(3, 10)
    assert counting(net) == [0, 0] and hook_count(net) == 0


@pytest.mark.parametrize("assign", ["input", "inputs"])
def test_a_wrongly_shaped_input_raises_before_the_model_runs(net, assign):
    model = NNsight(net)
    with pytest.raises(AssignmentError, match="model.layer2.input"):
        with model.trace(torch.rand(2, 5)):
            if assign == "input":
                model.layer2.input = torch.zeros(2, 7)
            else:
                model.layer2.inputs = ((torch.zeros(2, 7),), {})
    assert counting(net) == [0, 0]


def test_an_in_place_edit_that_fails_on_fake_tensors_raises_before_the_model_runs(net):
    model = NNsight(net)
    with pytest.raises(InterventionError, match="setitem.*fails on fake tensors") as info:
        with model.trace(torch.rand(2, 5)):
            model.layer1.output[:, 0] = torch.zeros(5)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "model.layer1.output[:, 0] = torch.zeros(5)" in str(info.value)
    assert counting(net) == [0, 0]


def test_a_value_saved_in_an_earlier_trace_is_checked_against_this_batch(net):
    x, y = torch.rand(2, 5), torch.rand(3, 5)
    model = NNsight(net)
    with model.trace(x):
        source = model.layer1.output.save()
    with model.trace(torch.rand(2, 5)):
        model.layer1.output = source          # same shape: runs
        out = model.output.save()
    with torch.no_grad():
        torch.testing.assert_close(out.value, net.layer2(net.act(net.layer1(x))))
    counts = counting(net)
    with pytest.raises(BatchError, match="before the model ran"):
        with model.trace(y):
            model.layer1.output = source      # 2 rows for a batch of 3
    assert counting(net) == counts


def test_a_trace_that_never_asks_does_not_scan(net, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("scanned")

    monkeypatch.setattr(scan_module, "run_scan", refuse)
    model = NNsight(net)
    x = torch.rand(2, 5)
    with model.trace(x):
        h = model.layer1.output.save()
        model.layer1.output[:, 0] = 0                     # scalar edit
        model.layer2.output = model.layer2.output * 2     # computed from the graph
        (h @ torch.ones(10, 3)).save()                    # a tensor operand, not an assignment
        out = model.output.save()
    assert net not in scan_module._MODES  # no fake copy of any weight was made
    with torch.no_grad():
        hidden = net.layer1(x)
        hidden[:, 0] = 0
        torch.testing.assert_close(out.value, net.layer2(net.act(hidden)) * 2)


def test_scan_false_records_shape_and_checks_only_while_running(net, monkeypatch):
    monkeypatch.setattr(scan_module, "run_scan", lambda *a, **k: pytest.fail("scanned"))
    model = NNsight(net)
    with model.trace(torch.rand(2, 5), scan=False):
        shape = model.layer1.output.shape.save()   # a recorded getattr node, as any attribute
    assert shape.value == (2, 10)
    with pytest.raises(AssignmentError, match="model.layer1.output") as info:
        with model.trace(torch.rand(2, 5), scan=False):
            model.layer1.output = torch.zeros(2, 3)
    assert "before the model ran" not in str(info.value)
    assert counting(net)[0] >= 1  # layer1 ran: the check came from the real run


def test_rescans_only_when_something_new_is_asked(net, monkeypatch):
    calls = []
    real = scan_module.run_scan

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_module, "run_scan", spy)
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(torch.rand(2, 5)):
            h = model.layer1.output
            out = model.output
            assert (h.shape, out.shape, h.dtype) == ((2, 10), (2, 2), torch.float32)
            assert len(calls) == 1
            doubled = h * 2
            assert doubled.shape == (2, 10) and out.shape == (2, 2)
            assert len(calls) == 2  # a node recorded after the scan
        with tracer.invoke(torch.rand(1, 5)):
            assert model.layer1.output.shape == (1, 10)
            assert h.shape == (2, 10)
            assert len(calls) == 3  # a new invoke changes the batch
            model.output.save()
    assert len(calls) == 3  # no assignment of a tensor constant: nothing to check at the exit


def test_the_scan_leaves_no_state_behind():
    torch.manual_seed(0)
    net = torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(5, 10)),
                                           ("norm", torch.nn.BatchNorm1d(10)),
                                           ("drop", torch.nn.Dropout(0.5))])).train()
    model = NNsight(net)
    x = torch.rand(4, 5)
    weights = {name: (t, t.clone()) for name, t in net.state_dict(keep_vars=True).items()}
    torch.manual_seed(1)
    with model.trace(x):
        assert model.drop.output.shape == (4, 10)
        rng = torch.get_rng_state()
        assert model.layer1.output.shape == (4, 10)    # a second scan
        assert torch.equal(rng, torch.get_rng_state())  # dropout on fake tensors draws nothing
        for name, (tensor, before) in weights.items():
            assert net.state_dict(keep_vars=True)[name] is tensor and torch.equal(tensor, before), name
        assert hook_count(net) == 0 and all("forward" not in m.__dict__ for m in net.modules())
        out = model.output.save()
    # The real run drew the same dropout mask as a plain run from the same seed.
    reference = torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(5, 10)),
                                                 ("norm", torch.nn.BatchNorm1d(10)),
                                                 ("drop", torch.nn.Dropout(0.5))])).train()
    reference.load_state_dict({k: v for k, (_, v) in weights.items()})
    torch.manual_seed(1)
    torch.testing.assert_close(out.value, reference(x))
    assert net.norm.num_batches_tracked.item() == 1  # the real run's update only


class Pair(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return x * 2, x.sum(-1)


def test_values_without_a_shape_and_values_that_depend_on_data():
    net = torch.nn.Sequential(OrderedDict([("pair", Pair())]))
    model = NNsight(net)
    x = torch.rand(2, 5)
    with model.trace(x):
        pair = model.pair.output
        with pytest.raises(ScanError, match=r"tuple, which has no \.shape.*\[0\]\.shape"):
            pair.shape
        assert (pair[0].shape, pair[1].shape) == ((2, 5), (2,))
        positive = pair[0][pair[0] > 0.5]
        with pytest.raises(ScanError, match="depends on tensor values") as info:
            positive.shape
        assert "test_scan.py:" in str(info.value)
        kept = positive.save()
    torch.testing.assert_close(kept.value, (x * 2)[(x * 2) > 0.5])


class Loop(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.layer(x)[:, 1:]
            x = torch.nn.functional.pad(x, (0, 1))
        return x


def test_shapes_inside_iterations_and_after_next():
    model = NNsight(Loop())
    with pytest.raises(MissedCallError), model.trace(torch.rand(2, 4)) as tracer:
        with tracer.iter[1:3]:
            assert model.layer.output.shape == (2, 4)
        assert model.layer.all().output[:, :2].shape == (2, 2)
        assert model.layer.next().next().output.shape == (2, 4)
        with pytest.raises(ScanError, match=r"call 5.*did not happen in the scan"):
            model.layer.next().next().next().output.shape   # the layer runs 3 times
        # The real run then reports the missed call as it always does (MissedCallError).


def test_gradients_apply_and_log_in_a_scanned_trace(net, capsys):
    model = NNsight(net)
    x = torch.rand(2, 5)
    with model.trace(x) as tracer:
        h = model.layer1.output
        grad = h.grad
        assert grad.shape == (2, 10)          # no backward pass ran for it
        saved = grad.save()
        tracer.log("logged")
        top = tracer.apply(torch.topk, h, k=2)
        with pytest.raises(ScanError, match=r"tracer\.apply"):
            top.shape                         # user functions are not called on fake tensors
        model.output.sum().backward()
    assert capsys.readouterr().out == "logged\n"  # once: by the real run
    assert saved.value.shape == (2, 10)


class ExecutionLog:
    def __init__(self) -> None:
        self.scanning = []

    @hookimpl(wrapper=True)
    def nnsight_execute(self, model):
        self.scanning.append(is_scanning())
        return (yield)


def test_execute_wrappers_can_tell_scans_from_runs(net):
    log = ExecutionLog()
    manager = get_plugin_manager()
    manager.register(log, name="scan-log")
    try:
        model = NNsight(net)
        with model.trace(torch.rand(2, 5)):
            model.layer2.output.shape
    finally:
        manager.unregister(log)
    assert log.scanning == [True, False]
    assert not is_scanning()


def test_a_shape_can_be_asked_after_its_invoke(net):
    assert issubclass(ScanError, NNsightError) and issubclass(ScanError, RuntimeError)
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(torch.rand(2, 5)):
            h = model.layer1.output
        assert h.shape == (2, 10)  # asked outside the invoke, after it


def test_scans_follow_weights_converted_in_place(net):
    model = NNsight(net)
    x = torch.rand(2, 5)
    with model.trace(x):
        assert model.layer1.output.dtype == torch.float32
    net.double()  # converts each parameter in place: the same Parameter objects, a new dtype
    with model.trace(x.double()):
        assert model.layer1.output.dtype == model.output.dtype == torch.float64
        out = model.output.save()
    with torch.no_grad():
        torch.testing.assert_close(out.value, net(x.double()))
