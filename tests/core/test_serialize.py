"""A graph round-trips through JSON (no pickle) and the loaded graph executes to the same results.

Expected values come from plain PyTorch: direct calls of the modules, never the library.
"""

import builtins
import importlib
import json
import math
import operator
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from nnsight_core import OPS, EnvoyAttributeError, Graph, GraphFormatError, InvokeError
from nnsight_core.graph import EMPTY
from nnsight_core import serialize
from nnsight_core.serialize import (DTYPES, FUNCTIONS, OPERATORS, SERIALISABLE_OPS, TENSOR_METHODS, from_dict,
                                    from_json, run, to_dict, to_json)
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight


def make_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("act", torch.nn.Sigmoid()),
                                            ("layer2", torch.nn.Linear(10, 2))]))


def assert_same(got, expected):
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, equal_nan=True)
    else:
        assert got == expected


def check(saved, proxies, expected):
    """The loaded graph's saved values and the original trace's both equal plain PyTorch."""
    assert set(saved) == {p.node.index for p in proxies.values()}
    for name, proxy in proxies.items():
        assert_same(saved[proxy.node.index], expected[name])
        assert_same(proxy.value, expected[name])


# -- executes the same -------------------------------------------------------------------


def test_reads_torch_functions_and_methods_execute_the_same():
    net, x = make_net(), torch.rand(3, 5)
    model = NNsight(net)
    with model.trace(x) as tracer:
        h = model.layer1.output
        proxies = {
            "affine": (h * 2 + 1).save(),
            "neg_abs": (-h).abs().save(),
            "softmax": torch.softmax(h, -1).save(),
            "gelu": F.gelu(h).save(),
            "window": h[:, 1:4].sum(dim=-1, keepdim=True).save(),
            "transposed": h.mT.save(),                   # getattr
            "tensor_left": (torch.ones(10) * h).save(),  # recorded by __torch_function__
            "ellipsis": h[..., -1].save(),
            "cast": h.to(torch.float64).save(),
            "device": h.to(device=torch.device("cpu")).save(),
            "nan": torch.where(h > 0, h, float("nan")).save(),
            "clamp": torch.clamp(h, min=-math.inf, max=0.25).save(),
            "cat": torch.cat([h, h], dim=1)[:, ::3].save(),
            "node_slice": h[:, : h.size(1) - 5].save(),  # a slice bound computed in the graph
            "reshape": h.reshape(torch.Size([10, 3])).save(),
            "out": model.output.save(),
        }
        text = tracer.graph.to_json()
    with torch.no_grad():
        hv = net.layer1(x)
        expected = {
            "affine": hv * 2 + 1, "neg_abs": (-hv).abs(), "softmax": torch.softmax(hv, -1),
            "gelu": F.gelu(hv), "window": hv[:, 1:4].sum(dim=-1, keepdim=True), "transposed": hv.mT,
            "tensor_left": torch.ones(10) * hv, "ellipsis": hv[..., -1], "cast": hv.double(),
            "device": hv, "nan": torch.where(hv > 0, hv, float("nan")),
            "clamp": hv.clamp(max=0.25), "cat": torch.cat([hv, hv], 1)[:, ::3], "node_slice": hv[:, :5],
            "reshape": hv.reshape(10, 3), "out": net(x),
        }
    assert torch.isnan(expected["nan"]).any()  # the non-finite constant matters
    saved = run(model, Graph.from_json(text), x)
    check(saved, proxies, expected)
    assert hook_count(net) == 0


def test_edits_execute_the_same():
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x) as tracer:
        model.layer1.output[:, 0] = 0                            # setitem
        model.act.output.mul_(2)                                 # in-place method
        proxies = {"input": model.layer2.input.save()}           # inputs, getitem
        model.layer2.input = model.layer2.input * 0.5            # set_input
        proxies["adhoc"] = model.layer2(model.act.output).save()  # call_module
        model.layer2.output = model.layer2.output + 1            # set_output
        proxies["out"] = model.output.save()
        text = tracer.graph.to_json()
    with torch.no_grad():
        h = net.layer1(x)
        h[:, 0] = 0
        a = net.act(h) * 2
        expected = {"input": a, "adhoc": net.layer2(a), "out": net.layer2(a * 0.5) + 1}
    check(run(model, Graph.from_json(text), x), proxies, expected)
    assert hook_count(net) == 0


def test_set_inputs_with_args_and_kwargs_executes_the_same():
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x) as tracer:
        received = model.layer2.inputs
        proxies = {"args": received[0][0].save()}
        model.layer2.inputs = ((received[0][0] * 3,), {})
        proxies["out"] = model.output.save()
        text = tracer.graph.to_json()
    with torch.no_grad():
        a = net.act(net.layer1(x))
        expected = {"args": a, "out": net.layer2(a * 3)}
    check(run(model, Graph.from_json(text), x), proxies, expected)


