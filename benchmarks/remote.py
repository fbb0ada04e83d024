"""Remote execution on loopback: overhead per request and throughput against 1 and 2 replicas.

Run by hand, never in CI (it starts a local Ray cluster and takes a few minutes)::

    .venv/bin/python benchmarks/remote.py                 # tiny GPT-2, and SmolLM2 if its cache exists
    .venv/bin/python benchmarks/remote.py --no-smollm2 --requests 30

(a) overhead: the same trace (layer 0's output and the last token's logits saved)
run locally on a loaded wrapper in this process and remotely through
``RemoteBackend`` on a server on 127.0.0.1 (one replica); the median milliseconds
per request of each, their difference, and the request and response bytes.
Target: remote - local <= 30 ms.

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
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnsight_remote import RemoteBackend, ServerLimits  # noqa: E402
from nnsight_remote.client import build_request  # noqa: E402
from nnsight_remote.serve import ModelSpec, start  # noqa: E402
from nnsight_transformers import LanguageModel  # noqa: E402

PROMPT = "The Eiffel Tower is in the city of"
ONE_THREAD = {"num_cpus": 0, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}}


def trace(model: LanguageModel, backend=None):
    layers = model.model.layers if hasattr(model, "model") and hasattr(model.model, "layers") else model.transformer.h
    with model.trace(PROMPT, backend=backend):
        hidden = layers[0].output[0].save()
        logits = model.lm_head.output.t[-1].save()
    return hidden.value, logits.value


def median_ms(fn: Callable[[], None], n: int) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def sizes(model: LanguageModel, backend: RemoteBackend) -> Dict[str, int]:
    """Bytes of one request and of its response."""
    captured = {}
    send = backend.send

    def spy(body, key, graph=None):
        captured["request"] = len(body)
        return send(body, key, graph)

    backend.send = spy
    original = backend._http.stream

    class Counting:
        def __init__(self, *args, **kwargs):
            self.context = original(*args, **kwargs)

        def __enter__(self):
            response = self.context.__enter__()
            iterate = response.iter_bytes

            def counted():
                captured["response"] = 0
                for chunk in iterate():
                    captured["response"] += len(chunk)
                    yield chunk

            response.iter_bytes = counted
            return response

        def __exit__(self, *exc):
            return self.context.__exit__(*exc)

    backend._http.stream = Counting
    try:
        trace(model, backend)
    finally:
        backend._http.stream = original
        backend.send = send
    return captured


def overhead(name: str, folder: str, url: str, n: int) -> None:
    local = LanguageModel(folder)
    local.dispatch_model()
    client = LanguageModel(folder)
    backend = RemoteBackend(url, model=f"{name}-1", progress=False)
    remote_values = trace(client, backend)
    local_values = trace(local)
    for a, b in zip(local_values, remote_values):
        torch.testing.assert_close(a, b)
    local_ms = median_ms(lambda: trace(local), n)
    remote_ms = median_ms(lambda: trace(client, backend), n)
    bytes_ = sizes(client, backend)
    print(f"(a) {name}: local {local_ms:7.1f} ms   remote {remote_ms:7.1f} ms   overhead "
          f"{remote_ms - local_ms:6.1f} ms/request   request {bytes_['request']} B, response "
          f"{bytes_['response']} B   (median of {n})")


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

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
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
