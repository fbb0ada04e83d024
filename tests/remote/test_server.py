"""ModelServer in-process (no Ray): the whole request is validated before anything runs, each limit
raises its own error, and the errors survive the trip to the client as the same class and message."""

from __future__ import annotations

import json
import re

import pytest
import torch
from nnsight_torch import NNsight

from nnsight_core.errors import (EnvoyAttributeError, GenerationLengthError, GraphAccessError,
                                 GraphFormatError, GraphLimitError, InputError, MissedCallError,
                                 ModelKeyError, NodeLimitError, RemoteError, RequestSizeError,
                                 RequestTimeoutError, SavedBytesError, VersionSkewError)
from nnsight_core.serialize import VERSION as GRAPH_SCHEMA, Limits
from nnsight_remote import ModelServer, ServerLimits
from nnsight_remote import wire
from nnsight_remote.client import build_request, remote_exception
from nnsight_remote.server import parse_error
from nnsight_remote.testing import Slow, mlp


class Counting(torch.nn.Module):
    """The MLP, counting its forward passes (to prove a refused request ran nothing)."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


class InProcess:
    """A backend that hands the request body straight to a ModelServer."""

    def __init__(self, server):
        self.server = server
        self.bodies = []

    def __call__(self, runner, keep):
        body = build_request(runner, self.server.key, keep)
        self.bodies.append(body)
        for kind, payload in self.server.handle(body):
            if kind == b"E":
                raise remote_exception(*parse_error(payload), graph=runner.graph)
            if kind == b"R":
                header, tensors = wire.unpack(payload, "response")
                state = runner.trace_state
                state.values = {i: wire.decode_value(v, tensors) for i, v in header["values"]}
                state.ran = [c == "1" for c in header["ran"]]
        return None


def setup(limits=None, module=None):
    module = module or Counting()
    server = ModelServer(NNsight(module), "net", limits or ServerLimits())
    return module, InProcess(server), NNsight(Counting())


def raises_remotely(backend, client, record, error):
    with pytest.raises(error) as info:
        with client.trace(torch.ones(1, 5), backend=backend):
            record(client)
    return info.value


def test_a_runtime_error_arrives_as_the_same_class_and_message():
    module, backend, client = setup()

    def record(model):
        model.net.layer1.next().output.save()    # a second call of layer1 never happens

    remote = raises_remotely(backend, client, record, MissedCallError)
    local_model = NNsight(Counting())
    with pytest.raises(MissedCallError) as local:
        with local_model.trace(torch.ones(1, 5)):
            record(local_model)
    first_line = str(local.value).split(" (recorded at")[0]
    assert str(remote).startswith(first_line.split(":")[0])
    assert "net.layer1" in str(remote)


def test_shape_errors_are_caught_locally_before_anything_is_sent():
    _, backend, client = setup()
    with pytest.raises(Exception):
        with client.trace(torch.ones(1, 5), backend=backend):
            client.net.layer1.output[:] = torch.ones(3, 3)
    assert backend.bodies == []


def test_refused_requests_run_nothing():
    module, backend, client = setup(ServerLimits(allowed_kwargs=frozenset()))
    with pytest.raises(InputError, match="does not pass the keyword argument"):
        with client.trace(torch.ones(1, 5), backend=backend, unknown_option=1):
            client.net.layer1.output.save()
    assert module.calls == 0


def test_a_module_the_server_lacks_is_refused_before_running():
    module, backend, _ = setup()
    other = NNsight(torch.nn.Sequential(torch.nn.Linear(5, 5)))
    with pytest.raises(EnvoyAttributeError, match="does not have"):
        with other.trace(torch.ones(1, 5), backend=backend):
            other[0].output.save()
    assert module.calls == 0


def test_node_limit():
    _, backend, client = setup(ServerLimits(max_nodes=20))
    with pytest.raises(NodeLimitError, match="limit of 20"):
        with client.trace(torch.ones(1, 5), backend=backend):
            h = client.net.layer1.output
            for _ in range(30):
                h = h + 1
            h.save()


def test_body_limit():
    _, backend, client = setup(ServerLimits(max_body_bytes=10_000))
    with pytest.raises(RequestSizeError, match="10000"):
        with client.trace(torch.ones(1000, 5), backend=backend):
            client.net.layer1.output.save()


def test_saved_bytes_limit():
    _, backend, client = setup(ServerLimits(max_saved_bytes=1000))
    with pytest.raises(SavedBytesError, match="1000"):
        with client.trace(torch.ones(100, 5), backend=backend):
            client.net.layer1.output.save()       # 100 x 10 float32 = 4000 bytes


def test_wall_time_limit_cancels_the_run_and_the_model_keeps_serving():
    module = Slow(steps=100, pause=0.02)
    server = ModelServer(NNsight(module), "slow", ServerLimits(max_seconds=0.3,
                                                               allowed_kwargs=frozenset({"steps"})))
    backend, client = InProcess(server), NNsight(Slow(steps=100, pause=0.02))
    with pytest.raises(RequestTimeoutError, match="0.3 s"):
        with client.trace(torch.ones(1, 4), backend=backend):
            client.step.output.save()
    with client.trace(torch.ones(1, 4), backend=backend, steps=2):
        out = client.output.save()
    torch.testing.assert_close(out.value, module.step(module.step(torch.ones(1, 4))))
    assert not module.step._forward_hooks and not module.step._forward_pre_hooks


def test_generation_length_needs_a_bound():
    server = ModelServer(NNsight(mlp()), "net", ServerLimits(max_new_tokens=4))
    request = server.validate  # max_new_tokens is checked whenever it is given
    client = NNsight(mlp())
    with client.trace(torch.ones(1, 5), backend=lambda runner, keep: None) as tracer:
        client.layer1.output.save()
    header, tensors = wire.unpack(build_request(tracer, "net", False))
    body = wire.pack(dict(header, kwargs={"max_new_tokens": 5}), tensors)
    with pytest.raises(GenerationLengthError, match="1 <= N <= 4"):
        request(body)


def test_version_skew_names_both_versions():
    server = ModelServer(NNsight(mlp()), "net")
    client = NNsight(mlp())
    with client.trace(torch.ones(1, 5), backend=lambda runner, keep: None) as tracer:
        client.layer1.output.save()
    header, tensors = wire.unpack(build_request(tracer, "net", False))
    header["client"]["graph_schema"] = 99
    with pytest.raises(VersionSkewError, match=f"graph schema 99.*graph schema {GRAPH_SCHEMA}"):
        server.validate(wire.pack(header, tensors))
    body = bytearray(build_request(tracer, "net", False))
    body[4] = 7                                   # protocol 7
    with pytest.raises(VersionSkewError, match=f"protocol 7.*protocol {wire.PROTOCOL}"):
        server.validate(bytes(body))


def test_a_request_for_another_model_is_refused():
    server = ModelServer(NNsight(mlp()), "net")
    client = NNsight(mlp())
    with client.trace(torch.ones(1, 5), backend=lambda runner, keep: None) as tracer:
        client.layer1.output.save()
    with pytest.raises(ModelKeyError, match="'other'"):
        server.validate(build_request(tracer, "other", False))


@pytest.mark.parametrize("record, error", [
    (lambda m: m.net.layer1.output.grad_fn.save(), GraphAccessError),
    (lambda m: m.net.layer1.output.grad_fn.next_functions.save(), GraphAccessError),
    (lambda m: m.net.layer1.inputs[1].save(), None),                      # kwargs dict: data only
    (lambda m: m.net.layer1.output.shape.numel().save(), GraphAccessError),   # a method on a torch.Size
    (lambda m: m.net.layer1.output.new_zeros(10**12).save(), GraphLimitError),
    (lambda m: m.net.layer1.output.repeat(10**6, 10**6).save(), GraphLimitError),
    (lambda m: m.net.layer1.output.expand(10**6, 10**6, 10).contiguous().save(), GraphLimitError),
], ids=["grad_fn", "next_functions", "kwargs", "method-on-size", "zeros", "repeat", "expand"])
def test_escape_routes_are_refused_and_the_model_keeps_serving(record, error):
    module, backend, client = setup()
    module_hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())  # noqa: E731
    if error is None:
        with client.trace(torch.ones(1, 5), backend=backend, scan=False):
            value = record(client)
        assert value.value == {}
    else:
        with pytest.raises(error):
            with client.trace(torch.ones(1, 5), backend=backend, scan=False):
                record(client)
    assert module_hooks() == 0
    with client.trace(torch.ones(1, 5), backend=backend):
        out = client.output.save()
    torch.testing.assert_close(out.value, module.net(torch.ones(1, 5)))


def test_unknown_server_errors_become_remote_errors():
    error = remote_exception("SomethingElse", "boom")
    assert type(error) is RemoteError and "SomethingElse: boom" in str(error)
    assert type(remote_exception("GraphFormatError", "bad")) is GraphFormatError
    assert type(remote_exception("__import__", "x")) is RemoteError


def test_error_payloads_name_the_class():
    name, message = parse_error(json.dumps({"error": {"type": "InputError", "message": "m"}}).encode())
    assert (name, message) == ("InputError", "m")
    assert parse_error(b"<html>")[0] == "RemoteError"


def test_graph_limits_apply():
    _, backend, client = setup(ServerLimits(graph=Limits(max_elements_per_tensor=50)))
    with pytest.raises(GraphLimitError, match="max_elements_per_tensor = 50"):
        with client.trace(torch.ones(1, 5), backend=backend):
            (client.net.layer1.output.repeat(10, 1)).save()


def test_wire_values_round_trip():
    generator = torch.Generator().manual_seed(3)
    value = {"a": (1, 2.5, float("nan"), "s", None, True), "t": torch.arange(6).reshape(2, 3),
             "view": torch.arange(6)[2:4], "size": torch.Size([2, 3]), "dtype": torch.float16,
             "device": torch.device("cpu"), "g": generator, "max": torch.ones(2, 2).max(dim=0)}
    tensors = {}
    encoded = wire.encode_value(value, tensors)
    header, blobs = wire.unpack(wire.pack({"v": encoded}, tensors))
    back = wire.decode_value(header["v"], blobs)
    assert back["a"][:2] == (1, 2.5) and back["a"][3:] == ("s", None, True)
    assert torch.equal(back["t"], value["t"]) and torch.equal(back["view"], value["view"])
    assert back["size"] == value["size"] and back["dtype"] is torch.float16
    assert torch.equal(back["g"].get_state(), generator.get_state())
    assert type(back["max"]) is type(value["max"])


@pytest.mark.parametrize("value", [lambda: None, object(), {1.5: 2}, torch.nn.Linear(1, 1)])
def test_values_without_a_wire_form_are_refused(value):
    with pytest.raises(wire.Unencodable):
        wire.encode_value(value, {})


# -- configuration errors -----------------------------------------------------------------------


def test_remote_without_a_plugin_for_the_name_is_a_clear_error():
    from nnsight_core.errors import AdapterNotFoundError
    with pytest.raises(AdapterNotFoundError, match="no installed plugin provides a 'elsewhere' backend"):
        NNsight(mlp()).find_backend("elsewhere")


def test_remote_true_without_a_url_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("NNSIGHT_REMOTE_URL", raising=False)
    model = NNsight(mlp())
    with pytest.raises(RemoteError, match="NNSIGHT_REMOTE_URL"):
        model.trace(torch.ones(1, 5), remote=True)


def test_an_unreachable_server_is_a_remote_error():
    from nnsight_remote import RemoteBackend
    model = NNsight(mlp())
    with pytest.raises(RemoteError, match="cannot reach the nnsight-remote server at http://127.0.0.1:9"):
        with model.trace(torch.ones(1, 5), backend=RemoteBackend("http://127.0.0.1:9", model="mlp", timeout=5)):
            model.output.save()


def test_no_auth_is_refused_off_loopback():
    from nnsight_remote.serve import parse_model, start
    with pytest.raises(InputError, match="loopback address only"):
        start([parse_model("mlp=nnsight_remote.testing:mlp")], host="0.0.0.0", keys=None)


def test_a_malformed_key_file_names_the_line(tmp_path):
    from nnsight_remote.auth import KeyStore, add_key
    path = tmp_path / "keys"
    key = add_key(str(path), "alice")
    assert KeyStore.load(str(path)).check(key) == "alice" and key not in path.read_text()
    path.write_text(path.read_text() + "bob plaintext-key\n")
    with pytest.raises(InputError, match="keys:2: expected `NAME sha256:HEX`"):
        KeyStore.load(str(path))


def test_the_server_runs_with_the_clients_grad_mode():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return self.net(x)

    server = ModelServer(NNsight(Probe()), "net")
    backend, client = InProcess(server), NNsight(Probe())
    with torch.no_grad(), client.trace(torch.ones(1, 5), backend=backend):
        client.output.save()
    with client.trace(torch.ones(1, 5), backend=backend):
        client.output.save()
    assert seen == [False, True]


@pytest.mark.parametrize("kwargs, match", [
    ({"num_images_per_prompt": 10**6}, "num_images_per_prompt=1000000 is outside"),
    ({"height": -1}, "height=-1 is outside"),
])
def test_keyword_arguments_that_multiply_the_work_are_bounded(kwargs, match):
    module, backend, client = setup(ServerLimits(allowed_kwargs=frozenset(kwargs)))
    with pytest.raises(InputError, match=match):
        with client.trace(torch.ones(1, 5), backend=backend, **kwargs):
            client.output.save()
    assert module.calls == 0


def test_invoke_keyword_arguments_are_an_allow_list(tmp_path):
    from nnsight_transformers import LanguageModel
    from tests.helpers import save_tiny_lms
    folder = save_tiny_lms(tmp_path)["gpt2"]
    server = ModelServer(LanguageModel(folder), folder)
    client = LanguageModel(folder)
    with pytest.raises(InputError, match=r"invoke 0's keyword argument\(s\) \['padding'\]"):
        with client.trace(backend=InProcess(server)) as tracer:
            with tracer.invoke("Paris", padding="max_length", max_length=8):
                client.lm_head.output.save()
    with client.trace(backend=InProcess(server)) as tracer:
        with tracer.invoke("Paris is the city of", truncation=True, max_length=2):
            ids = client.transformer.wte.input.save()
    assert ids.value.shape == (1, 2)


# -- inside forwards (.source) ------------------------------------------------------------------


class Lookup(torch.nn.Module):
    """Looks its activation up by name, as some model code does: ``act = getattr(torch, name)``."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.name = "sigmoid"
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        act = getattr(torch, self.name)
        return act(self.net(x))