def test_patching_across_invokes_runs_on_new_inputs():
    net, x, y = make_net(), torch.rand(2, 5), torch.rand(2, 5)
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            source = model.layer1.output
            clean = model.output.save()
        with tracer.invoke(x[1:]):
            model.layer1.output = source
            patched = model.output.save()
        text = tracer.graph.to_json()
    graph = Graph.from_json(text)
    assert graph.rows == [(0, 1), (1, 2)]
    with torch.no_grad():
        torch.testing.assert_close(clean.value, net(x[:1]))
        torch.testing.assert_close(patched.value, net(x[:1]))
        saved = run(model, graph, invokes=[(y[:1],), (y[1:],)])
        # On new inputs the graph patches y's first row into its second.
        torch.testing.assert_close(saved[clean.node.index], net(y[:1]))
        torch.testing.assert_close(saved[patched.node.index], net(y[:1]))
    assert not torch.allclose(net(y[:1]), net(y[1:]))


def test_every_operator_executes_the_same():
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    w = torch.rand(10, 3)
    with model.trace(x) as tracer:
        i = (model.layer1.output * 100).long().abs() + 1
        j = i % 7 + 1
        proxies = {}
        for name, arity in OPERATORS.items():
            fn = getattr(operator, name)
            if name == "matmul":
                proxies[name] = fn(i.float(), w).save()
            elif arity == 1:
                proxies[name] = fn(i).save()
            else:
                proxies[name] = fn(i, 3).save()
                proxies["reflected " + name] = fn(3, j).save()
        text = tracer.graph.to_json()
    recorded = {n.target for n in tracer.graph.nodes if n.op == "operator"}
    assert recorded == set(OPERATORS)
    with torch.no_grad():
        iv = (net.layer1(x) * 100).long().abs() + 1
        jv = iv % 7 + 1
    expected = {}
    for name, arity in OPERATORS.items():
        fn = getattr(operator, name)
        if name == "matmul":
            expected[name] = fn(iv.float(), w)
        elif arity == 1:
            expected[name] = fn(iv)
        else:
            expected[name] = fn(iv, 3)
            expected["reflected " + name] = fn(3, jv)
    check(run(model, Graph.from_json(text), x), proxies, expected)


def test_a_shared_tensor_constant_stays_one_object():
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x) as tracer:
        h = model.layer1.output
        buffer = torch.zeros(2, 10)
        buffer[0] = h[0]                       # Tensor.__setitem__ on the constant, at run time
        total = torch.add(buffer, h).save()    # ... sees the edited constant
        text = tracer.graph.to_json()
    graph = Graph.from_json(text)
    setter, adder = (n for n in graph.nodes if n.op == "call_function")
    assert setter.args[0] is adder.args[0]
    assert len(json.loads(text)["tensors"]) == 1
    with torch.no_grad():
        hv = net.layer1(x)
        expected = torch.zeros(2, 10)
        expected[0] = hv[0]
        expected = expected + hv
    assert_same(run(model, graph, x)[total.node.index], expected)
    assert_same(total.value, expected)


def test_a_graph_serialised_after_its_trace_runs_twice():
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x) as tracer:
        out = (model.layer2.output * 2).save()
    graph = Graph.from_json(tracer.graph.to_json())
    with torch.no_grad():
        expected = net.layer2(net.act(net.layer1(x))) * 2
    first = run(model, graph, x)[out.node.index]
    second = run(model, graph, x)[out.node.index]
    assert_same(first, expected)
    assert_same(second, expected)
    assert not hasattr(graph.nodes[0], "value")  # the graph is structure: each run keeps its own values


def test_model_interleave_runs_a_loaded_graph():
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x) as tracer:
        model.layer1.output[:] = 0
        out = model.output.save()
    graph = Graph.from_json(tracer.graph.to_json())
    raw = model.interleave(net, graph, x)
    expected = net.layer2(net.act(torch.zeros(2, 10)))
    assert_same(raw, expected)
    assert_same(model.run_graph(graph, x)[out.node.index], expected)


# -- round trips ----------------------------------------------------------------------------


def every_op_graph():
    """A recorded graph that uses every op a document can hold."""
    model = NNsight(make_net())
    with model.trace(torch.rand(2, 5)) as tracer:
        model.layer1.inputs = ((model.layer1.input * 2,), {})    # inputs, set_inputs, getitem
        model.layer1.output[:, 0] = 0                            # output, setitem
        h = model.act.output.abs()                               # call_method
        model.act.output = torch.relu(h) - 1                     # call_function, operator, set_output
        model.layer2.input = model.layer2(h)[:, :1] * h          # call_module, set_input
        model.layer2.output.mT.save()                            # getattr, marked saved
        model.act.skip(model.act.input)                          # skip
    # A save node (what .save() records under tracer.cond, whose condition no document holds),
    # gradient ops and stop, appended as the Graph API makes them (structure only: not run).
    graph = tracer.graph
    graph.create_node("save", None, (graph.nodes[0],), invoke=0)
    act, out = (n for n in graph.nodes if n.op == "output" and n.target[0] in ("act", "layer2"))
    grad = graph.create_node("grad", None, (act,), invoke=0)
    graph.create_node("set_grad", None, (grad, graph.create_node("operator", "mul", (grad, 0.5), invoke=0)),
                      invoke=0)
    graph.create_node("backward", None, (graph.create_node("call_method", "sum", (out,), invoke=0),),
                      {"retain_graph": True}, invoke=0)
    graph.create_node("stop", None, (graph.nodes[-1],), invoke=0)
    return graph


