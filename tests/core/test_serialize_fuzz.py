"""Fuzzing the graph loader with hypothesis: whatever the input, it returns a Graph or raises
GraphFormatError, imports nothing and calls nothing while loading, and only ever builds nodes
from the closed vocabulary. Whatever it accepts writes back to the same document.

The number of examples each test ran is printed at the end of the module
("hypothesis fuzz examples: ..."), also when pytest captures output.
"""

import copy
import json
from collections import Counter
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnsight_core import Graph, GraphFormatError
from nnsight_core import serialize
from nnsight_core.serialize import (DTYPES, FUNCTIONS, OPERATORS, SERIALISABLE_OPS, TENSOR_METHODS, from_dict,
                                    from_json, to_dict)

from .test_serialize import ImportSentinel, every_op_graph, outcome

# 150 examples per test (100 where one costs more to generate) keep the module near 20 s on a
# slow, shared 2-core machine. No deadline: a slow example is not a failure here.
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HEAVY = settings(FUZZ, max_examples=100)
EXAMPLES = Counter()  # test bodies run, by kind of input
LOADS = Counter()  # loader calls (from_json or from_dict), by kind of input
LOADED = Counter()  # of those, how many returned a Graph

DANGEROUS = ["os.system", "builtins.eval", "builtins.exec", "__import__", "importlib.import_module",
             "torch.load", "torch.Tensor.type", "subprocess.Popen", "__class__", "__subclasses__",
             "__globals__", "f_globals", "apply_", "type", "eval", "exec", "system"]


@pytest.fixture(scope="module", autouse=True)
def report_examples(request):
    yield
    detail = ", ".join(f"{name}: {count} examples, {LOADS[name]} loads, {LOADED[name]} graphs"
                       for name, count in sorted(EXAMPLES.items()))
    line = (f"hypothesis fuzz examples: {sum(EXAMPLES.values())}; loader calls: {sum(LOADS.values())}, "
            f"{sum(LOADED.values())} of which returned a Graph ({detail})")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown even when pytest captures output
            reporter.write_line("")
            reporter.write_line(line)


def load_safely(load, document, test):
    """Load under the import sentinel and check the outcome; returns the Graph or None."""
    LOADS[test] += 1
    with ImportSentinel() as sentinel:
        result = outcome(load, document)
    assert sentinel.calls == [], f"loading ran code: {sentinel.calls}"
    if isinstance(result, GraphFormatError):
        assert str(result)
        return None
    assert type(result) is Graph, f"the loader returned {type(result).__name__}"
    LOADED[test] += 1
    check_graph(result)
    return result


def check_graph(graph):
    """A loaded graph holds only vocabulary ops and allow-listed callables, refers only
    backwards, stays within the limits, and writes back to an equal document."""
    allowed_functions = set(FUNCTIONS.values())
    for node in graph.nodes:
        assert node.op in SERIALISABLE_OPS
        assert all(dep.index < node.index for dep in node.deps)
        if node.op == "call_function":
            assert node.target in allowed_functions
        elif node.op == "call_method":
            assert node.target in TENSOR_METHODS
        elif node.op == "operator":
            assert node.target in OPERATORS
        elif node.op == "getattr":
            assert not node.target.startswith("_")
    assert len(graph.nodes) <= serialize.MAX_NODES
    document = to_dict(graph)
    assert to_dict(from_dict(document)) == document


# -- strategies -------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=25)


MAX_REFS = 8  # documents hold up to 6 nodes and 2 tensors; references reach past both