def _mutated(backend, tracer, mutate):
    header, tensors = wire.unpack(build_request(tracer, backend.server.key, False))
    mutate(header)
    return wire.pack(header, tensors)


def test_call_sites_run_remotely_as_locally():
    server = ModelServer(NNsight(Lookup()), "net")
    backend, client, local = InProcess(server), NNsight(Lookup()), NNsight(Lookup())
    x = torch.rand(2, 5, generator=torch.Generator().manual_seed(0))
    values = []
    for model, run_on in ((local, None), (client, backend)):
        with model.trace(x, backend=run_on):
            model.source.act_0.input = model.source.act_0.input * 2
            values.append(model.output.save())
    module = Lookup()
    torch.testing.assert_close(values[1].value, torch.sigmoid(module.net(x) * 2))
    torch.testing.assert_close(values[1].value, values[0].value)


@pytest.mark.parametrize("path, match", [
    ("source.nope_0", r"source.nope_0 does not exist: the forward of model \(.*Lookup.forward\) has the call "
                      r"sites getattr_0, act_0, net_0"),
    ("net.layer1.source.linear_1", r"net.layer1.source.linear_1 does not exist"),
    ("source.net_0.source.linear_0", r"source.net_0.source: this call site calls a module \(Sequential\)"),
], ids=["missing", "missing-in-submodule", "module-callee"])
def test_call_sites_the_model_lacks_are_refused_before_running(path, match):
    from nnsight_core.errors import SourceError
    module = Lookup()
    server = ModelServer(NNsight(module), "net", ServerLimits(max_source_depth=2))
    client = NNsight(Lookup())
    with client.trace(torch.ones(1, 5), backend=lambda runner, keep: None) as tracer:
        client.source.act_0.output.save()
    body = _mutated(InProcess(server), tracer, lambda h: h["graph"]["nodes"][0]["target"].__setitem__(0, path))
    frames = list(server.handle(body))
    assert frames[-1][0] == b"E"
    name, message = parse_error(frames[-1][1])
    assert name == SourceError.__name__ and re.search(match, message), message
    assert module.calls == 0