def test_every_serialisable_op_round_trips():
    graph = every_op_graph()
    assert {n.op for n in graph.nodes} == SERIALISABLE_OPS
    # A new op of the vocabulary needs a decision here (and a test): only `apply` runs user code.
    assert SERIALISABLE_OPS == set(OPS) - {"apply"}
    text = to_json(graph)
    loaded = from_json(text)
    assert to_json(loaded) == text
    assert str(loaded) == str(graph)
    for old, new in zip(graph.nodes, loaded.nodes, strict=True):
        assert (new.op, new.target, new.invoke, new.saved, new.mutated) == (
            old.op, old.target, old.invoke, old.saved, old.mutated)
        assert [d.index for d in new.deps] == [d.index for d in old.deps]
    assert loaded.fed.keys() == graph.fed.keys() and loaded.edits.keys() == graph.edits.keys()


CONSTANTS = [
    None, True, False, 0, -7, 2**70, 1.5, -0.0, math.nan, math.inf, -math.inf, "",
    "text \u00fcn\u00efcode \u2028 \"quoted\"", (1, [2, {"k": 3, 4: None, 2.5: (), None: "n"}]),
    slice(1, None, -1), slice(None), Ellipsis, torch.float16, torch.bool, torch.device("cpu"),
    torch.device("cuda", 1), torch.Size([2, 3]), torch.Size([]), torch.tensor(3.5),
    torch.empty(0, 3), torch.tensor([[1.0, math.nan], [math.inf, -math.inf]]),
    torch.nn.Parameter(torch.ones(2)),
] + [torch.arange(6).reshape(2, 3).to(dtype) for dtype in DTYPES.values()]


def same_constant(a, b):
    if isinstance(a, torch.Tensor):
        assert type(b) is torch.Tensor and b.dtype == a.dtype and b.shape == a.shape
        torch.testing.assert_close(b, a.detach(), rtol=0, atol=0, equal_nan=True)
    elif isinstance(a, float):
        assert type(b) is float and (math.isnan(a) and math.isnan(b) or (a == b and math.copysign(1, a) == math.copysign(1, b)))
    elif isinstance(a, (tuple, list)):
        assert type(b) is type(a) and len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            same_constant(u, v)
    elif isinstance(a, dict):
        assert type(b) is dict and list(a) == list(b)
        for k in a:
            same_constant(a[k], b[k])
    elif isinstance(a, slice):
        assert type(b) is slice
        same_constant((a.start, a.stop, a.step), (b.start, b.stop, b.step))
    else:
        assert type(b) is type(a) and b == a


@pytest.mark.parametrize("value", CONSTANTS, ids=lambda v: type(v).__name__)
def test_every_kind_of_constant_round_trips(value):
    graph = Graph()
    graph.rows, graph.batch_size = [(0, 1)], 1
    node = graph.create_node("output", ("layer1", 0), invoke=0)
    graph.create_node("call_function", torch.add, (node, value), {"other": value, "alpha": [value]})
    loaded = from_json(to_json(graph))
    args, kwargs = loaded.nodes[1].args, loaded.nodes[1].kwargs
    assert args[0] is loaded.nodes[0]
    same_constant(value, args[1])
    same_constant(value, kwargs["other"])
    same_constant([value], kwargs["alpha"])
    if isinstance(value, torch.Tensor):
        assert args[1] is kwargs["other"] is kwargs["alpha"][0]  # one tensor object, stored once


def test_tensor_constants_load_on_the_requested_device():
    graph = Graph()
    graph.create_node("call_function", torch.neg, (torch.ones(2),))
    assert from_json(to_json(graph)).nodes[0].args[0].device.type == "cpu"
    assert from_json(to_json(graph), device="meta").nodes[0].args[0].device.type == "meta"


def test_documents_are_strict_json_with_a_version():
    graph = every_op_graph()
    graph.create_node("call_function", torch.add, (graph.nodes[-1], float("nan")))
    text = to_json(graph, indent=2)

    def reject(name):
        raise AssertionError(f"non-standard constant {name}")

    document = json.loads(text, parse_constant=reject)
    assert document["format"] == "nnsight_core.graph" and document["version"] == 2
    assert document == to_dict(graph)
    assert to_dict(from_dict(document)) == document
    assert Graph.from_json(text.encode()).to_json(indent=2) == text


def test_the_allow_lists_name_only_what_torch_has():
    for name, function in FUNCTIONS.items():
        prefix, _, attr = name.rpartition(".")
        namespace = {"torch": torch, "torch.Tensor": torch.Tensor, "torch.nn.functional": F}[prefix]
        assert getattr(namespace, attr) is function
    assert all(hasattr(torch.Tensor, m) for m in TENSOR_METHODS)
    # Callables that take code, or import by name, are never reachable.
    for name in ("type", "apply_", "map_", "register_hook", "__reduce_ex__"):
        assert name not in TENSOR_METHODS
    for name in ("torch.load", "torch.save", "torch.compile", "torch.Tensor.type", "torch.Tensor.apply_"):
        assert name not in FUNCTIONS


# -- errors -------------------------------------------------------------------------------------


class Stop(Exception):
    """Ends a trace before it runs, so that nodes which could not execute are only recorded."""