def tagged_values():
    """Values in the document's notation, valid or nearly so: node references that may point
    forward, at themselves or out of range; tags with wrong payloads; untagged junk."""
    leaves = st.one_of(
        json_scalars,
        st.builds(lambda i: {"node": i}, st.integers(-2, MAX_REFS)),
        st.builds(lambda i: {"tensor": i}, st.integers(-1, 3)),
        st.builds(lambda d: {"dtype": d}, st.sampled_from(sorted(DTYPES) + ["complex64", "torch.float32"])),
        st.builds(lambda d: {"device": d}, st.sampled_from(["cpu", "cuda:0", "meta", "cuda; rm", "tpu"])),
        st.builds(lambda f: {"float": f}, st.sampled_from(["nan", "inf", "-inf", "1.0", "NaN"])),
        st.builds(lambda s: {"size": s}, st.lists(st.integers(-1, 4), max_size=4)),
        st.just({"ellipsis": None}),
        st.builds(lambda k, v: {k: v}, st.sampled_from(DANGEROUS + ["lambda", "code", "pickle"]), json_scalars),
    )

    def containers(inner):
        return st.one_of(
            st.builds(lambda xs: {"tuple": xs}, st.lists(inner, max_size=3)),
            st.builds(lambda xs: {"list": xs}, st.lists(inner, max_size=3)),
            st.builds(lambda xs: {"slice": xs}, st.lists(inner, min_size=2, max_size=4)),
            st.builds(lambda ps: {"dict": ps}, st.lists(st.tuples(json_scalars, inner).map(list), max_size=3)),
            st.lists(inner, max_size=3),
        )

    return st.recursive(leaves, containers, max_leaves=6)


TAGGED = tagged_values()
TARGETS = st.one_of(
    st.none(),
    st.sampled_from(sorted(OPERATORS) + sorted(FUNCTIONS)[:40] + ["sum", "abs", "shape", "to", "layer1",
                                                                   "layer2", "", "t"] + DANGEROUS),
    st.tuples(st.sampled_from(["layer1", "act", "layer2", "", "layer1.__class__", "a..b", "x y"]),
              st.integers(-1, 2)).map(list),
    json_scalars,
)
# A node: "op" plus any of its other fields, and now and then an unknown key.
NODES = st.builds(
    lambda op, fields, extra: {"op": op, **fields, **extra},
    st.sampled_from(sorted(SERIALISABLE_OPS) + ["exec", "import", "call", "apply"]),
    st.fixed_dictionaries({}, optional={"target": TARGETS, "args": st.lists(TAGGED, max_size=3),
                                        "kwargs": st.dictionaries(st.text(max_size=5), TAGGED, max_size=2),
                                        "invoke": st.one_of(st.none(), st.integers(-1, 2), json_scalars)}),
    st.dictionaries(st.sampled_from(["code", "where", "value"]), json_scalars, max_size=1),
)
TENSORS = st.fixed_dictionaries({
    "dtype": st.sampled_from(sorted(DTYPES) + ["complex64"]),
    "shape": st.lists(st.integers(-1, 3), max_size=3),
    "data": st.lists(st.one_of(st.integers(-300, 300), st.floats(allow_nan=False, allow_infinity=False),
                               st.booleans(), st.sampled_from(["nan", "inf", "-inf", "x"])), max_size=9),
})
# Whole documents: the right header (mostly), random but plausible nodes and tensors.
DOCUMENTS = st.builds(
    lambda rows, tensors, nodes, extra: {"format": "nnsight_core.graph", "version": 2, "rows": rows,
                                         "tensors": tensors, "nodes": nodes, **extra},
    st.sampled_from([[], [[0, 1]], [[0, 2], [2, 3]], [[0, 0]], [[1, 2]]]),
    st.lists(TENSORS, max_size=2),
    st.lists(NODES, max_size=6),
    st.dictionaries(st.sampled_from(["format", "version", "rows", "tensors", "nodes", "extra"]), json_values,
                    max_size=1),
)


# -- valid documents: random programs of the vocabulary --------------------------------------

finite_scalars = (st.none() | st.booleans() | st.integers(-2**40, 2**40)
                  | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
VALID_LEAVES = st.one_of(
    finite_scalars,
    st.builds(lambda k: {"node": k}, st.integers(0, 50)),      # made to point backwards below
    st.builds(lambda k: {"tensor": k}, st.integers(0, 50)),    # made to point into tensors below
    st.builds(lambda d: {"dtype": d}, st.sampled_from(sorted(DTYPES))),
    st.builds(lambda d: {"device": d}, st.sampled_from(["cpu", "cuda:1", "meta", "mps"])),
    st.builds(lambda f: {"float": f}, st.sampled_from(["nan", "inf", "-inf"])),
    st.builds(lambda s: {"size": s}, st.lists(st.integers(0, 4), max_size=3)),
    st.just({"ellipsis": None}),
)
VALID_VALUES = st.recursive(VALID_LEAVES, lambda inner: st.one_of(
    st.builds(lambda xs: {"tuple": xs}, st.lists(inner, max_size=3)),
    st.builds(lambda xs: {"list": xs}, st.lists(inner, max_size=3)),
    st.builds(lambda xs: {"slice": xs}, st.lists(inner, min_size=3, max_size=3)),
    st.builds(lambda d: {"dict": [[k, v] for k, v in d.items()]},
              st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-5, 5)), inner, max_size=3)),
), max_leaves=6)
ELEMENTS = {name: (st.booleans() if name == "bool" else
                   st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=16),
                             st.sampled_from(["nan", "inf", "-inf"])) if DTYPES[name].is_floating_point else
                   st.integers(torch.iinfo(DTYPES[name]).min, torch.iinfo(DTYPES[name]).max))
            for name in DTYPES}


