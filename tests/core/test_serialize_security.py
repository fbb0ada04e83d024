"""A loaded graph reaches only the values it is given and runs within its limits.

Each escape route is a document written by hand, as an attacker would write it. Its
refusal leaves the model's parameters equal to a copy taken before, no hook on it, and
the next trace equal to plain PyTorch. A control runs the same document unguarded
(``model.interleave``) on a copy, to show the route is real.
"""

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nnsight_core import GraphAccessError, GraphFormatError, GraphLimitError, InterventionError
from nnsight_core.serialize import (FORMAT, TENSOR_ATTRIBUTES, TENSOR_METHODS, VERSION, Limits, from_dict,
                                    from_json, run, to_json)
from nnsight_core.serialize.guard import allowed_attributes
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

X = torch.rand(2, 5, generator=torch.Generator().manual_seed(1))


def make_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("act", torch.nn.Sigmoid()),
                                            ("layer2", torch.nn.Linear(10, 2))]))


def document(*nodes, rows=((0, 2),)):
    return {"format": FORMAT, "version": VERSION, "rows": [list(r) for r in rows], "nodes": list(nodes)}


def ref(i):
    return {"node": i}


def output(path="layer1"):
    return {"op": "output", "target": [path, 0], "invoke": 0}


def getattr_(i, name):
    return {"op": "getattr", "target": name, "args": [ref(i)]}


def getitem(i, key):
    return {"op": "getitem", "args": [ref(i), key]}


def method(i, name, *args, **kwargs):
    node = {"op": "call_method", "target": name, "args": [ref(i), *args]}
    if kwargs:
        node["kwargs"] = kwargs
    return node


def function(name, *args, **kwargs):
    node = {"op": "call_function", "target": name, "args": list(args)}
    if kwargs:
        node["kwargs"] = kwargs
    return node


def save(i):
    return {"op": "save", "args": [ref(i)]}


def assert_untouched(net, before, model):
    """The parameters equal the copy, no hook is left, and the next trace equals plain PyTorch."""
    for name, value in before.state_dict().items():
        assert torch.equal(net.state_dict()[name], value), f"{name} changed"
    assert hook_count(net) == 0
    with model.trace(X):
        out = model.output.save()
    with torch.no_grad():
        torch.testing.assert_close(out.value, before(X))


def refused(doc, error, match, limits=None, net=None):
    """Run ``doc`` on a fresh model: it raises ``error`` and leaves the model untouched."""
    net = net or make_net()
    before = copy.deepcopy(net)
    model = NNsight(net)
    graph = from_dict(doc)
    with pytest.raises(error, match=match):
        run(model, graph, X, limits=limits)
    assert_untouched(net, before, model)
    return graph


# -- what a graph may reach ---------------------------------------------------------------

# inputs of layer1 -> its args -> x -> call layer1 -> grad_fn -> AddmmBackward's first input,
# the bias's AccumulateGrad -> .variable (the Parameter) -> .data -> zero_()
GRAD_FN_ROUTE = document(
    {"op": "inputs", "target": ["layer1", 0], "invoke": 0}, getitem(0, 0), getitem(1, 0),
    {"op": "call_module", "target": "layer1", "args": [ref(2)]},
    getattr_(3, "grad_fn"), getattr_(4, "next_functions"), getitem(5, 0), getitem(6, 0),
    getattr_(7, "variable"), getattr_(8, "data"), method(9, "zero_"))


def test_the_grad_fn_route_to_a_parameter_is_refused():
    # The control: unguarded, the document zeroes the bias for good.
    net = make_net()
    model = NNsight(net)
    model.interleave(net, from_dict(GRAD_FN_ROUTE), X)
    assert torch.count_nonzero(net.layer1.bias) == 0
    # Under run(): refused at the first step off the values, naming node, attribute, type and the fix.
    refused(GRAD_FN_ROUTE, GraphAccessError,
            r"node %4 .* reads the attribute 'grad_fn' of a torch\.Tensor.*may read .*mT, ndim")


@pytest.mark.parametrize("name", ["weight", "bias", "data", "grad_fn", "base", "storage", "is_leaf", "output_nr",
                                  "names", "itemsize"])