UNSERIALISABLE = {
    "user lambda argument": (lambda h: F.softmax(h, dim=lambda: 0), "user code"),
    "function outside the allow-list": (lambda h: torch.linalg.vector_norm(h), "FUNCTIONS"),
    "method that imports by name": (lambda h: h.type(torch.float64), "'type' is not in"),
    "method that takes a callable": (lambda h: h.apply_(abs), "TENSOR_METHODS"),
    "private attribute": (lambda h: h._version, "private"),
    "numpy constant": (lambda h: h + __import__("numpy").ones(10), "numpy.ndarray has no JSON form"),
    "object constant": (lambda h: h * object(), "builtins.object has no JSON form"),
    "complex dtype": (lambda h: h + torch.ones(10, dtype=torch.complex64), "complex64"),
}


@pytest.mark.parametrize("case", UNSERIALISABLE, ids=list(UNSERIALISABLE))
def test_unserialisable_graphs_raise_at_to_json(case):
    record, message = UNSERIALISABLE[case]
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    with pytest.raises(Stop), model.trace(x) as tracer:
        record(model.layer1.output)
        raise Stop
    before = str(tracer.graph)
    with pytest.raises(GraphFormatError, match="cannot serialise node %1") as error:
        tracer.graph.to_json()
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)
    # Nothing changed: the graph, the model, the next trace.
    assert str(tracer.graph) == before and hook_count(net) == 0
    with model.trace(x):
        out = model.output.save()
    assert_same(out.value, net(x))


def test_limits_apply_when_writing(monkeypatch):
    graph = Graph()
    graph.create_node("call_function", torch.neg, (torch.ones(5),))
    monkeypatch.setattr(serialize.encode, "MAX_TENSOR_ELEMENTS", 4)
    with pytest.raises(GraphFormatError, match="MAX_TENSOR_ELEMENTS = 4"):
        to_json(graph)
    monkeypatch.setattr(serialize.encode, "MAX_NODES", 0)
    with pytest.raises(GraphFormatError, match="more than MAX_NODES = 0"):
        to_json(graph)


@pytest.mark.parametrize("value, message", [
    ({(1, 2): 3}, "a dict key of type tuple"),
    (torch.ones(2).to_sparse(), "layout"),
    (torch.ones(2, device="meta"), "meta"),
    (print, "user code"),
    (1j, "builtins.complex"),
], ids=["tuple key", "sparse", "meta", "builtin callable", "complex"])
def test_unsupported_constants_raise_at_to_json(value, message):
    graph = Graph()
    graph.create_node("call_function", torch.neg, (value,))
    with pytest.raises(GraphFormatError, match="cannot serialise node %0") as error:
        to_json(graph)
    assert message in str(error.value)


def test_a_user_function_target_cannot_be_serialised():
    graph = Graph()
    graph.create_node("call_function", lambda t: t, (torch.ones(1),))
    with pytest.raises(GraphFormatError, match="<lambda> is not in nnsight_core.serialize.FUNCTIONS.*user code"):
        to_json(graph)


@pytest.mark.parametrize("op, target, args, invoke, message", [
    ("save", None, (1.0,), None, "save acts on a node"),
    ("operator", "add", (), None, "operator takes exactly 2 argument(s)"),
    ("operator", "contains", (), None, "'contains' is not in nnsight_core.serialize.OPERATORS"),
    ("getitem", "x", (), None, "getitem takes no target"),
    ("output", ("layer1", 0), (), 1, "invoke: expected an invoke index from 0 to 0"),
], ids=["save of a constant", "arity", "unknown operator", "target", "invoke"])
def test_to_json_refuses_what_from_json_refuses(op, target, args, invoke, message):
    graph = Graph()
    graph.rows, graph.batch_size = [(0, 1)], 1
    graph.create_node(op, target, args, invoke=invoke)
    with pytest.raises(GraphFormatError, match="cannot serialise node %0") as error:
        to_json(graph)
    assert message in str(error.value)


def test_to_json_refuses_rows_with_a_gap():
    graph = Graph()
    graph.rows = [(0, 1), (2, 3)]
    with pytest.raises(GraphFormatError, match=r"graph's rows\[1\]: expected \[1, stop\]"):
        to_json(graph)


def test_an_odd_module_path_cannot_be_serialised():
    graph = Graph()
    graph.rows, graph.batch_size = [(0, 1)], 1
    graph.create_node("output", ("odd name", 0), invoke=0)
    with pytest.raises(GraphFormatError, match="module path 'odd name'"):
        to_json(graph)


def base_document():
    return to_dict(every_op_graph())


def with_node(node, rows=((0, 2),), **extra):
    """A small valid document whose last node is ``node``."""
    return {"format": "nnsight_core.graph", "version": 2, "rows": [list(r) for r in rows],
            "tensors": [{"dtype": "float32", "shape": [1], "data": [1.0]}],
            "nodes": [{"op": "output", "target": ["layer1", 0], "invoke": 0}, node], **extra}


def call(target, *args, op="call_function", **fields):
    return with_node({"op": op, "target": target, "args": [{"node": 0}, *args], **fields})


