"""Remote parity on a GPU: SmolLM2 served on the GPU (``device_map="auto"``), checked against a local CPU run.

Prepared for a machine with a CUDA GPU; runs on a CPU too, and small (``--device cpu
--tiny``: a 2-layer Llama built from a config), which is how the test suite checks it::

    .venv/bin/python benchmarks/remote_gpu.py                          # SmolLM2-135M, bf16, on cuda
    .venv/bin/python benchmarks/remote_gpu.py --dtype float32          # the tight tolerances
    .venv/bin/python benchmarks/remote_gpu.py --device cpu --tiny      # small, anywhere
    .venv/bin/python benchmarks/remote_gpu.py --url http://gpu-box:8000 --api-key nns_...  # a running server

Without ``--url`` it starts a local Ray cluster and an nnsight-remote server on 127.0.0.1
serving the checkpoint with ``device_map="auto"`` and ``--dtype`` (one replica; on cuda it
reserves one GPU), like ``python -m nnsight_remote serve FOLDER --device-map auto --dtype
bfloat16 --replica-gpus 1 --no-auth``. A client wrapper (a meta skeleton: no weights) runs
three traces remotely, a wrapper loaded in this process runs them on the CPU in float32,
and the script prints, for each, the largest difference and the timings:

* ``patching``: the demo's activation patching (``examples/demo.py``): layer L's last-token
  output of one prompt written into another's (L = 15 on SmolLM2), the patched next-token
  probabilities saved; compared as the largest absolute difference of probabilities.
* ``save all``: every decoder layer's output saved (30 on SmolLM2), and where the server
  ran them (``.device``, ``.dtype``); compared per layer as the largest absolute
  difference over the largest absolute value of the CPU run (relative to the tensor's
  scale: hidden states of some layers reach hundreds).
* ``generate``: ``max_new_tokens`` tokens, the last position's logits saved at every step
  and the generated ids; logits compared as in ``save all``, ids token by token.

Tolerances (server dtype against the CPU's float32), in :data:`TOLERANCES`: float32 on the
GPU differs from the CPU by the order of summation only (relative 1e-3, probabilities
1e-4, and greedy ids equal); bfloat16 keeps 8 bits of mantissa, a relative error of about
4e-3 per operation that grows through the layers (relative 6e-2, probabilities 3e-2;
greedy ids may part after a near tie, which is reported, not failed); float16 likewise
with 11 bits (3e-2, 1.5e-2). The script exits with 1 when a difference is over its
tolerance, or when the server did not run on the device asked for.

Timings: median milliseconds of ``--repeat`` runs after one warm-up, remote (the client's
wall time, and the replica's own run as the server reports it) and local (CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from nnsight_remote import RemoteBackend, ServerLimits
from nnsight_transformers import LanguageModel

EIFFEL = "The Eiffel Tower is in the city of"
COLOSSEUM = "The Colosseum is in the city of"
#: Largest allowed difference per server dtype, against the CPU's float32: relative for
#: hidden states and logits (max |remote - local| / max |local|), absolute for probabilities.
TOLERANCES = {"float32": {"relative": 1e-3, "probability": 1e-4},
              "bfloat16": {"relative": 6e-2, "probability": 3e-2},
              "float16": {"relative": 3e-2, "probability": 1.5e-2}}


# -- the traces (each runs remotely with backend=..., locally with backend=None) ----------------


def patching(model: LanguageModel, layer: int, backend: Any = None) -> torch.Tensor:
    """The demo's patching: invoke 0's last-token output of ``layer`` replaces invoke 1's."""
    with model.trace(backend=backend) as tracer:
        with tracer.invoke(COLOSSEUM):
            source = model.model.layers[layer].output[:, -1]
        with tracer.invoke(EIFFEL):
            model.model.layers[layer].output[:, -1] = source
            probs = model.lm_head.output.t[-1].softmax(-1).save()
    return probs.value[0].float()


