"""One Ray Serve server for the whole remote suite: a local Ray cluster on 2 CPUs, started once.

It serves the tiny MLP (``mlp``, 2 replicas), a tiny GPT-2 and a tiny Llama (by their
folders), a tiny Stable Diffusion pipeline (by its folder) and a deliberately slow model (``slow``),
with API keys and small limits, on 127.0.0.1. Starting Ray and the replicas takes
about half a minute; every test of tests/remote shares it, and the session's end
shuts Serve and Ray down.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest
import torch

ray = pytest.importorskip("ray")

from nnsight_remote import RemoteBackend, ServerLimits  # noqa: E402
from nnsight_remote.auth import KeyStore, add_key  # noqa: E402
from nnsight_remote.serve import RAY_SYSTEM_CONFIG, parse_model, start  # noqa: E402

from tests.helpers import save_tiny_lms  # noqa: E402

LIMITS = ServerLimits(max_nodes=400, max_saved_bytes=2**20, max_new_tokens=16, max_seconds=2.0,
                      max_concurrent_per_key=8, max_body_bytes=2**20, max_source_depth=2,
                      allowed_kwargs=ServerLimits.allowed_kwargs | {"steps"})


@dataclass
class Server:
    url: str
    key: str
    gpt2: str
    llama: str
    sd: str

    def backend(self, model: str | None = None, **kwargs) -> RemoteBackend:
        return RemoteBackend(self.url, api_key=kwargs.pop("api_key", self.key), model=model,
                             progress=kwargs.pop("progress", False), **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    from nnsight_diffusers.testing import tiny_stable_diffusion

    lms = save_tiny_lms(tmp_path_factory.mktemp("remote_lms"))
    sd = tiny_stable_diffusion(tmp_path_factory.mktemp("remote_sd"))
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    key = add_key(str(keys), "tester")

    specs = [parse_model("mlp=nnsight_remote.testing:mlp"), parse_model(lms["gpt2"]),
             parse_model(str(sd), wrapper="DiffusionModel"), parse_model("slow=nnsight_remote.testing:slow"),
             parse_model(lms["llama"])]
    specs[0] = type(specs[0])(**{**specs[0].__dict__, "replicas": 2})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=RAY_SYSTEM_CONFIG)
    try:
        url = start(specs, port=_free_port(), keys=KeyStore.load(str(keys)), limits=LIMITS, replicas=1,
                    actor_options={"num_cpus": 0})
        yield Server(url, key, lms["gpt2"], lms["llama"], str(sd))
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