BAD_DOCUMENTS = {
    "top level list": ([], "expected a JSON object"),
    "unknown top-level key": (with_node({"op": "save", "args": [{"node": 0}]}, code="x"), "unknown key(s) ['code']"),
    "missing nodes": ({"format": "nnsight_core.graph", "version": 2}, "missing key(s) ['nodes']"),
    "wrong format": ({**with_node({"op": "save", "args": [{"node": 0}]}), "format": "pickle"}, "format"),
    "newer version": ({**with_node({"op": "save", "args": [{"node": 0}]}), "version": 3}, "reads version 2"),
    "older version": ({**with_node({"op": "save", "args": [{"node": 0}]}), "version": 1}, "reads version 2"),
    "bool version": ({**with_node({"op": "save", "args": [{"node": 0}]}), "version": True}, "reads version 2"),
    "saved not a bool": (with_node({"op": "save", "args": [{"node": 0}], "saved": 1}), "nodes[1].saved"),
    "unknown op": (with_node({"op": "exec", "args": ["print(1)"]}), "unknown operation \"exec\""),
    "unknown node key": (with_node({"op": "save", "args": [{"node": 0}], "code": "x"}), "unknown key(s) ['code']"),
    "self reference": (with_node({"op": "save", "args": [{"node": 1}]}), "earlier node"),
    "forward reference": (with_node({"op": "save", "args": [{"node": 5}]}), "earlier node"),
    "negative reference": (with_node({"op": "save", "args": [{"node": -1}]}), "earlier node"),
    "boolean reference": (with_node({"op": "save", "args": [{"node": True}]}), "earlier node"),
    "first node refers": ({**with_node({"op": "save"}), "nodes": [{"op": "save", "args": [{"node": 0}]}]},
                          "none: it is the first node"),
    "os.system": (call("os.system", "echo pwned"), "\"os.system\" is not in nnsight_core.serialize.FUNCTIONS"),
    "builtins.eval": (call("builtins.eval", "1"), "FUNCTIONS"),
    "__import__": (call("__import__", "os"), "FUNCTIONS"),
    "torch.load": (call("torch.load", "x.pt"), "FUNCTIONS"),
    "Tensor.type": (call("torch.Tensor.type", "os.path"), "FUNCTIONS"),
    "non-string function": (call(["torch", "sum"]), "FUNCTIONS"),
    "dunder attribute": (call("__class__", op="getattr"), "not a public attribute name"),
    "private attribute": (call("_version", op="getattr"), "not a public attribute name"),
    "frame attribute": (call("f_globals", op="getattr"), "not a public attribute name"),
    "method type": (call("type", "os.path", op="call_method"), "TENSOR_METHODS"),
    "method __subclasses__": (call("__subclasses__", op="call_method"), "TENSOR_METHODS"),
    "unknown operator": (call("system", "x", op="operator"), "unknown operator"),
    "operator arity": (call("add", op="operator"), "takes exactly 2 argument(s)"),
    "getattr with kwargs": (call("shape", op="getattr", kwargs={"x": 1}), "no keywords"),
    "method on a constant": (with_node({"op": "call_method", "target": "sum", "args": ["text"]}),
                             "acts on a node"),
    "dunder module path": (with_node({"op": "call_module", "target": "layer1.__class__"}), "dotted module path"),
    "empty path part": (with_node({"op": "output", "target": ["layer1..x", 0], "invoke": 0}), "module path"),
    "negative call": (with_node({"op": "output", "target": ["layer1", -1], "invoke": 0}), "an index >= 0"),
    "unknown iteration": (with_node({"op": "output", "target": ["layer1", {"iteration": 0}], "invoke": 0}),
                          "into iterations (0 of them)"),
    "bad iteration": ({**with_node({"op": "save", "args": [{"node": 0}]}), "iterations": [[2, 1, 1]]},
                      "iterations[0]: expected integers start >= 0, step >= 1 and stop > start"),
    "zero step": ({**with_node({"op": "save", "args": [{"node": 0}]}), "iterations": [[0, None, 0]]},
                  "step >= 1"),
    "two iterations in one node": ({**with_node({"op": "output", "target": ["layer2", {"iteration": 1}], "invoke": 0}),
                                    "iterations": [[0, None, 1], [1, 3, 1]],
                                    "nodes": [{"op": "output", "target": ["layer1", {"iteration": 0}], "invoke": 0},
                                              {"op": "output", "target": ["layer2", {"iteration": 1}], "invoke": 0},
                                              {"op": "operator", "target": "add", "args": [{"node": 0}, {"node": 1}]}]},
                                   "combines values of iterations[0] and iterations[1]"),
    "apply": (with_node({"op": "apply", "target": "builtins.print", "args": [{"node": 0}]}),
              "it calls a Python function"),
    "set_grad of a non-grad": (with_node({"op": "set_grad", "args": [{"node": 0}, 1.0]}), "the gradient it replaces"),
    "grad with target": (with_node({"op": "grad", "target": "x", "args": [{"node": 0}]}), "takes no target"),
    "module value without invoke": (with_node({"op": "output", "target": ["layer1", 0]}), "invoke index"),
    "invoke out of range": (with_node({"op": "save", "args": [{"node": 0}], "invoke": 3}), "from 0 to 0"),
    "set_output of another value": (with_node({"op": "set_output", "target": ["layer2", 0], "invoke": 0,
                                               "args": [{"node": 0}, 1.0]}), "the module value it assigns"),
    "target on save": (with_node({"op": "save", "target": "x", "args": [{"node": 0}]}), "takes no target"),
    "rows with a gap": (with_node({"op": "save", "args": [{"node": 0}]}, rows=((0, 1), (2, 3))), "rows[1]"),
    "empty rows": (with_node({"op": "save", "args": [{"node": 0}]}, rows=((0, 0),)), "rows[0]"),
    "args not a list": (with_node({"op": "save", "args": {"node": 0}}), "expected a list"),
    "kwargs not an object": (call("torch.sum", kwargs=[1]), "expected an object"),
    "untagged list value": (call("torch.sum", [1, 2]), "exactly one key"),
    "two tags": (call("torch.sum", {"tuple": [], "list": []}), "exactly one key"),
    "unknown tag": (call("torch.sum", {"lambda": "x: x"}), "unknown value kind \"lambda\""),
    "bad float": (call("torch.sum", {"float": "1e400"}), "\"nan\", \"inf\" or \"-inf\""),
    "bad device": (call("torch.sum", {"device": "cuda; rm -rf /"}), "expected a device"),
    "bad dtype": (call("torch.sum", {"dtype": "torch.float32"}), "expected one of"),
    "short slice": (call("torch.sum", {"slice": [1, 2]}), "[start, stop, step]"),
    "ellipsis payload": (call("torch.sum", {"ellipsis": 1}), "expected null"),
    "list dict key": (call("torch.sum", {"dict": [[[1], 2]]}), "scalar key"),
    "repeated dict key": (call("torch.sum", {"dict": [["a", 1], ["a", 2]]}), "appears twice"),
    "negative size": (call("torch.sum", {"size": [-1]}), "sizes >= 0"),
    "tensor ref out of range": (call("torch.sum", {"tensor": 1}), "index into tensors"),
    "too deep": (call("torch.sum", json.loads('{"tuple": [' * 40 + ']}' * 40)), "MAX_DEPTH = 32"),
}