def save_all(model: LanguageModel, backend: Any = None) -> Tuple[List[torch.Tensor], Any, Any]:
    """Every decoder layer's output, and where and in which dtype the first was computed (no
    scan: ``.device`` and ``.dtype`` are then read where the model runs, not on fake tensors)."""
    with model.trace(EIFFEL, backend=backend, scan=False):
        hidden = [layer.output.save() for layer in model.model.layers]
        device = model.model.layers[0].output.device.save()
        dtype = model.model.layers[0].output.dtype.save()
    return [h.value.float() for h in hidden], device.value, dtype.value


def generate(model: LanguageModel, tokens: int, backend: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Greedy generation: the last position's logits at every step, and the ids."""
    with model.generate(EIFFEL, max_new_tokens=tokens, do_sample=False, backend=backend) as tracer:
        with tracer.all():
            logits = model.lm_head.output[:, -1].save()
        ids = model.generator.output.save()
    return torch.stack([step.float() for step in logits.value]), ids.value


# -- comparing ----------------------------------------------------------------------------------


def relative(remote: torch.Tensor, local: torch.Tensor) -> float:
    """max |remote - local| / max |local|."""
    return float((remote - local).abs().max() / local.abs().max().clamp_min(1e-12))


class Report:
    """The table of checks: each a name, a difference, its tolerance and a verdict."""

    def __init__(self, dtype: str) -> None:
        self.tolerance = TOLERANCES[dtype]
        self.failed: List[str] = []

    def check(self, name: str, difference: float, kind: str) -> None:
        limit = self.tolerance[kind]
        ok = difference <= limit
        if not ok:
            self.failed.append(name)
        print(f"   {name:34} {difference:10.3e}  (tolerance {limit:.0e}, {kind})  {'ok' if ok else 'OVER'}")

    def fact(self, name: str, ok: bool, text: str) -> None:
        if not ok:
            self.failed.append(name)
        print(f"   {name:34} {text}  {'ok' if ok else 'FAILED'}")


def timed(fn: Callable[[], Any], repeat: int, backend: Optional[RemoteBackend] = None) -> Tuple[Any, str]:
    """``fn()`` once to warm up, then ``repeat`` times: its result and the median timings."""
    result = fn()
    wall, server = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        wall.append((time.perf_counter() - started) * 1e3)
        if backend is not None and backend.last is not None:
            server.append(backend.last.server_seconds * 1e3)
    text = f"{statistics.median(wall):8.1f} ms"
    if server:
        text += f" (server's run {statistics.median(server):7.1f} ms)"
    return result, text


# -- the run ------------------------------------------------------------------------------------


def checkpoint(args: argparse.Namespace) -> str:
    if args.checkpoint:
        return args.checkpoint
    if args.tiny:
        from nnsight_transformers.testing import tiny_llama_checkpoint
        return tiny_llama_checkpoint()
    from nnsight_transformers import smollm2_checkpoint
    return smollm2_checkpoint(progress=lambda message: print(message, file=sys.stderr))


def serve_locally(folder: str, args: argparse.Namespace) -> str:
    """Start a Ray cluster and a server of ``folder`` (device_map="auto", ``--dtype``) on 127.0.0.1."""
    from nnsight_remote.serve import ModelSpec, start

    load = {"device_map": "auto", "dtype": getattr(torch, args.dtype)}
    gpus = 1 if args.device == "cuda" else 0
    limits = ServerLimits(max_new_tokens=max(args.new_tokens, 1), max_seconds=600.0)
    return start([ModelSpec(name=args.model or folder, key=folder, load_kwargs=load)], port=args.port,
                 limits=limits, actor_options={"num_cpus": 0, "num_gpus": gpus}, num_cpus=os.cpu_count())


def run(args: argparse.Namespace) -> int:
    torch.set_grad_enabled(False)
    folder = checkpoint(args)
    started = time.perf_counter()
    url = args.url or serve_locally(folder, args)
    print(f"server at {url} (model {args.model or folder!r}, {args.dtype}, device_map=auto, expected on "
          f"{args.device}); ready after {time.perf_counter() - started:.0f} s")
    backend = RemoteBackend(url, api_key=args.api_key, model=args.model or folder, progress=False)
    client = LanguageModel(folder)                      # a meta skeleton: no weights on the client
    local = LanguageModel(folder, dispatch=True, dtype=torch.float32)   # the reference: float32 on this CPU
    layers = len(local.model.layers)
    layer = args.layer if args.layer is not None else min(15, layers // 2)
    report = Report(args.dtype)

    print(f"\npatching (layer {layer}'s last token, {COLOSSEUM!r} -> {EIFFEL!r}):")
    remote, remote_ms = timed(lambda: patching(client, layer, backend), args.repeat, backend)
    expected, local_ms = timed(lambda: patching(local, layer), args.repeat)
    report.check("largest |probability difference|", float((remote - expected).abs().max()), "probability")
    top = int(expected.argmax())
    print(f"   top token {local.tokenizer.decode([top])!r}: remote {float(remote[top]):.4f}, local "
          f"{float(expected[top]):.4f}; remote {remote_ms}, local {local_ms}")

    print(f"\nsave all ({layers} layers):")
    (remote_hidden, device, dtype), remote_ms = timed(lambda: save_all(client, backend), args.repeat, backend)
    (local_hidden, _, _), local_ms = timed(lambda: save_all(local), args.repeat)
    worst = max(range(layers), key=lambda k: relative(remote_hidden[k], local_hidden[k]))
    report.check(f"largest relative difference (layer {worst})",
                 relative(remote_hidden[worst], local_hidden[worst]), "relative")
    report.fact("ran on", torch.device(device).type == args.device and dtype == getattr(torch, args.dtype),
                f"{device}, {dtype}")
    print(f"   remote {remote_ms}, local {local_ms}")

    print(f"\ngenerate ({args.new_tokens} new tokens, greedy):")
    (remote_logits, remote_ids), remote_ms = timed(lambda: generate(client, args.new_tokens, backend),
                                                   args.repeat, backend)
    (local_logits, local_ids), local_ms = timed(lambda: generate(local, args.new_tokens), args.repeat)
    width = min(remote_ids.shape[1], local_ids.shape[1])
    same = int((remote_ids[:, :width] == local_ids[:, :width]).all(dim=0).long().cumprod(0).sum())
    prompt = len(local.tokenizer(EIFFEL)["input_ids"])
    # Logits are comparable while the ids agree: once they part, the steps' inputs differ.
    steps = max(1, min(len(remote_logits), len(local_logits), same - prompt + 1))
    report.check(f"largest relative logits difference ({steps} step(s))",
                 relative(remote_logits[:steps], local_logits[:steps]), "relative")
    agree = f"{same} of {local_ids.shape[1]} ids equal"
    if args.dtype == "float32":
        report.fact("greedy ids", remote_ids.shape == local_ids.shape and bool(torch.equal(remote_ids, local_ids)),
                    agree)
    else:
        print(f"   {'greedy ids':34} {agree} (in {args.dtype}, ids may part after a near tie: reported only)")
    print(f"   remote {remote_ms}, local {local_ms}")
    print(f"   local : {local.tokenizer.decode(local_ids[0])!r}\n   remote: {client.tokenizer.decode(remote_ids[0])!r}")

    print(f"\n{'all checks within tolerance' if not report.failed else 'FAILED: ' + ', '.join(report.failed)}")
    return 1 if report.failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where the server should run it")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(TOLERANCES), help="the server's dtype")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer Llama from a config instead of SmolLM2")
    parser.add_argument("--checkpoint", help="a checkpoint folder (default: SmolLM2, or the tiny Llama)")
    parser.add_argument("--url", help="a running server (default: start one here)")
    parser.add_argument("--model", help="the server's name for the model (default: the folder)")
    parser.add_argument("--api-key", default=os.environ.get("NNSIGHT_API_KEY"))
    parser.add_argument("--port", type=int, default=8777)
    parser.add_argument("--layer", type=int, help="the patched layer (default: 15, or half the layers)")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case (after one warm-up)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not args.url and not torch.cuda.is_available():
        parser.error("no CUDA device here: run on the GPU machine, or give --device cpu")
    if args.url:
        return run(args)
    import ray
    from ray import serve
    try:
        return run(args)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
