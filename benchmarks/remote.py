"""Remote execution on loopback: overhead per request and throughput against 1 and 2 replicas.

Run by hand, never in CI (it starts a local Ray cluster and takes a few minutes)::

    .venv/bin/python benchmarks/remote.py                 # tiny GPT-2, and SmolLM2 if its cache exists
    .venv/bin/python benchmarks/remote.py --no-smollm2 --requests 30

(a) overhead: the same trace (layer 0's output and the last token's logits saved)
run locally on a loaded wrapper in this process and remotely through
``RemoteBackend`` on a server on 127.0.0.1 (one replica), alternately; the median
milliseconds per request of each, the median of their differences, the request and
response bytes, and where the difference goes: the replica's run beyond the local
one (the server reports its run time) and the rest (HTTP, Serve's proxy, ingress
and routing, the client's encoding and decoding). Target: remote - local <= 30 ms.

(b) throughput: 1, 4 and 8 client threads, each sending requests back to back,
against a deployment of 1 and of 2 replicas of the same model; requests per second
and the 2-replica / 1-replica ratio at 8 clients (target >= 1.6 x where the cores
allow it). Every replica reserves no CPU (``num_cpus=0``) and runs torch with one
thread; the Ray cluster gets ``os.cpu_count()`` CPUs. On a machine with two
cores, the two replicas, Serve's HTTP proxy and ingress and the client threads
share those two cores, which caps the scaling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnsight_remote import RemoteBackend, ServerLimits  # noqa: E402
from nnsight_remote.serve import RAY_SYSTEM_CONFIG, ModelSpec, start  # noqa: E402
from nnsight_transformers import LanguageModel  # noqa: E402

PROMPT = "The Eiffel Tower is in the city of"
ONE_THREAD = {"num_cpus": 0, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}}


def trace(model: LanguageModel, backend=None):
    layers = model.model.layers if hasattr(model, "model") and hasattr(model.model, "layers") else model.transformer.h
    with model.trace(PROMPT, backend=backend):
        hidden = layers[0].output[0].save()
        logits = model.lm_head.output.t[-1].save()
    return hidden.value, logits.value


def overhead(name: str, folder: str, url: str, n: int) -> None:
    """Local and remote runs alternate (paired), so a change of the machine's load (two cores
    shared with Ray's processes and other work) shifts both alike."""
    local = LanguageModel(folder)
    local.dispatch_model()
    client = LanguageModel(folder)
    backend = RemoteBackend(url, model=f"{name}-1", progress=False)
    remote_values = trace(client, backend)
    local_values = trace(local)
    for a, b in zip(local_values, remote_values):
        torch.testing.assert_close(a, b)
    local_ms, remote_ms, server_ms = [], [], []
    for _ in range(n):
        started = time.perf_counter()
        trace(local)
        local_ms.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        trace(client, backend)
        remote_ms.append((time.perf_counter() - started) * 1e3)
        server_ms.append(backend.last.server_seconds * 1e3)
    median = statistics.median
    stats = backend.last
    print(f"(a) {name}: local {median(local_ms):7.1f} ms   remote {median(remote_ms):7.1f} ms   overhead "
          f"{median([r - l for r, l in zip(remote_ms, local_ms)]):6.1f} ms/request   request {stats.request_bytes} B, "
          f"response {stats.response_bytes} B   (median of {n} pairs)")
    print(f"    {name}: of which the server's run beyond the local one "
          f"{median([s - l for s, l in zip(server_ms, local_ms)]):5.1f} ms; HTTP, Serve's routing and the "
          f"client {median([r - s for r, s in zip(remote_ms, server_ms)]):5.1f} ms")


def throughput(name: str, folder: str, url: str, seconds: float) -> None:
    rates = {}
    for replicas in (1, 2):
        for clients in (1, 4, 8):
            backend = RemoteBackend(url, model=f"{name}-{replicas}", progress=False)
            models = [LanguageModel(folder) for _ in range(clients)]
            for model in models:
                trace(model, backend)
            counts: List[int] = [0] * clients
            stop = time.perf_counter() + seconds

            def work(k: int) -> None:
                while time.perf_counter() < stop:
                    trace(models[k], backend)
                    counts[k] += 1

            threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rate = sum(counts) / (time.perf_counter() - started)
            rates[replicas, clients] = rate
            print(f"(b) {name}: {replicas} replica(s), {clients} client(s): {rate:6.1f} requests/s")
    print(f"(b) {name}: 2 replicas / 1 replica at 8 clients: {rates[2, 8] / rates[1, 8]:.2f} x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50, help="requests per overhead median")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per throughput cell")
    parser.add_argument("--no-smollm2", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)

    from tests.helpers import save_tiny_lms

    models = {"tiny-gpt2": save_tiny_lms(Path(tempfile.mkdtemp()))["gpt2"]}
    if not args.no_smollm2:
        from nnsight_transformers import smollm2_checkpoint
        try:
            models["smollm2"] = smollm2_checkpoint()
        except Exception as error:  # noqa: BLE001 - the benchmark runs without it
            print(f"SmolLM2 skipped: {error}")
    specs = []
    for name, folder in models.items():
        specs += [ModelSpec(name=f"{name}-1", key=folder, replicas=1), ModelSpec(name=f"{name}-2", key=folder, replicas=2)]
    import ray
    from ray import serve

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _system_config=RAY_SYSTEM_CONFIG)
    try:
        started = time.perf_counter()
        url = start(specs, port=8765, actor_options=ONE_THREAD, limits=ServerLimits(max_concurrent_per_key=64))
        print(f"server up in {time.perf_counter() - started:.0f} s at {url}; {os.cpu_count()} CPU core(s)")
        for name, folder in models.items():
            overhead(name, folder, url, args.requests)
        for name, folder in models.items():
            throughput(name, folder, url, args.seconds)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