TENSOR_ENTRIES = {
    "complex dtype": ({"dtype": "complex64", "shape": [1], "data": [1.0]}, "tensors[0].dtype"),
    "object dtype": ({"dtype": {"tuple": []}, "shape": [1], "data": [1.0]}, "tensors[0].dtype"),
    "negative dim": ({"dtype": "float32", "shape": [-1], "data": []}, "sizes must be integers"),
    "float dim": ({"dtype": "float32", "shape": [1.5], "data": [1.0]}, "sizes must be integers"),
    "infinite dim": ({"dtype": "float32", "shape": [1e999], "data": []}, "sizes must be integers"),
    "bool dim": ({"dtype": "float32", "shape": [True], "data": [1.0]}, "sizes must be integers"),
    "huge dim": ({"dtype": "float32", "shape": [0, 2**40], "data": []}, "MAX_TENSOR_ELEMENTS"),
    "too many elements": ({"dtype": "float32", "shape": [2**11, 2**11], "data": []}, "MAX_TENSOR_ELEMENTS"),
    "too many dims": ({"dtype": "float32", "shape": [1] * 17, "data": [1.0]}, "MAX_TENSOR_DIMS"),
    "short data": ({"dtype": "float32", "shape": [2], "data": [1.0]}, "flat list of 2 values"),
    "nested data": ({"dtype": "float32", "shape": [1, 1], "data": [[1.0]]}, "numbers and \"nan\""),
    "string in float data": ({"dtype": "float32", "shape": [1], "data": ["1.0"]}, "numbers and \"nan\""),
    "nan in int data": ({"dtype": "int64", "shape": [1], "data": ["nan"]}, "holds integers"),
    "int8 out of range": ({"dtype": "int8", "shape": [1], "data": [300]}, "from -128 to 127"),
    "number in bool data": ({"dtype": "bool", "shape": [1], "data": [1]}, "only true and false"),
    "missing data": ({"dtype": "float32", "shape": [1]}, "missing key(s) ['data']"),
}
for _name, (_entry, _message) in TENSOR_ENTRIES.items():
    _document = with_node({"op": "save", "args": [{"node": 0}]})
    _document["tensors"] = [_entry]
    BAD_DOCUMENTS["tensor: " + _name] = (_document, _message)


class ImportSentinel:
    """Records imports and calls of eval, exec and os.system while active."""

    TARGETS = ((builtins, "__import__"), (importlib, "import_module"), (builtins, "eval"),
               (builtins, "exec"), (os, "system"))

    def __init__(self):
        self.calls = []
        self._originals = []

    def __enter__(self):
        # Plain setattr: monkeypatch.setattr itself imports, which the spies would record.
        for owner, name in self.TARGETS:
            original = getattr(owner, name)
            self._originals.append((owner, name, original))
            setattr(owner, name, self._spy(name, original))
        return self

    def _spy(self, name, original):
        def spy(*args, **kwargs):
            self.calls.append((name, args[:1]))
            return original(*args, **kwargs)
        return spy

    def __exit__(self, *exc):
        while self._originals:
            owner, name, original = self._originals.pop()
            setattr(owner, name, original)


def outcome(load, document):
    """What ``load(document)`` returns, or the GraphFormatError it raises (no pytest code runs
    in between, so that an import sentinel sees only the loader)."""
    try:
        return load(document)
    except GraphFormatError as error:
        return error