@st.composite
def valid_tensor(draw):
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    count = 1
    for size in shape:
        count *= size
    return {"dtype": dtype, "shape": shape, "data": draw(st.lists(ELEMENTS[dtype], min_size=count, max_size=count))}


def fix_references(value, nodes, tensors):
    """Point every {"node": k} at an earlier node and every {"tensor": k} at a tensor."""
    if isinstance(value, list):
        return [fix_references(v, nodes, tensors) for v in value]
    if isinstance(value, dict):
        if set(value) == {"node"}:
            return {"node": value["node"] % nodes}
        if set(value) == {"tensor"}:
            return {"tensor": value["tensor"] % tensors} if tensors else 0
        return {k: fix_references(v, nodes, tensors) for k, v in value.items()}
    return value


PATHS = ["layer1", "act", "layer2", "", "block.0.mlp"]
CALLS = st.one_of(st.integers(0, 3), st.just({"iteration": 0}))  # documents have one iteration
NODE_TEMPLATES = st.one_of(
    st.builds(lambda p, c, i: {"op": "output", "target": [p, c], "invoke": i},
              st.sampled_from(PATHS), CALLS, st.integers(0, 1)),
    st.builds(lambda p, c, i: {"op": "inputs", "target": [p, c], "invoke": i},
              st.sampled_from(PATHS), CALLS, st.integers(0, 1)),
    st.builds(lambda name, other: {"op": "operator", "target": name,
                                   "args": [{"node": 0}] if OPERATORS[name] == 1 else [{"node": 0}, other]},
              st.sampled_from(sorted(OPERATORS)), VALID_VALUES),
    st.builds(lambda index: {"op": "getitem", "args": [{"node": 0}, index]}, VALID_VALUES),
    st.builds(lambda index, new: {"op": "setitem", "args": [{"node": 0}, index, new]}, VALID_VALUES, VALID_VALUES),
    st.builds(lambda name: {"op": "getattr", "target": name, "args": [{"node": 0}]},
              st.sampled_from(["shape", "dtype", "T", "logits", "last_hidden_state", "grad"])),
    st.builds(lambda name, args, kwargs: {"op": "call_method", "target": name, "args": [{"node": 0}, *args],
                                          "kwargs": kwargs},
              st.sampled_from(sorted(TENSOR_METHODS)), st.lists(VALID_VALUES, max_size=2),
              st.dictionaries(st.sampled_from(["dim", "keepdim", "dtype"]), VALID_VALUES, max_size=2)),
    st.builds(lambda name, args, kwargs: {"op": "call_function", "target": name, "args": args, "kwargs": kwargs},
              st.sampled_from(sorted(FUNCTIONS)), st.lists(VALID_VALUES, max_size=3),
              st.dictionaries(st.sampled_from(["dim", "input", "out_dtype"]), VALID_VALUES, max_size=2)),
    st.builds(lambda path, args: {"op": "call_module", "target": path, "args": args},
              st.sampled_from(PATHS), st.lists(VALID_VALUES, max_size=2)),
    st.just({"op": "save", "args": [{"node": 0}]}),
    st.just({"op": "grad", "args": [{"node": 0}]}),
    st.builds(lambda kwargs: {"op": "backward", "args": [{"node": 0}], "kwargs": kwargs},
              st.dictionaries(st.sampled_from(["retain_graph", "gradient"]), VALID_VALUES, max_size=1)),
    st.builds(lambda refs: {"op": "stop", "args": refs},
              st.lists(st.builds(lambda k: {"node": k}, st.integers(0, 50)), max_size=3)),
)


