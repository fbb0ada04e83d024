"""What the hot path relies on: graphs free of reference cycles, the graph's indexes, the copies
that in-place edits work on, and the short way of hook events, each checked against plain values.
"""

from __future__ import annotations

import gc
import weakref
from collections import namedtuple

import torch

from nnsight_core._tree import clone
from nnsight_core.graph import Graph
from nnsight_core.interleaver import Interleaver
from nnsight_torch import NNsight
from tests.helpers import make_net


def _garbage_after(fn):
    """The objects ``fn`` leaves for the cycle collector (gc off while it runs)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        fn()
        return gc.collect()
    finally:
        if enabled:
            gc.enable()


def test_a_dropped_trace_is_freed_without_the_cycle_collector():
    net = make_net()
    model, x = NNsight(net), torch.rand(1, 5)
    kept = []

    def trace():
        with model.trace(x) as tracer:
            hidden = model.layer1.output.save()
            model.sigma1.output[:, 0] = 0
            doubled = (model.layer2.output * 2).save()
        kept.append((weakref.ref(tracer), weakref.ref(tracer.graph), weakref.ref(hidden.value)))
        assert torch.equal(doubled.value, net.layer2(net.sigma1(net.layer1(x)).index_fill(1, torch.tensor([0]), 0)) * 2)

    with torch.no_grad():
        trace()  # warm-up: first-use caches are not garbage
        kept.clear()
        assert _garbage_after(trace) == 0
    runner, graph, value = kept[0]
    assert runner() is None and graph() is None and value() is None, "the trace outlived its last user"


def test_a_kept_saved_value_keeps_its_trace_state_not_the_graph_cycle():
    model, x = NNsight(make_net()), torch.rand(1, 5)
    with model.trace(x) as tracer:
        hidden = model.layer1.output.save()
    graph = weakref.ref(tracer.graph)
    del tracer
    assert graph() is not None  # the saved proxy's trace state still names its graph
    assert hidden.node.graph is graph() and hidden.node.users == []
    assert torch.equal(hidden.value, model._model.layer1(x))


def test_users_are_kept_by_the_graph_and_read_through_nodes():
    graph = Graph()
    out = graph.create_node("output", ("layer1", 0), invoke=0)
    total = graph.create_node("call_method", "sum", (out,), invoke=0)
    assert graph.save(total, 0) is total and total.saved  # no node: the value is marked saved
    assert graph.save(total, 0) is total and graph.saves == [total]  # once, however often saved
    assert out.users == [total] and total.users == [] and graph.users == [[total], []]
    cond = graph.create_node("apply", bool, (True,), invoke=0)
    saved = graph.save(out, 0, cond)  # under a condition: a save node of its own
    assert saved.op == "save" and saved.deps == (out, cond) and saved.args == (out,)
    assert out.users == [total, saved] and cond.users == [saved] and saved.users == []
    assert out.graph is graph and graph.guarded and not out.saved
    assert graph.saves == [total, saved] and graph.starts == [cond] and graph.assignments == []
    edit = graph.create_node("setitem", None, (out, 0, 1.0), invoke=0)
    inplace = graph.create_node("call_method", "add_", (out, 1.0), invoke=0)
    constant = graph.create_node("apply", bool, (True,), invoke=0)
    assert graph.assignments == [edit, inplace] and graph.starts == [cond, constant]


def test_a_saved_attribute_stays_a_node_when_it_is_then_called():
    """``m = h.sum; m.save(); m()``: a call of an unused attribute normally replaces its getattr
    node by a call_method; a saved one is kept (its value is returned after the trace)."""
    net = make_net()
    model, x = NNsight(net), torch.rand(2, 5)
    with torch.no_grad(), model.trace(x) as tracer:
        method = model.layer1.output.sum
        method.save()
        total = method().save()
    assert [n.op for n in tracer.graph.nodes] == ["output", "getattr", "call_method"]
    with torch.no_grad():
        expected = net.layer1(x)
        torch.testing.assert_close(total.value, expected.sum())
        torch.testing.assert_close(method.value(), expected.sum())


def test_recording_finds_the_dependencies_create_node_would_find():
    """Proxy operations collect a node's dependencies while converting its arguments
    (Graph.append_node); they must equal what graph.dependencies() finds in the recorded
    arguments, for every kind of argument."""
    from nnsight_core.graph import dependencies

    net = make_net()
    model, x = NNsight(net), torch.rand(2, 5)
    with torch.no_grad(), model.trace(x):
        earlier = model.layer1.output.save()
    with torch.no_grad(), model.trace(x) as tracer:
        a, b = model.layer1.output, model.layer2.output
        a[:, 0] = 0                                       # constant index tuple
        a[:, a.argmax(dim=1)[0]] = 1                      # a node inside the index
        torch.cat([a, a * 2], dim=1)                      # nodes inside a list
        torch.nn.functional.softmax(a, dim=-1)            # a node and a keyword
        torch.add(a, other=b.sum())                       # a node as a keyword argument
        a + earlier                                       # a value of an earlier trace: a constant
        with tracer.cond(b.sum() > -1e9):
            (a - 1).save()                                # under a condition
    for node in tracer.graph.nodes:
        deps, flat = dependencies(node.args, node.kwargs)
        if node.cond is not None:
            deps[node.cond.index] = node.cond
        assert node.deps == tuple(deps.values()), node
        assert node._flat == flat, node


def test_the_one_call_constructors_record_what_create_node_records():
    fast, slow = Graph(), Graph()
    cond_fast = fast.create_node("apply", bool, (True,))
    cond_slow = slow.create_node("apply", bool, (True,))
    a = fast.create_module_value(("output", "layer1", 0), 0, ("f.py", 3))
    b = slow.create_node("output", ("layer1", 0), invoke=0, where=("f.py", 3))
    sa, sb = fast.save(a, 0, cond_fast), slow.create_node("save", None, (b,), invoke=0,
                                                          where=b.where, cond=cond_slow)
    for x, y in ((a, b), (sa, sb)):
        for slot in ("index", "op", "target", "args", "kwargs", "invoke", "saved", "where", "mutated",
                     "iteration", "cond", "_flat"):
            left, right = getattr(x, slot), getattr(y, slot)
            if slot in ("args", "cond"):
                left = None if left is None else [n.index if hasattr(n, "index") else n for n in
                                                  (left if isinstance(left, tuple) else (left,))]
                right = None if right is None else [n.index if hasattr(n, "index") else n for n in
                                                    (right if isinstance(right, tuple) else (right,))]
            assert left == right, slot
        assert [d.index for d in x.deps] == [d.index for d in y.deps]
    assert list(fast.fed) == list(slow.fed) and fast.guarded and slow.guarded
    assert [u.index for u in fast.users[a.index]] == [u.index for u in slow.users[b.index]]


def test_clone_copies_every_tensor_and_keeps_everything_else():
    Pair = namedtuple("Pair", "a b")
    t, u = torch.ones(2), torch.zeros(3)
    marker = object()
    for value in ((t,), [t, None, 3, "s", marker], (t, (u, [t]), {"k": u}), Pair(t, 1), {"x": (t, u)}):
        copied = clone(value)
        assert type(copied) is type(value)
        flat_in, flat_out = _leaves(value), _leaves(copied)
        assert len(flat_in) == len(flat_out)
        for before, after in zip(flat_in, flat_out):
            if isinstance(before, torch.Tensor):
                assert after is not before and torch.equal(after, before)
                assert after.data_ptr() != before.data_ptr()
            else:
                assert after is before


def _leaves(value):
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


class _Tuple(torch.nn.Module):
    """Returns (hidden, extra) like an older decoder layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        hidden = self.inner(x)
        return self.head(hidden), hidden.sum()