@pytest.mark.parametrize("case", BAD_DOCUMENTS, ids=list(BAD_DOCUMENTS))
def test_invalid_documents_raise_a_clear_error_and_run_nothing(case):
    document, message = BAD_DOCUMENTS[case]
    text = json.dumps(document).replace("Infinity", "1e999")  # strict JSON that parses as inf
    with ImportSentinel() as sentinel:
        from_text, from_document = outcome(from_json, text), outcome(from_dict, document)
    assert sentinel.calls == []
    assert type(from_text) is GraphFormatError, from_text
    assert message in str(from_text), str(from_text)
    assert str(from_text) == str(from_document)
    assert str(from_text).startswith(("graph document", "the document"))


def test_the_small_valid_document_loads():
    # The invalid documents above are each one change away from this one.
    graph = from_dict(with_node({"op": "save", "args": [{"node": 0}]}))
    assert [n.op for n in graph.nodes] == ["output", "save"]


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ('{"format": NaN}', "non-standard JSON constant NaN"),
    ('{"nodes": [], "nodes": []}', "repeats the key(s) ['nodes']"),
    (b"\x80\x81", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nests JSON too deeply"),
    ('{"version": ' + "9" * 5000 + "}", "not valid JSON"),
    (12, "takes the document's text"),
], ids=["truncated", "NaN literal", "duplicate key", "bad utf-8", "deep nesting", "huge int", "not text"])
def test_malformed_text_raises(text, message):
    with pytest.raises(GraphFormatError, match=None) as error:
        from_json(text)
    assert message in str(error.value)


def test_oversized_documents_are_refused_before_parsing(monkeypatch):
    monkeypatch.setattr(serialize.decode, "MAX_DOCUMENT_CHARS", 100)
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed an oversized document"))
    with pytest.raises(GraphFormatError, match="more than MAX_DOCUMENT_CHARS = 100"):
        from_json(" " * 101)


def test_too_many_nodes():
    document = with_node({"op": "save", "args": [{"node": 0}]})
    document["nodes"] = [{"op": "exec"}] * (serialize.MAX_NODES + 1)
    with pytest.raises(GraphFormatError, match="more than MAX_NODES = 65536"):
        from_dict(document)


def test_a_valid_document_loads_without_importing():
    text = to_json(every_op_graph())
    with ImportSentinel() as sentinel:
        graph = from_json(text)
    assert sentinel.calls == [] and len(graph) > 0


def test_run_needs_one_input_set_per_invoke():
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            model.layer1.output.save()
        with tracer.invoke(x[1:]):
            model.layer1.output.save()
    graph = Graph.from_json(tracer.graph.to_json())
    with pytest.raises(InvokeError, match="recorded with 2 invoke"):
        run(model, graph, invokes=[(x,)])
    with pytest.raises(InvokeError, match="exactly one of them"):
        run(model, graph, x, invokes=[(x,), (x,)])
    with pytest.raises(InvokeError, match="exactly one of them"):
        run(model, graph)
    assert hook_count(net) == 0
    assert len(run(model, graph, invokes=[x[:1], x[1:]])) == 2


def test_run_on_a_model_without_the_modules_raises():
    net, x = make_net(), torch.rand(2, 5)
    with NNsight(net).trace(x) as tracer:
        tracer.layer2.output.save()
    other = torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(5, 2))]))
    model = NNsight(other)
    with pytest.raises(EnvoyAttributeError, match=r"needs model\.layer2, which this NNsight does not have"):
        run(model, Graph.from_json(tracer.graph.to_json()), x)
    assert hook_count(other) == 0
    with model.trace(x):
        out = model.output.save()
    assert_same(out.value, other(x))


def test_the_documented_example_document_is_valid():
    doc = serialize.schema.__doc__
    block = doc[doc.index("The document (version 2)::"):].split("\n\n")[1]
    text = "\n".join(line.split("#")[0] for line in block.splitlines())
    graph = from_json(text)
    assert [n.op for n in graph.nodes] == ["output", "operator", "call_function", "save"]
    assert graph.nodes[2].target is torch.cat
    assert math.isnan(graph.nodes[2].args[0][1][1])


def test_nothing_is_built_before_the_whole_document_passed(monkeypatch):
    built = []
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: built.append("tensor"))
    monkeypatch.setattr(Graph, "create_node", lambda *a, **k: built.append("node"))
    document = with_node({"op": "save", "args": [{"node": 0}]})
    document["nodes"].append({"op": "call_function", "target": "os.system", "args": ["x"]})
    with pytest.raises(GraphFormatError, match=r"nodes\[2\]\.target"):
        from_dict(document)
    assert built == []


def test_a_graph_that_runs_user_code_cannot_be_serialised():
    graph = Graph()
    graph.create_node("apply", print, ("hello",))
    with pytest.raises(GraphFormatError, match="cannot serialise node %0.*tracer.apply.*user code"):
        to_json(graph)


def test_a_conditional_node_cannot_be_serialised():
    graph = Graph()
    condition = graph.create_node("call_function", torch.ones, (1,))
    graph.create_node("call_function", torch.zeros, (1,), cond=condition)
    with pytest.raises(GraphFormatError, match="cannot serialise node %1.*tracer.cond"):
        to_json(graph)