@st.composite
def valid_documents(draw):
    """A valid document of up to 12 random nodes, built without the library's help."""
    tensors = draw(st.lists(valid_tensor(), max_size=3))
    nodes = [{"op": "output", "target": ["layer1", 0], "invoke": 0}]
    for index in range(1, draw(st.integers(1, 12))):
        node = fix_references(draw(NODE_TEMPLATES), index, len(tensors))
        if node["op"] in ("output", "inputs") or draw(st.booleans()):
            node.setdefault("invoke", draw(st.integers(0, 1)))
        on_node = ("getitem", "setitem", "getattr", "call_method", "save", "grad", "backward")
        if node.get("args") and node["op"] in on_node and "node" not in node["args"][0]:
            node["args"][0] = {"node": 0}
        nodes.append(node)
        edit = {"output": "set_output", "grad": "set_grad"}.get(node["op"])
        if edit and draw(st.booleans()):  # and an edit of it
            nodes.append({"op": edit, **{k: node[k] for k in ("target", "invoke") if k in node},
                          "args": [{"node": index}, fix_references(draw(VALID_VALUES), index, len(tensors))]})
            break
    iterations = draw(st.sampled_from([[[0, None, 1]], [[1, 3, 1]], [[2, None, 2]]]))
    return {"format": "nnsight_core.graph", "version": 2, "rows": [[0, 1], [1, 3]], "iterations": iterations,
            "tensors": tensors, "nodes": nodes}


BASE = None


def base_document():
    """A valid document using every op and a tensor constant (built once)."""
    global BASE
    if BASE is None:
        graph = every_op_graph()
        graph.create_node("call_function", torch.add, (graph.nodes[-1], torch.tensor([1.0, float("nan")])),
                          {"alpha": (slice(None, 2), Ellipsis, {"k": torch.float16})})
        BASE = to_dict(graph)
    return copy.deepcopy(BASE)


