"""`make demo-remote`: the demo's activation patching, run on a local nnsight-remote server.

It starts a Ray Serve server on 127.0.0.1 for SmolLM2-135M-Instruct (one replica,
no API key: loopback only), runs the patching example of ``examples/demo.py``
through it with ``backend=RemoteBackend(url)`` on a client wrapper that never
loads weights, runs the same trace locally, and prints both. Against a server you
started yourself (``python -m nnsight_remote serve FOLDER --no-auth``, FOLDER being
what ``smollm2_checkpoint()`` returns)::

    .venv/bin/python examples/demo_remote.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch

from nnsight_remote import RemoteBackend
from nnsight_remote.serve import ModelSpec, start
from nnsight_transformers import LanguageModel, smollm2_checkpoint

EIFFEL = "The Eiffel Tower is in the city of"
COLOSSEUM = "The Colosseum is in the city of"
PATCH_LAYER = 15


def patch(model: LanguageModel, backend=None) -> torch.Tensor:
    """Invoke 0's last-token hidden state after layer 15 replaces invoke 1's; invoke 1's next-token probabilities."""
    with model.trace(backend=backend) as tracer:
        with tracer.invoke(COLOSSEUM):
            source = model.model.layers[PATCH_LAYER].output[:, -1]
        with tracer.invoke(EIFFEL):
            model.model.layers[PATCH_LAYER].output[:, -1] = source
            patched = model.lm_head.output.t[-1].softmax(-1).save()
    return patched.value[0]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an nnsight-remote server serving the SmolLM2 folder (default: start one)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    folder = smollm2_checkpoint()
    url, started = args.url, time.perf_counter()
    if url is None:
        import ray
        from ray import serve

        print("Starting a local Ray cluster and an nnsight-remote server for SmolLM2-135M ...")
        url = start([ModelSpec(name=folder, key=folder)], port=args.port, actor_options={"num_cpus": 0})
        print(f"Serving at {url} after {time.perf_counter() - started:.0f} s.\n")
    try:
        client = LanguageModel(folder)                    # a meta skeleton: no weights on the client
        backend = RemoteBackend(url, progress=True)
        start_remote = time.perf_counter()
        remote = patch(client, backend)
        remote_s = time.perf_counter() - start_remote
        local = LanguageModel(folder)
        start_local = time.perf_counter()
        expected = patch(local)
        local_s = time.perf_counter() - start_local
        paris, rome = (client.tokenizer.encode(word)[0] for word in (" Paris", " Rome"))
        print(f"Patching layer {PATCH_LAYER}'s last token from {COLOSSEUM!r} into {EIFFEL!r}:")
        print(f"   {'':8} {'P(Paris)':>9} {'P(Rome)':>9}  seconds")
        print(f"   {'remote':8} {float(remote[paris]):9.3f} {float(remote[rome]):9.3f}  {remote_s:.2f}")
        print(f"   {'local':8} {float(expected[paris]):9.3f} {float(expected[rome]):9.3f}  {local_s:.2f}"
              " (includes loading the weights)")
        print(f"   largest difference: {float((remote - expected).abs().max()):.2e}; the client loaded "
              f"weights: {client.dispatched}")
    finally:
        if args.url is None:
            serve.shutdown()
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