def test_call_sites_deeper_than_the_server_allows_are_refused(tmp_path):
    from nnsight_transformers import LanguageModel
    from tests.helpers import look_inside_attention, save_tiny_lms
    folder = save_tiny_lms(tmp_path)["llama"]
    server = ModelServer(LanguageModel(folder), folder)                  # max_source_depth=1
    client = LanguageModel(folder)
    look_inside_attention(server.model)                                  # learns what attention_interface is
    attn = client.model.layers[0].self_attn
    with pytest.raises(GraphAccessError, match=r"2 level\(s\) deep inside forwards .*allows 1.*--max-source-depth"):
        with client.trace("Paris", backend=InProcess(server)):
            attn.source.attention_interface_0.source.scaled_dot_product_attention_0.output.save()
    with client.trace("Paris", backend=InProcess(server)):
        query = attn.source.q_proj_0.output.save()
    assert query.value.shape[-1] == 32
    # A config reaches the graph as a call site's input: it is opaque, and does not travel back.
    with client.trace("Paris", backend=InProcess(server)):
        config = client.model.source.create_causal_mask_0.inputs[1]["config"].save()
    assert config.value is None
    with pytest.raises(GraphAccessError, match="reads the attribute 'vocab_size' of a .*LlamaConfig"):
        with client.trace("Paris", backend=InProcess(server), scan=False):
            client.model.source.create_causal_mask_0.inputs[1]["config"].vocab_size.save()