def paths(value, prefix=()):
    """Every path (a tuple of keys and indices) inside a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from paths(inner, prefix + (index,))


# -- tests -------------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_malformed_text(text):
    EXAMPLES['malformed text'] += 1
    load_safely(from_json, text, "malformed text")


@FUZZ
@given(json_values)
def test_random_json_values(value):
    EXAMPLES['random JSON values'] += 1
    load_safely(from_dict, value, "random JSON values")
    load_safely(from_json, json.dumps(value), "random JSON values")


@HEAVY
@given(valid_documents())
def test_random_valid_documents_load_and_round_trip(document):
    EXAMPLES['valid documents'] += 1
    graph = load_safely(from_dict, document, "valid documents")
    assert graph is not None, outcome(from_dict, document)
    assert len(graph.nodes) == len(document["nodes"])
    assert load_safely(from_json, json.dumps(document), "valid documents") is not None


@HEAVY
@given(valid_documents(), st.data())
def test_mutated_random_valid_documents(document, data):
    EXAMPLES['mutated valid documents'] += 1
    path = data.draw(st.sampled_from(list(paths(document))[1:]))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = data.draw(st.one_of(json_values, st.sampled_from(DANGEROUS),
                                           st.builds(lambda k: {"node": k}, st.integers(-1, 14))))
    load_safely(from_dict, document, "mutated valid documents")


@HEAVY
@given(DOCUMENTS)
def test_random_documents_with_unknown_ops_and_cyclic_references(document):
    EXAMPLES['random documents'] += 1
    load_safely(from_dict, document, "random documents")


@FUZZ
@given(st.data())
def test_mutated_valid_documents(data):
    EXAMPLES['mutated documents'] += 1
    document = base_document()
    assert load_safely(from_dict, copy.deepcopy(document), "mutated documents") is not None
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(paths(document))[1:]))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = data.draw(st.sampled_from(["replace", "delete", "add key", "node ref", "dangerous"]))
        if action == "replace":
            parent[key] = data.draw(json_values)
        elif action == "delete":
            del parent[key]
        elif action == "add key" and isinstance(parent[key], dict):
            parent[key][data.draw(st.text(max_size=6))] = data.draw(json_scalars)
        elif action == "node ref":
            parent[key] = {"node": data.draw(st.integers(-1, 40))}
        else:
            parent[key] = data.draw(st.sampled_from(DANGEROUS))
    load_safely(from_dict, document, "mutated documents")
    load_safely(from_json, json.dumps(document), "mutated documents")


@FUZZ
@given(st.data())
def test_mutated_valid_text(data):
    EXAMPLES['mutated text'] += 1
    text = json.dumps(base_document())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        end = at + data.draw(st.integers(0, 4))
        text = text[:at] + data.draw(st.text(alphabet='{}[]",:0123456789-.eE ntrufalsNI\\', max_size=4)) + text[end:]
    load_safely(from_json, text, "mutated text")


@HEAVY
@given(DOCUMENTS, st.integers(0, 3))
def test_oversized_documents_hit_the_limits(document, scale):
    EXAMPLES['oversized documents'] += 1
    # Small limits, so that generated documents cross them; loaded graphs must respect them.
    limits = {"MAX_NODES": 1 + scale, "MAX_DEPTH": scale, "MAX_TENSOR_ELEMENTS": 2 + scale,
              "MAX_TENSOR_DIMS": 1 + scale, "MAX_DOCUMENT_CHARS": 300 * (scale + 1)}
    with mock.patch.multiple(serialize, **limits):
        graph = load_safely(from_json, json.dumps(document), "oversized documents")
        if graph is not None:
            assert len(graph.nodes) <= limits["MAX_NODES"]
            for node in graph.nodes:
                for value in list(node.args) + list(node.kwargs.values()):
                    if isinstance(value, torch.Tensor):
                        assert value.numel() <= limits["MAX_TENSOR_ELEMENTS"]
                        assert value.dim() <= limits["MAX_TENSOR_DIMS"]


@FUZZ
@given(st.integers(2, 2_000), st.sampled_from(["tuple", "list", "raw list", "raw dict"]))
def test_deep_nesting_never_recurses_unbounded(depth, kind):
    EXAMPLES['deep nesting'] += 1
    inner = 0
    for _ in range(depth):
        inner = {"tuple": [inner]} if kind == "tuple" else {"list": [inner]} if kind == "list" else (
            [inner] if kind == "raw list" else {"a": inner})
    document = {"format": "nnsight_core.graph", "version": 2, "rows": [[0, 1]],
                "nodes": [{"op": "output", "target": ["layer1", 0], "invoke": 0},
                          {"op": "call_function", "target": "torch.sum", "args": [{"node": 0}, inner]}]}
    graph = load_safely(from_dict, document, "deep nesting")
    assert (graph is not None) == (depth <= serialize.MAX_DEPTH and kind in ("tuple", "list"))
    try:
        text = json.dumps(document)
    except RecursionError:  # json.dumps's own limit; the text form cannot be written here
        return
    load_safely(from_json, text, "deep nesting")


def test_self_containing_python_values_are_refused():
    EXAMPLES["self-containing values"] += 2
    LOADS["self-containing values"] += 2
    loop = {"tuple": []}
    loop["tuple"].append(loop)
    knot = {"dict": []}
    knot["dict"].append(["key", knot])
    for value in (loop, knot):
        document = {"format": "nnsight_core.graph", "version": 2, "rows": [],
                    "nodes": [{"op": "call_function", "target": "torch.sum", "args": [value]}]}
        with pytest.raises(GraphFormatError, match="MAX_DEPTH"):
            from_dict(document)


def test_dangerous_names_are_never_resolved():
    # Every place a document names a Python object: op, function, method, attribute, operator.
    # (A module path names modules of the user's model, looked up in its module tree only.)
    for name in DANGEROUS:
        for op in ("call_function", "call_method", "getattr", "operator", name):
            EXAMPLES["dangerous names"] += 1
            LOADS["dangerous names"] += 1
            document = {"format": "nnsight_core.graph", "version": 2, "rows": [[0, 1]],
                        "nodes": [{"op": "output", "target": ["layer1", 0], "invoke": 0},
                                  {"op": op, "target": name, "args": [{"node": 0}]}]}
            with ImportSentinel() as sentinel:
                result = outcome(from_json, json.dumps(document))
            assert sentinel.calls == []
            if op == "getattr" and name.isidentifier() and not name.startswith("_") and name != "f_globals":
                LOADED["dangerous names"] += 1
                # Reading a public attribute of a module value is allowed; the name stays a
                # string and nothing can call what it reads (methods come from TENSOR_METHODS).
                assert result.nodes[1].target == name
            else:
                assert isinstance(result, GraphFormatError), (op, name)