class Loop(torch.nn.Module):
    """``layer`` then ``act``, three times (like three generation steps)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 4)
        self.act = torch.nn.Tanh()

    def forward(self, x):
        for _ in range(3):
            x = self.act(self.layer(x))
        return x


def test_iterations_over_calls_round_trip_and_execute_the_same():
    net, x = Loop(), torch.rand(2, 4)
    model = NNsight(net)
    with model.trace(x) as tracer:
        every = model.layer.all().output.save()
        with tracer.iter[1:3]:
            model.act.output = model.layer.output * 2
        out = model.output.save()
        text = tracer.graph.to_json()
    document = json.loads(text)
    assert document["iterations"] == [[0, None, 1], [1, 3, 1]]
    graph = Graph.from_json(text)
    assert [(it.start, it.stop, it.step) for it in graph.iterations] == [(0, None, 1), (1, 3, 1)]
    assert [n.iteration is not None for n in graph.nodes] == [n.iteration is not None for n in tracer.graph.nodes]
    # Plain PyTorch: the same loop, with the edit at calls 1 and 2.
    with torch.no_grad():
        h, layers = x, []
        for call in range(3):
            layers.append(net.layer(h))
            h = layers[-1] * 2 if call in (1, 2) else net.act(layers[-1])
    saved = run(model, graph, x)
    for got in (saved[every.node.index], every.value):
        assert len(got) == 3
        for value, expected in zip(got, layers, strict=True):
            assert_same(value, expected)
    assert_same(saved[out.node.index], h)
    assert_same(out.value, h)
    assert to_json(graph) == text


def test_gradients_round_trip_and_execute_the_same():
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x) as tracer:
        first = model.layer1.output
        act = model.act.output
        grad = first.grad.save()                      # grad
        act.grad = act.grad * 2                       # set_grad
        model.output.sum().backward()                 # backward
        text = tracer.graph.to_json()
    assert {"grad", "set_grad", "backward"} <= {n.op for n in tracer.graph.nodes}
    # Plain autograd, with a tensor hook doubling the gradient at the activation.
    h = net.layer1(x)
    h.retain_grad()
    a = net.act(h)
    a.register_hook(lambda g: g * 2)
    net.layer2(a).sum().backward()
    net.zero_grad()
    saved = run(model, Graph.from_json(text), x)
    assert_same(saved[grad.node.index], h.grad)
    assert_same(grad.value, h.grad)


def test_stop_round_trips_and_stops_the_loaded_run():
    net, x = make_net(), torch.rand(2, 5)
    model = NNsight(net)
    with model.trace(x) as tracer:
        hidden = model.layer1.output.save()
        tracer.stop()
        text = tracer.graph.to_json()
    calls = []
    handle = net.layer2.register_forward_hook(lambda *args: calls.append(1))
    try:
        saved = run(model, Graph.from_json(text), x)
    finally:
        handle.remove()
    assert calls == []  # the model stopped before layer2
    with torch.no_grad():
        assert_same(saved[hidden.node.index], net.layer1(x))


def test_tensor_constants_can_travel_beside_the_document():
    net = make_net()
    model = NNsight(net)
    x = torch.rand(2, 5, generator=torch.Generator().manual_seed(3))
    shift = torch.arange(10, dtype=torch.float32) / 10
    half = torch.tensor(0.5, dtype=torch.bfloat16)
    with model.trace(x) as tracer:
        model.layer1.output = model.layer1.output + shift
        scaled = (model.layer2.output * half).save()
        again = (model.layer2.output - shift[:2]).save()    # another tensor object: another entry
    external = []
    document = to_dict(tracer.graph, tensors=external)
    assert [entry.get("external") for entry in document["tensors"]] == [0, 1, 2]
    assert "data" not in json.dumps(document) and torch.equal(external[0], shift)
    saved = run(model, from_dict(json.loads(json.dumps(document)), tensors=[t.clone() for t in external]), x)
    with torch.no_grad():
        layer2 = net.layer2(torch.sigmoid(net.layer1(x) + shift))
    torch.testing.assert_close(saved[scaled.node.index], layer2 * half)
    torch.testing.assert_close(saved[again.node.index], layer2 - shift[:2])
    for tensors, match in [
        (None, r"tensors\[0\].external: expected an index into the 0 tensor\(s\) given beside the document"),
        (external[:2], r"tensors\[2\].external: expected an index into the 2 tensor"),
        ([shift.double(), *external[1:]], r"declares a float32 tensor of shape \[10\], tensor 0 beside the "
                                          r"document is a torch.float64 tensor of shape \[10\]"),
        ([shift[:5], *external[1:]], r"tensor 0 beside the document is a torch.float32 tensor of shape \[5\]"),
        (["text", *external[1:]], r"tensor 0 beside the document is a string"),
    ]:
        with pytest.raises(GraphFormatError, match=match):
            from_dict(document, tensors=tensors)
    document["tensors"][2]["external"] = 0
    with pytest.raises(GraphFormatError, match=r"tensors\[2\].external: tensor 0 beside the document is named by "
                                               "two entries"):
        from_dict(document, tensors=external)
    del document["tensors"][1]["external"]
    with pytest.raises(GraphFormatError, match=r"tensors\[1\]: missing key\(s\) \['data'\]"):
        from_dict(document, tensors=external)