def test_attributes_outside_the_tensor_allowlist_are_refused(name):
    doc = document(output(), {"op": "call_module", "target": "layer2", "args": [ref(0)]}, getattr_(1, name),
                   save(2))
    refused(doc, GraphAccessError, f"reads the attribute '{name}' of a torch.Tensor")


@pytest.mark.parametrize("name", ["_parameters", "__class__", "_base", "__dict__", "_modules"])
def test_private_attributes_are_refused_when_loading(name):
    with pytest.raises(GraphFormatError, match="not a public attribute name"):
        from_dict(document(output(), getattr_(0, name)))


@pytest.mark.parametrize("name", ["storage", "untyped_storage", "data_ptr", "__reduce__", "numpy", "type",
                                  "register_hook", "apply_"])
def test_methods_outside_the_table_are_refused_when_loading(name):
    assert name not in TENSOR_METHODS
    with pytest.raises(GraphFormatError, match="TENSOR_METHODS"):
        from_dict(document(output(), method(0, name)))


class State:
    """A non-tensor object a module receives as a keyword (like a KV cache), holding a weight."""

    def __init__(self, weight):
        self.weight = weight
        self.secret = "key"

    def sum(self):
        return self.weight.data.zero_()

    def tolist(self):
        return [self.secret]

    def item(self):
        return self.weight