# An edit hands the model only data, or parts of the value it replaces: a string (a name the model's
# code looks up) or an object read at another hook point (a module, a function) is refused.
@pytest.mark.parametrize("record, match", [
    (lambda m: setattr(m.source.getattr_0, "inputs", ((m.source.getattr_0.inputs[0][0], "save"), {})),
     "assigns a str"),
    (lambda m: setattr(m.source.getattr_0, "output", m.source.getattr_0.inputs[0][0]), "assigns a module"),
    (lambda m: setattr(m.source.act_0, "inputs", ((m.source.getattr_0.output,), {})), "assigns a builtin"),
    (lambda m: m.net.layer1.inputs[1].__setitem__("extra", "text"), "stores a str"),
    (lambda m: m.net.layer2.skip((m.net.layer1.output, m.source.getattr_0.inputs[0][0])), "assigns a module"),
], ids=["new-name", "object-as-output", "function-as-input", "string-into-kwargs", "object-as-skip"])
def test_edits_hand_the_model_data_only(record, match):
    module = Lookup()
    server = ModelServer(NNsight(module), "net")
    client = NNsight(Lookup())
    with pytest.raises(GraphAccessError, match=match):
        with client.trace(torch.ones(1, 5), backend=InProcess(server), scan=False):
            record(client)
    assert module.name == "sigmoid" and sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
                                            for m in module.modules()) == 0
    with client.trace(torch.ones(1, 5), backend=InProcess(server)):
        out = client.output.save()
    torch.testing.assert_close(out.value, torch.sigmoid(module.net(torch.ones(1, 5))))


