"""envoy.skip(value): the module's forward does not run for the invoke; expected values by direct calls."""

import pytest
import torch

from nnsight_core import AssignmentError, BatchError
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

from tests.helpers import Shared, make_net


class Counted(torch.nn.Module):
    """A module that counts its forward calls and can refuse to run."""

    def __init__(self, refuse=False):
        super().__init__()
        self.calls = 0
        self.refuse = refuse

    def forward(self, x):
        self.calls += 1
        if self.refuse:
            raise AssertionError("the forward of a skipped module ran")
        return torch.sin(x)


def pipeline(middle):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), middle, torch.nn.Linear(4, 2))


def test_one_invoke_owning_the_batch_never_calls_the_forward():
    net = pipeline(Counted(refuse=True))
    model = NNsight(net)
    x = torch.rand(2, 3)
    with torch.no_grad(), model.trace(x):
        model[1].skip(model[1].input * 2)
        seen = model[1].output.save()
        final = model.output.save()
    with torch.no_grad():
        expected_mid = net[0](x) * 2
        assert torch.equal(seen.value, expected_mid)
        assert torch.equal(final.value, net[2](expected_mid))
    assert net[1].calls == 0 and hook_count(net) == 0


def test_with_several_invokes_the_module_runs_and_the_skipping_rows_are_overwritten():
    net = pipeline(Counted())
    model = NNsight(net)
    a, b = torch.rand(1, 3), torch.rand(2, 3)
    with torch.no_grad(), model.trace(scan=False) as tracer:   # the scan would add a (fake) call
        with tracer.invoke(a):
            kept = model.output.save()
        with tracer.invoke(b):
            model[1].skip(torch.ones(2, 4))
            skipped = model.output.save()
    # Batched modules cannot run on a subset of rows: the forward ran once, on all three rows.
    assert net[1].calls == 1
    with torch.no_grad():
        torch.testing.assert_close(kept.value, net[2](torch.sin(net[0](a))), rtol=0, atol=1e-6)
        torch.testing.assert_close(skipped.value, net[2](torch.ones(2, 4)), rtol=0, atol=1e-6)


def test_skip_per_call_with_next():
    shared = Shared()
    model = NNsight(shared)
    x = torch.rand(2, 4)
    with torch.no_grad(), model.trace(x):
        model.block.next().skip(model.block.input)   # the second call of block becomes the identity
        final = model.output.save()
    with torch.no_grad():
        assert torch.equal(final.value, shared.head(shared.block(x)))


def test_a_skip_value_of_the_wrong_shape_raises_before_the_model_runs():
    # The scan runs the forward on fake tensors (no compute) to know the shape the value replaces.
    net = pipeline(Counted())
    model = NNsight(net)
    with pytest.raises(AssignmentError, match=r"model\[1\]\.skip\(\) \(call 0, invoke 0\).*shape \(2, 5\)"):
        with torch.no_grad(), model.trace(torch.rand(2, 3)):
            model[1].skip(torch.zeros(2, 5))
    assert hook_count(net) == 0 and net[1].calls == 1  # the fake call only


def test_with_several_invokes_a_wrong_value_raises_when_written():
    net = pipeline(Counted())
    model = NNsight(net)
    with pytest.raises(BatchError, match=r"invoke 1 owns 2 row"):
        with torch.no_grad(), model.trace(scan=False) as tracer:
            with tracer.invoke(torch.rand(1, 3)):
                model.output.save()
            with tracer.invoke(torch.rand(2, 3)):
                model[1].skip(torch.zeros(3, 4))
    assert hook_count(net) == 0
    with torch.no_grad(), model.trace(torch.rand(1, 3)):   # the next trace works
        model.output.save()


def test_skip_is_recorded_as_one_node_and_round_trips():
    net = make_net()
    model = NNsight(net)
    x = torch.rand(1, 5)
    with torch.no_grad(), model.trace(x) as tracer:
        model.sigma1.skip(model.sigma1.input)
        out = model.layer2.input.save()
    assert [n.op for n in tracer.graph.nodes].count("skip") == 1
    assert "model.sigma1.skip() (call 0, invoke 0)" in str(tracer.graph)
    from nnsight_core import Graph
    results = model.run_graph(Graph.from_json(tracer.graph.to_json()), x)
    assert torch.equal(results[out.node.index], net.layer1(x)) and torch.equal(out.value, net.layer1(x))
