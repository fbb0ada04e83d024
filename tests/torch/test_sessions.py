"""model.session(): later traces use earlier traces' proxies directly, saved or not.

Expected values come from direct calls of the plain module.
"""

from collections import OrderedDict

import pytest
import torch

from nnsight_core import AssignmentError, ProxyScopeError, Session, TraceStateError, ValueNotSetError
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

from tests.helpers import make_net


def plain(net, x, hidden=None):
    """The net's output, with layer1's output replaced by ``hidden`` if given."""
    with torch.no_grad():
        h = net.layer1(x) if hidden is None else hidden
        return net.sigma2(net.layer2(net.sigma1(h)))


@pytest.fixture
def model(net):
    return NNsight(net)


def test_an_unsaved_hidden_state_patches_the_next_trace(model, net):
    clean, corrupted = torch.rand(2, 5), torch.rand(2, 5)
    with model.session() as session:
        with model.trace(clean):
            hidden = model.layer1.output                       # nothing saved
        with model.trace(corrupted):
            model.layer1.output = hidden
            out = model.output.save()
    with torch.no_grad():
        expected = plain(net, corrupted, net.layer1(clean))
    torch.testing.assert_close(out.value, expected)
    assert isinstance(session, Session) and len(session.traces) == 2
    assert hook_count(net) == 0


def test_values_without_users_are_kept_until_the_session_ends(model, net):
    x = torch.rand(3, 5)
    with model.session():
        with model.trace(x):
            doubled = model.layer1.output * 2                   # no user, not saved
            total = model.output.sum()
        inside = doubled.value
        torch.testing.assert_close(total.value, plain(net, x).sum())
        with model.trace(x):
            model.layer1.output = doubled - model.layer1.output  # == layer1(x)
            out = model.output.save()
    with torch.no_grad():
        torch.testing.assert_close(inside, net.layer1(x) * 2)
    torch.testing.assert_close(out.value, plain(net, x))


def test_unsaved_values_are_freed_when_the_session_ends_and_saved_ones_stay(model, net):
    x = torch.rand(2, 5)
    with model.session():
        with model.trace(x):
            hidden = model.layer1.output
            kept = model.layer2.output.save()
    with pytest.raises(ValueNotSetError, match="session"):
        hidden.value
    with torch.no_grad():
        torch.testing.assert_close(kept.value, net.layer2(net.sigma1(net.layer1(x))))
    _assert_no_session_open(model)


def test_the_graph_still_shows_what_the_user_saved(model):
    with model.session():
        with model.trace(torch.rand(1, 5)) as tracer:
            model.layer1.output
            model.layer2.output.save()
        flags = [node.saved for node in tracer.graph.nodes]
    assert flags == [False, True]
    assert str(tracer.graph).count("[saved]") == 1


def test_without_a_session_unsaved_values_are_still_freed(model):
    with model.trace(torch.rand(1, 5)):
        hidden = model.layer1.output
    with pytest.raises(ValueNotSetError, match="freed after its last use"):
        hidden.value


def test_a_proxy_from_a_trace_outside_the_session_points_to_sessions(model, net):
    x = torch.rand(2, 5)
    with model.trace(x):
        hidden = model.layer1.output                            # freed: no session, no save
    with model.session():
        with pytest.raises(ValueNotSetError, match=r"with model.session\(\):"):
            with model.trace(x):
                model.layer1.output = hidden
    assert hook_count(net) == 0
    with model.trace(x):                                        # the model still works
        out = model.output.save()
    torch.testing.assert_close(out.value, plain(net, x))


def test_a_proxy_of_one_model_is_a_plain_value_in_another_models_trace(model, net):
    other_net = make_net(seed=1)
    other = NNsight(other_net)
    x, y = torch.rand(2, 5), torch.rand(2, 5)
    with model.session():
        with model.trace(x):
            hidden = model.layer1.output
        with other.trace(y):
            other.layer1.output = hidden
            out = other.output.save()
    with torch.no_grad():
        expected = plain(other_net, y, net.layer1(x))
    torch.testing.assert_close(out.value, expected)


def test_a_proxy_of_a_trace_still_recording_cannot_cross_even_in_a_session(model, net):
    other = NNsight(make_net(seed=1))
    x = torch.rand(1, 5)
    with model.session():
        with pytest.raises(ProxyScopeError, match="session"):
            with model.trace(x):
                hidden = model.layer1.output
                with other.trace(x):
                    other.layer1.output = hidden
    assert hook_count(net) == 0


def test_sessions_do_not_nest_and_do_not_open_inside_a_trace(model):
    with model.session():
        with pytest.raises(TraceStateError, match="already open"):
            with model.session():
                pass
    with pytest.raises(TraceStateError, match="inside a trace"):
        with model.trace(torch.rand(1, 5)):
            with model.session():
                pass
    with model.session():                                       # nothing stale: opens again
        pass


def test_an_error_inside_the_session_ends_it_and_frees_its_values(model, net):
    x = torch.rand(1, 5)
    with pytest.raises(RuntimeError, match="user error"):
        with model.session():
            with model.trace(x):
                hidden = model.layer1.output
            raise RuntimeError("user error")
    _assert_no_session_open(model)
    with pytest.raises(ValueNotSetError):
        hidden.value
    assert hook_count(net) == 0


def test_a_failing_trace_inside_a_session_leaves_the_next_one_working(model, net):
    x = torch.rand(2, 5)
    with model.session():
        with pytest.raises(AssignmentError):
            with model.trace(x):
                model.layer1.output = torch.zeros(2, 7)         # wrong shape
        with model.trace(x):
            hidden = model.layer1.output
        with model.trace(x):
            model.layer1.output = hidden * 0
            out = model.output.save()
    assert hook_count(net) == 0
    torch.testing.assert_close(out.value, plain(net, x, torch.zeros(2, 10)))


def test_an_unsaved_value_of_an_iteration_is_a_list_in_a_session():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.layer(self.layer(x))

    torch.manual_seed(0)
    net = Twice()
    model = NNsight(net)
    x = torch.rand(2, 3)
    with model.session():
        with model.trace(x):
            every = model.layer.all().output                    # not saved
        values = every.value
    with torch.no_grad():
        first = net.layer(x)
        expected = [first, net.layer(first)]
    assert len(values) == 2
    for got, want in zip(values, expected):
        torch.testing.assert_close(got, want)


def test_session_works_with_several_invokes(model, net):
    a, b, c = torch.rand(1, 5), torch.rand(2, 5), torch.rand(1, 5)
    with model.session():
        with model.trace() as tracer:
            with tracer.invoke(a):
                from_a = model.layer1.output
            with tracer.invoke(b):
                from_b = model.layer1.output
        with model.trace(c):
            model.layer1.output = from_a + from_b[1:]
            out = model.output.save()
    with torch.no_grad():
        expected = plain(net, c, net.layer1(a) + net.layer1(b)[1:])
    torch.testing.assert_close(out.value, expected)


def test_session_is_reachable_as_nnsight_spells_it():
    net = torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(2, 2))]))
    model = NNsight(net)
    session = model.session()
    assert isinstance(session, Session) and session.model is model


def _assert_no_session_open(model):
    """A new session opens (it would raise TraceStateError if one were still open)."""
    with model.session():
        pass