def test_edits_of_a_tuple_output_match_raw_hooks_and_leave_the_model_alone():
    net = _Tuple()
    model, x = NNsight(net), torch.rand(3, 4)

    def zero_first(module, args, output):
        first = output[0].clone()
        first[:, 0] = 0
        return (first, output[1])

    handle = net.register_forward_hook(zero_first)
    try:
        expected = net(x)
    finally:
        handle.remove()
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            with model.trace(x) as tracer:
                model.output[0][:, 0] = 0
                seen = model.output.save()
            torch.testing.assert_close(tracer.output[0], expected[0])
            assert seen.value[1] is tracer.output[1] or torch.equal(seen.value[1], expected[1])
    torch.testing.assert_close(net(x)[0], net.head(net.inner(x)))  # no weight or hook changed


def test_the_short_way_of_hook_events_is_taken_only_when_it_is_exact():
    net = make_net()
    model, x = NNsight(net), torch.rand(2, 5)
    with model.trace(x) as tracer:
        model.layer1.output.save()
    plain = Interleaver(tracer.graph, net)
    assert plain._plain

    class Counting(Interleaver):
        def feed(self, node, value):
            self.fed = getattr(self, "fed", 0) + 1
            super().feed(node, value)

    counting = Counting(tracer.graph, net)
    assert not counting._plain
    with counting:
        net(x)
    assert counting.fed == 1 and torch.equal(counting.results()[0], net.layer1(x))
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            first = model.layer1.output.save()
        with tracer.invoke(x[1:]):
            second = model.layer1.output.save()
    torch.testing.assert_close(first.value, net.layer1(x[:1]))  # batched: equal to float tolerance
    torch.testing.assert_close(second.value, net.layer1(x[1:]))


def test_module_values_and_saves_call_an_overridden_proxy_init():
    from nnsight_core.proxy import InterventionProxy, Proxy

    made = []

    class Tagged(InterventionProxy):
        __slots__ = ()

        def __init__(self, node, state):
            super().__init__(node, state)
            made.append(node.op)

    class Wrapped(NNsight):
        proxy_class = Tagged

    assert Proxy._plain_init and InterventionProxy._plain_init and not Tagged._plain_init
    net = make_net()
    model, x = Wrapped(net), torch.rand(1, 5)
    with model.trace(x) as tracer:
        out = model.layer1.output
        saved = out.save()
        assert saved is out and made == ["output"]  # marked saved: no new node, no new proxy
        with tracer.cond(out.sum() > -1e9):
            kept = model.layer2.output.save()
    assert type(out) is Tagged and type(kept) is Tagged and kept.node.op == "save"
    assert made[-1] == "save"
    torch.testing.assert_close(saved.value, net.layer1(x))
    with torch.no_grad():
        torch.testing.assert_close(kept.value, net.layer2(net.sigma1(net.layer1(x))))

    plain = NNsight(net)
    with plain.trace(x):
        out = plain.layer1.output
        saved = out.save()
    assert type(out) is InterventionProxy and saved is out and out.node.saved
    torch.testing.assert_close(saved.value, net.layer1(x))