def test_the_new_name_route_is_real_when_unguarded():
    module = Lookup()
    model = NNsight(module)
    with model.trace(torch.ones(1, 5)):                 # a local trace: the model calls what the graph names
        model.source.getattr_0.inputs = ((model.source.getattr_0.inputs[0][0], "relu"), {})
        out = model.output.save()
    torch.testing.assert_close(out.value, torch.relu(module.net(torch.ones(1, 5))))



def test_a_sessions_constants_travel_as_safetensors_and_are_checked():
    server = ModelServer(NNsight(mlp()), "net")
    client = NNsight(mlp())
    hidden = torch.rand(1, 10, generator=torch.Generator().manual_seed(2))
    with client.trace(torch.ones(1, 5), backend=lambda runner, keep: None) as tracer:
        client.layer1.output = hidden                              # a tensor constant of the graph
        out = client.output.save()
    body = build_request(tracer, "net", False)
    header, tensors = wire.unpack(body)
    assert header["graph"]["tensors"] == [{"dtype": "float32", "shape": [1, 10], "external": 0}]
    assert header["constants"] == {"list": [{"tensor": "t1"}]} and torch.equal(tensors["t1"], hidden)
    frames = dict(server.handle(body))
    values = wire.decode_value(wire.unpack(frames[b"R"], "response")[0]["values"][0][1],
                               wire.unpack(frames[b"R"], "response")[1])
    net = mlp()
    torch.testing.assert_close(values, net.sigma2(net.layer2(net.sigma1(hidden))))
    assert out.node.index == wire.unpack(frames[b"R"], "response")[0]["values"][0][0]
    for mutate, match in [
        (lambda h, t: h.__setitem__("constants", {"list": []}), r"tensors\[0\].external: expected an index into "
                                                               r"the 0 tensor\(s\)"),
        (lambda h, t: t.__setitem__("t1", torch.zeros(2, 10)), r"declares a float32 tensor of shape \[1, 10\], "
                                                               r"tensor 0 beside the document is a torch.float32 "
                                                               r"tensor of shape \[2, 10\]"),
        (lambda h, t: h.__setitem__("constants", {"list": ["text"]}), r"beside the document is a string"),
        (lambda h, t: h.__setitem__("constants", {"tuple": []}), r"'constants' is a list of tensors"),
    ]:
        header, tensors = wire.unpack(body)
        mutate(header, tensors)
        with pytest.raises(GraphFormatError, match=match):
            server.validate(wire.pack(header, tensors))
