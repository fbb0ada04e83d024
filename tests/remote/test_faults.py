"""The server under faults: auth, limits over HTTP, a replica killed mid-request, concurrent
clients on two replicas, and a fuzzed HTTP endpoint that keeps serving."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import ray
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnsight_torch import NNsight

from nnsight_core.errors import (ConcurrencyLimitError, GenerationLengthError, GraphFormatError, ModelKeyError,
                                 NNsightError, RemoteAuthError, RemoteError, RequestSizeError,
                                 RequestTimeoutError, VersionSkewError)
from nnsight_remote import wire
from nnsight_remote.client import build_request
from nnsight_remote.server import parse_error
from nnsight_remote.testing import Slow, mlp
from nnsight_transformers import LanguageModel

from tests.helpers import SHORT


def run_mlp(server, x, **options):
    model = NNsight(mlp())
    with model.trace(x, backend=server.backend("mlp", **options)):
        hidden = model.layer1.output.save()
        out = model.output.save()
    return hidden.value, out.value


# -- the endpoints ------------------------------------------------------------------------------


def test_healthz_needs_no_key(server):
    answer = httpx.get(f"{server.url}/healthz")
    assert answer.status_code == 200 and answer.json()["status"] == "ok"


def test_models_lists_module_trees_and_versions(server):
    listed = server.backend().models()
    by_key = {entry["key"]: entry for entry in listed["models"]}
    assert set(by_key) == {"mlp", server.gpt2, server.llama, server.sd, "slow"}
    assert ["layer1", "Linear"] in by_key["mlp"]["modules"]
    assert by_key[server.gpt2]["wrapper"] == "LanguageModel"
    assert listed["versions"]["protocol"] == wire.PROTOCOL


@pytest.mark.parametrize("key, match", [("", "no API key"), ("nns_wrong", "no valid API key")])
def test_requests_without_a_valid_key_are_refused(server, key, match):
    with pytest.raises(RemoteAuthError, match=match):
        run_mlp(server, torch.ones(1, 5), api_key=key)
    with pytest.raises(RemoteAuthError):
        server.backend(api_key=key).models()


def test_an_unknown_model_is_refused(server):
    with pytest.raises(ModelKeyError, match="does not serve the model 'nope'"):
        model = NNsight(mlp())
        with model.trace(torch.ones(1, 5), backend=server.backend("nope")):
            model.output.save()


def test_a_client_of_another_protocol_gets_both_versions(server):
    answer = httpx.post(f"{server.url}/v1/trace", content=b"x",
                        headers={"Authorization": f"Bearer {server.key}", "X-NNsight-Protocol": "9",
                                 "X-NNsight-Remote-Version": "9.9", "X-NNsight-Model": "mlp"})
    name, message = parse_error(answer.content)
    assert answer.status_code == 400 and name == "VersionSkewError"
    assert "9.9" in message and "protocol 9" in message and f"protocol {wire.PROTOCOL}" in message


def test_progress_lines_show_queued_running_done(server, capsys):
    run_mlp(server, torch.ones(1, 5), progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[nnsight-remote] mlp:")]
    assert [line.split(": ")[1].split()[0] for line in lines] == ["queued", "running", "done"]


# -- limits over HTTP ---------------------------------------------------------------------------


def test_an_oversized_body_is_refused_at_the_door(server):
    with pytest.raises(RequestSizeError, match=str(2**20)):
        run_mlp(server, torch.ones(60_000, 5))


def test_generation_length_is_bounded(server):
    model = LanguageModel(server.gpt2)
    with pytest.raises(GenerationLengthError, match="<= 16"):
        with model.generate(SHORT, max_new_tokens=17, backend=server.backend(server.gpt2)):
            model.lm_head.output.save()


def slow_trace(server, steps=None, **options):
    model = NNsight(Slow())
    kwargs = {} if steps is None else {"steps": steps}
    with model.trace(torch.ones(1, 4), backend=server.backend("slow", **options), **kwargs):
        out = model.output.save()
    return out.value


def test_a_run_past_the_wall_time_is_cancelled_and_the_replica_serves_on(server):
    with pytest.raises(RequestTimeoutError, match="limit of 2 s"):
        slow_trace(server)                       # 5 s of work, a 2 s limit
    expected = Slow().step(torch.ones(1, 4))
    torch.testing.assert_close(slow_trace(server, steps=1), expected)


def test_one_key_may_have_eight_requests_in_flight(server):
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(slow_trace, server, 4) for _ in range(10)]
        outcomes = []
        for future in futures:
            try:
                future.result()
                outcomes.append("ok")
            except ConcurrencyLimitError as error:
                assert "limit per key is 8" in str(error)
                outcomes.append("refused")
    assert outcomes.count("refused") >= 1 and outcomes.count("ok") >= 8 - 1


# -- faults -------------------------------------------------------------------------------------


def _replica_actors(deployment):
    return [actor for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in actor["name"]]


def test_a_replica_killed_mid_request_gives_a_clear_error_then_serves_again(server):
    result = {}

    def request():
        try:
            result["value"] = slow_trace(server, 15)     # 1.5 s
        except NNsightError as error:
            result["error"] = error

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.7)
    (actor,) = _replica_actors("model3")                 # the "slow" deployment
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=False)
    thread.join(30)
    assert "value" not in result, "a killed replica must not produce a result"
    assert type(result["error"]) is RemoteError and "no result was produced" in str(result["error"])
    deadline = time.monotonic() + 90
    while True:                                          # Serve replaces the replica
        try:
            value = slow_trace(server, 1)
            break
        except RemoteError:
            assert time.monotonic() < deadline, "the deployment did not recover"
            time.sleep(1)
    torch.testing.assert_close(value, Slow().step(torch.ones(1, 4)))


def test_eight_concurrent_clients_on_two_replicas_get_their_own_results(server):
    inputs = [torch.full((1 + k % 3, 5), float(k)) / 8 for k in range(8)]
    net = mlp()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            results = list(pool.map(lambda x: run_mlp(server, x), inputs))
            for x, (hidden, out) in zip(inputs, results):
                torch.testing.assert_close(hidden, net.layer1(x))
                torch.testing.assert_close(out, net(x))


# -- fuzzing the endpoint -----------------------------------------------------------------------


def _valid_body(server):
    model = NNsight(mlp())
    with model.trace(torch.ones(1, 5), backend=lambda runner, keep: None) as tracer:
        (model.layer1.output * 2).sum().save()
    return build_request(tracer, "mlp", False)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=4),
                           max_leaves=12)


def _mutations(body):
    header, tensors = wire.unpack(body)
    blob = body[len(wire.pack(header, {})):]
    nodes = header["graph"]["nodes"]

    def with_header(**changes):
        return wire.pack({**header, **changes}, tensors)

    def with_nodes(new_nodes):
        return with_header(graph={**header["graph"], "nodes": new_nodes})

    return st.one_of(
        st.binary(max_size=300),                                                # garbage
        st.binary(max_size=300).map(lambda tail: body[:20] + tail),             # a cut envelope
        st.binary(max_size=64).map(lambda junk: wire.pack(header, {})[:-1] + junk + blob),  # bad JSON end
        st.binary(min_size=1, max_size=200).map(lambda junk: wire.pack(header, {}) + junk),  # bad safetensors
        st.sampled_from(sorted(header)).flatmap(lambda field: json_values.map(lambda v: with_header(**{field: v}))),
        json_values.map(lambda node: with_nodes(nodes + [node])),               # malformed nodes
        st.sampled_from(["apply", "exec", "eval", "__import__", "call_module"]).map(
            lambda op: with_nodes(nodes + [{"op": op, "target": "os.system", "args": [{"node": 0}]}])),
        st.integers(0, 50).map(lambda i: with_nodes(nodes[:1] + [{"op": "save", "args": [{"node": i}]}])),  # cycles
        st.text(max_size=20).map(lambda name: with_header(invokes=[{"inputs": [{"tensor": name}], "kwargs": {}}])),
        st.integers(10, 20).map(lambda n: with_nodes(nodes + [{"op": "save", "args": [{"node": 0}]}] * 2**n)),
    )


def test_the_endpoint_survives_fuzzing(server):
    body = _valid_body(server)
    headers = {"Authorization": f"Bearer {server.key}", "X-NNsight-Protocol": str(wire.PROTOCOL),
               "X-NNsight-Model": "mlp"}
    seen = set()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(_mutations(body))
    def post(fuzzed):
        answer = httpx.post(f"{server.url}/v1/trace", content=fuzzed, headers=headers, timeout=30)
        if answer.status_code != 200:
            assert answer.status_code in (400, 401, 404, 413, 429), answer.status_code
            seen.add(parse_error(answer.content)[0])
            return
        frames = list(wire.read_frames(iter([answer.content]), 2**30))
        kind, payload = frames[-1]
        if kind == b"E":
            name, message = parse_error(payload)
            assert name in {"GraphFormatError", "InvokeError", "InputError", "EnvoyAttributeError",
                            "NodeLimitError", "VersionSkewError", "ModelKeyError", "GraphAccessError",
                            "GraphLimitError", "InterventionError", "RequestSizeError"}, (name, message)
            seen.add(name)
        else:
            assert kind == b"R"

    post()
    assert "GraphFormatError" in seen
    hidden, out = run_mlp(server, torch.ones(1, 5))       # still serving, still right
    torch.testing.assert_close(out, mlp()(torch.ones(1, 5)))