class WithState(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer1 = torch.nn.Linear(5, 10)
        self.inner = Inner()
        self.layer2 = torch.nn.Linear(10, 2)

    def forward(self, x):
        return self.layer2(self.inner(self.layer1(x), state=State(self.layer1.weight)))


class Inner(torch.nn.Module):
    def forward(self, h, state):
        return torch.sigmoid(h)


def state_route(*tail):
    """inputs of inner -> kwargs -> "state", then ``tail`` (node 3 on)."""
    return document({"op": "inputs", "target": ["inner", 0], "invoke": 0}, getitem(0, 1),
                    getitem(1, "state"), *tail)


@pytest.mark.parametrize("tail, match", [
    ([method(2, "sum")], r"calls the method 'sum' on a .*State: a loaded graph calls methods on tensors only"),
    ([method(2, "tolist")], r"calls the method 'tolist' on a .*State"),
    ([method(2, "item")], r"calls the method 'item' on a .*State"),
    ([getattr_(2, "weight")], r"reads the attribute 'weight' of a .*State.*no attributes"),
    ([getattr_(2, "secret")], r"reads the attribute 'secret'"),
    ([getitem(2, 0)], r"tries to index a .*State"),
    ([{"op": "operator", "target": "add", "args": [ref(2), 1]}], r"operator 'add' to a .*State"),
    ([function("torch.Tensor.zero_", ref(2))], r"descriptor 'zero_'"),  # torch itself refuses a non-tensor
], ids=["sum", "tolist", "item", "weight", "secret", "getitem", "operator", "function"])
def test_objects_reached_through_inputs_are_opaque(tail, match):
    net = WithState()
    error = GraphAccessError if tail[0]["op"] != "call_function" else InterventionError
    refused(state_route(*tail), error, match, net=net)


@pytest.mark.parametrize("tail", [[method(1, "tolist")], [method(1, "item")], [method(1, "sum")]],
                         ids=["tolist", "item", "sum"])
def test_methods_on_a_tuple_are_refused(tail):
    doc = document({"op": "inputs", "target": ["layer1", 0], "invoke": 0}, getitem(0, 0), *tail)
    refused(doc, GraphAccessError, r"on a tuple: a loaded graph calls methods on tensors only")


class Tied(torch.nn.Module):
    """A module that hands its own weight to a submodule: the weight is an input value."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer1 = torch.nn.Linear(5, 10)
        self.scale = torch.nn.Identity()
        self.layer2 = torch.nn.Linear(10, 2)

    def forward(self, x):
        weight = self.scale(self.layer1.weight)
        return self.layer2(x @ weight.T)


def weight_route(*tail):
    """inputs of scale -> args -> layer1.weight (node 2), then ``tail``."""
    return document({"op": "inputs", "target": ["scale", 0], "invoke": 0}, getitem(0, 0), getitem(1, 0),
                    *tail)


# In-place edits the graph can see (a method ending in "_" or a setitem on a module value, or a
# view of one) work on the invoke's own copy, as in a trace; the others reach the weight itself
# and are refused.
@pytest.mark.parametrize("tail, outcome", [
    ([method(2, "zero_")], "copy"),
    ([method(2, "copy_", {"tensor": 0})], "copy"),
    ([getitem(2, 0), method(3, "fill_", 1.0)], "copy"),
    ([{"op": "setitem", "args": [ref(2), 0, 0.0]}], "copy"),
    ([method(2, "detach"), method(3, "zero_")], "copy"),
    ([getattr_(2, "T"), method(3, "mul_", 2)], "copy"),
    ([function("torch.Tensor.requires_grad_", ref(2), False)], "refused"),
    ([function("torch.Tensor.view", ref(2), -1), method(3, "fill_", 1.0)], "refused"),
    ([function("torch.Tensor.add_", ref(2), 1)], "refused"),
    ([function("torch.Tensor.__setitem__", ref(2), 0, 1.0)], "refused"),
    ([function("torch.Tensor.__iadd__", ref(2), 1)], "refused"),
    ([function("torch.nn.functional.relu", ref(2), inplace=True)], "refused"),
    ([function("torch.nn.functional.relu", ref(2), True)], "refused"),
    ([function("torch.add", ref(2), 1, out=ref(2))], "refused"),
    ([{"op": "output", "target": ["scale", 0], "invoke": 0}, getattr_(2, "T"), getattr_(4, "T"),
      {"op": "set_output", "target": ["scale", 0], "invoke": 0, "args": [ref(3), ref(5)]}], "refused"),
], ids=["zero_", "copy_", "view fill_", "setitem", "detach zero_", "T mul_", "requires_grad_", "Tensor.view fill_",
        "Tensor.add_", "__setitem__", "__iadd__", "relu inplace", "relu positional", "out=", "assign as output"])
def test_the_model_weights_are_never_written(tail, outcome):
    doc = weight_route(*tail)
    doc["tensors"] = [{"dtype": "float32", "shape": [10, 5], "data": [0.0] * 50}]
    if outcome == "refused":
        refused(doc, GraphAccessError, "shares storage with a parameter or buffer of the model", net=Tied())
        return
    net = Tied()
    before = copy.deepcopy(net)
    model = NNsight(net)
    run(model, from_dict(doc), X)
    assert_untouched(net, before, model)


def test_the_model_weights_can_be_read():
    net = Tied()
    doc = weight_route(method(2, "sum"), save(3), method(2, "clone"), method(5, "zero_"), save(5))
    saved = run(NNsight(net), from_dict(doc), X)
    torch.testing.assert_close(saved[4], net.layer1.weight.sum())
    assert torch.count_nonzero(saved[7]) == 0 and torch.count_nonzero(net.layer1.weight) == 50


def test_apply_is_refused_by_run():
    model = NNsight(make_net())
    with model.trace(X) as tracer:
        tracer.apply(lambda t: t, model.layer1.output).save()
    with pytest.raises(GraphAccessError, match="calls a Python function"):
        run(model, tracer.graph, X)


def test_ordinary_graphs_still_run():
    net = make_net()
    model = NNsight(net)
    with model.trace(X, scan=False) as tracer:    # .shape recorded as a getattr node
        h = model.layer1.output
        values = {
            "first_row": h[0].save(), "sum": h.sum().save(), "T": h.T.save(), "mT": h.mT.save(),
            "max_indices": h.max(dim=-1).indices.save(), "sorted_values": h.sort(dim=-1).values.save(),
            "requires_grad": h.requires_grad.save(), "tolist": h[0, :3].tolist().save(),
            "item": h[0, 0].item().save(), "picked": h[torch.tensor([1, 0])].save(),
            "broadcast": (h[:, :, None] * h[:, None, :]).save(),
            "shape_sum": (h.shape[0] * h.shape[1] + h.ndim).save(),
            "called": model.layer2(h * 2).save(),
        }
        text = to_json(tracer.graph)
    graph = from_json(text)
    kinds = {(n.op, n.target) for n in graph.nodes}
    assert {("getattr", "shape"), ("getattr", "T"), ("getattr", "indices"), ("call_method", "tolist")} <= kinds
    saved = run(model, graph, X)
    with torch.no_grad():
        hv = net.layer1(X)
        expected = {
            "first_row": hv[0], "sum": hv.sum(), "T": hv.T, "mT": hv.mT, "max_indices": hv.max(dim=-1).indices,
            "sorted_values": hv.sort(dim=-1).values, "requires_grad": True, "tolist": hv[0, :3].tolist(),
            "item": hv[0, 0].item(), "picked": hv[torch.tensor([1, 0])],
            "broadcast": hv[:, :, None] * hv[:, None, :], "shape_sum": 2 * 10 + 2,
            "called": net.layer2(hv * 2),
        }
    for name, proxy in values.items():
        got = saved[proxy.node.index]
        if isinstance(got, torch.Tensor):
            torch.testing.assert_close(got, expected[name])
        elif isinstance(got, (float, list)):
            assert got == pytest.approx(expected[name]), name
        else:
            assert got == expected[name], name


def test_allowed_attributes_by_type():
    assert allowed_attributes(torch.zeros(1)) == TENSOR_ATTRIBUTES
    assert allowed_attributes(torch.nn.Parameter(torch.zeros(1))) == TENSOR_ATTRIBUTES
    assert allowed_attributes(torch.zeros(2, 2).max(dim=0)) == {"values", "indices"}
    assert allowed_attributes(torch.nn.Linear(1, 1)) == frozenset()
    assert allowed_attributes({"weight": 1}) == frozenset()
    assert allowed_attributes((1, 2)) == frozenset()
    assert allowed_attributes(torch.Size([1])) == frozenset()
    assert not {"data", "grad_fn", "_base", "storage"} & TENSOR_ATTRIBUTES


# -- limits -------------------------------------------------------------------------------


class NoRealCompute(TorchDispatchMode):
    """Fails on any operator that would compute or allocate off the meta device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        device = kwargs.get("device")
        on_meta = all(t.is_meta for t in tensors) if tensors else str(device) == "meta"
        if not on_meta:
            raise AssertionError(f"{func} ran for real")
        return func(*args, **kwargs)


@pytest.mark.parametrize("node", [
    function("torch.zeros", 2**31),
    function("torch.empty", 10**9),
    function("torch.ones", {"tuple": [2**20, 2**20]}, dtype={"dtype": "float16"}),
    function("torch.full", {"list": [2**30]}, 1.0),
    function("torch.arange", 10**10),
    function("torch.linspace", 0, 1, 10**9),
    function("torch.eye", 2**16),
    function("torch.randint", 0, 9, {"size": [10**9]}),
], ids=["zeros(2**31)", "empty(10**9)", "ones", "full", "arange", "linspace", "eye", "randint"])
def test_huge_allocations_are_refused_before_allocating(node):
    doc = document(output(), node, save(1))
    with NoRealCompute():
        graph = from_dict(doc)   # loading builds no tensor for these documents
    net = make_net()
    model = NNsight(net)
    with NoRealCompute(), pytest.raises(GraphLimitError, match=r"node %1 .*max_elements_per_tensor = 268435456"):
        run(model, graph, X)       # refused as the graph starts: before the model or any real op runs
    assert hook_count(net) == 0


def test_a_big_matrix_times_itself_twenty_times_is_refused_before_the_first_product():
    nodes = [output(), function("torch.randn", 8192, 8192)]
    for _ in range(20):
        nodes.append(function("torch.matmul", ref(len(nodes) - 1), ref(1)))
    nodes.append(save(len(nodes) - 1))
    net = make_net()
    before = copy.deepcopy(net)
    model = NNsight(net)
    limits = Limits()
    with pytest.raises(GraphLimitError, match=r"node %2 .*Limits\.max_work = 274877906944; refused before it runs"):
        run(model, from_dict(document(*nodes)), X, limits=limits)
    assert_untouched(net, before, model)


SMALL = Limits(max_elements_per_tensor=1_000, max_total_elements=10_000, max_work=100_000, max_ops=100)


@pytest.mark.parametrize("tail, match", [
    ([method(0, "repeat", 100, 1)], "a tensor of 2000 elements"),
    ([method(0, "expand", 1000, 2, 10), method(1, "contiguous")], r"node %2 .*a tensor of 20000 elements"),
    ([method(0, "tile", {"tuple": [50, 2]})], "a tensor of 2000 elements"),
    ([method(0, "repeat_interleave", 100, dim=0)], "a tensor of 2000 elements"),
    ([function("torch.repeat_interleave", ref(0), {"tensor": 0}, dim=0)], "depends on tensor values"),
    ([method(0, "new_zeros", {"tuple": [100, 100]})], "a tensor of 10000 elements"),
    ([function("torch.outer", {"tensor": 1}, {"tensor": 1})], "a tensor of 10000 elements"),
    ([function("torch.einsum", "i,j->ij", {"tensor": 1}, {"tensor": 1})], "a tensor of 10000 elements"),
    ([function("torch.unsqueeze", {"tensor": 1}, 1), function("torch.unsqueeze", {"tensor": 1}, 0),
      {"op": "operator", "target": "mul", "args": [ref(1), ref(2)]}], r"node %3 .*a tensor of 10000 elements"),
    ([getitem(0, {"tensor": 2})], "a tensor of 10000 elements"),
    ([function("torch.nn.functional.one_hot", {"tensor": 2})], "depends on tensor values"),
    ([getattr_(0, "shape"), {"op": "operator", "target": "mul", "args": [ref(1), 10**9]}],
     "a sequence of 2000000000 items"),
    ([{"op": "operator", "target": "pow", "args": [10, 10**6]}], "integer of about 4000000 bits"),
    ([function("torch.t", {"tensor": 3}), function("torch.matmul", {"tensor": 3}, ref(1))],
     r"node %2 .*max_work = 100000"),
    ([method(0, "unsqueeze", 0), function("torch.nn.functional.interpolate", ref(1), scale_factor=100.0)],
     "a tensor of 2000 elements"),
], ids=["repeat", "expand-contiguous", "tile", "repeat_interleave", "repeat_interleave tensor", "new_zeros",
        "outer", "einsum", "broadcast", "advanced index", "one_hot", "tuple repetition", "int power", "matmul",
        "interpolate"])
def test_growing_operations_are_refused_within_small_limits(tail, match):
    doc = document(output(), *tail)
    doc["nodes"].append(save(len(doc["nodes"]) - 1))
    doc["tensors"] = [{"dtype": "int64", "shape": [2], "data": [1000, 1000]},
                      {"dtype": "float32", "shape": [100], "data": [1.0] * 100},
                      {"dtype": "int64", "shape": [1000], "data": [0] * 1000},
                      {"dtype": "float32", "shape": [10, 1000], "data": [1.0] * 10_000}]
    refused(doc, GraphLimitError, match, limits=SMALL)


def test_graphs_within_the_limits_run():
    doc = document(output(), method(0, "repeat", 2, 1), method(1, "expand", 3, 4, 10), method(2, "contiguous"),
                   function("torch.zeros", 10, 10), function("torch.matmul", ref(3), ref(4)),
                   function("torch.nn.functional.one_hot", {"tensor": 0}, num_classes=4), save(5), save(6))
    doc["tensors"] = [{"dtype": "int64", "shape": [3], "data": [0, 3, 1]}]
    net = make_net()
    saved = run(NNsight(net), from_dict(doc), X, limits=SMALL)
    with torch.no_grad():
        h = net.layer1(X)
    torch.testing.assert_close(saved[7], h.repeat(2, 1).expand(3, 4, 10).contiguous() @ torch.zeros(10, 10))
    assert torch.equal(saved[8], F.one_hot(torch.tensor([0, 3, 1]), num_classes=4))


def test_totals_and_ops_are_counted_over_the_run():
    many = [output()] + [method(0, "clone") for _ in range(12)] + [save(12)]
    refused(document(*many), GraphLimitError, r"node %11 .*Limits\.max_total_elements = 200",
            limits=Limits(max_total_elements=200))
    refused(document(*many), GraphLimitError, r"node %4 .*execution 4 of this run, more than Limits\.max_ops = 3",
            limits=Limits(max_ops=3))
    refused(document(*many), GraphLimitError, r"max_work = 150", limits=Limits(max_work=150))


@pytest.mark.parametrize("field", ["max_elements_per_tensor", "max_total_elements", "max_work", "max_ops"])
def test_limits_must_be_positive_integers(field):
    with pytest.raises(GraphLimitError, match=f"Limits.{field} must be an integer >= 1, got 0"):
        Limits(**{field: 0})


# -- tensor constants as subjects (a session's earlier values) -----------------------------------

CONSTANT = {"dtype": "float32", "shape": [2, 10], "data": [float(v) for v in range(20)]}


def on_constant(node):
    """``node`` acting on tensor constant 0 instead of a node (as a session's later trace records it)."""
    node = dict(node)
    node["args"] = [{"tensor": 0}, *node["args"][1:]]
    return node


def test_a_tensor_constant_may_be_indexed_and_called_like_a_value():
    c = torch.arange(20, dtype=torch.float32).reshape(2, 10)
    doc = document(output(), on_constant(getitem(0, {"tuple": [{"slice": [None, None, None]}, -1]})),
                   on_constant(method(0, "sum", dim=0)), on_constant(getattr_(0, "T")),
                   {"op": "operator", "target": "add", "args": [ref(0), ref(2)]},
                   {"op": "set_output", "target": ["layer1", 0], "invoke": 0, "args": [ref(0), ref(4)]},
                   save(1), save(3), {"op": "output", "target": ["layer2", 0], "invoke": 0}, save(8))
    doc["tensors"] = [CONSTANT]
    net = make_net()
    saved = run(NNsight(net), from_dict(doc), X)
    with torch.no_grad():
        expected = net.layer2(torch.sigmoid(net.layer1(X) + c.sum(dim=0)))
    torch.testing.assert_close(saved[6], c[:, -1])
    torch.testing.assert_close(saved[7], c.T)
    torch.testing.assert_close(saved[9], expected)


@pytest.mark.parametrize("node, match", [
    (on_constant({"op": "setitem", "args": [ref(0), 0, 1.0]}), r"setitem acts on a node: expected"),
    (on_constant(save(0)), r"save acts on a node: expected"),
    (on_constant({"op": "backward", "args": [ref(0)]}), r"backward acts on a node: expected"),
    ({"op": "getitem", "args": [{"list": [1, 2]}, 0]}, r"getitem acts on a node or a tensor constant"),
    ({"op": "getitem", "args": ["text", 0]}, r"getitem acts on a node or a tensor constant"),
    ({"op": "call_method", "target": "sum", "args": [{"tuple": [1, 2]}]}, r"call_method acts on a node or a tensor"),
    ({"op": "getattr", "target": "shape", "args": [{"dtype": "float32"}]}, r"getattr acts on a node or a tensor"),
    (on_constant(method(0, "numpy")), r'"numpy" is not in nnsight_core.serialize.TENSOR_METHODS'),
    (on_constant(getattr_(0, "__class__")), r'"__class__" is not a public attribute name'),
], ids=["setitem", "save", "backward", "list", "string", "tuple-method", "dtype-attribute", "numpy", "dunder"])
def test_constants_other_than_tensors_are_refused_as_subjects(node, match):
    doc = document(output(), node)
    doc["tensors"] = [CONSTANT]
    with pytest.raises(GraphFormatError, match=match):
        from_dict(doc)


@pytest.mark.parametrize("tail, error, match", [
    ([on_constant(getattr_(0, "data"))], GraphAccessError, "reads the attribute 'data'"),
    ([on_constant(getattr_(0, "grad_fn"))], GraphAccessError, "reads the attribute 'grad_fn'"),
    ([on_constant(method(0, "repeat", 100, 100))], GraphLimitError, "a tensor of 200000 elements"),
    ([on_constant(method(0, "expand", 1000, 2, 10)), method(1, "contiguous")], GraphLimitError,
     r"node %2 .*a tensor of 20000 elements"),
    ([on_constant(method(0, "new_zeros", {"tuple": [10**6, 10**6]}))], GraphLimitError, "max_elements_per_tensor"),
    ([on_constant(getitem(0, {"tensor": 1}))], GraphLimitError, "a tensor of 10000 elements"),
], ids=["data", "grad_fn", "repeat", "expand-contiguous", "new_zeros", "advanced index"])
def test_a_tensor_constant_stays_under_the_guard_and_the_limits(tail, error, match):
    doc = document(output(), *tail)
    doc["nodes"].append(save(len(doc["nodes"]) - 1))
    doc["tensors"] = [CONSTANT, {"dtype": "int64", "shape": [1000], "data": [0] * 1000}]
    refused(doc, error, match, limits=SMALL)
