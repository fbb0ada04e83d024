"""The server: a Ray Serve application with a FastAPI ingress and one deployment per model.

``python -m nnsight_remote serve MODEL [MODEL ...] --replicas N --port P --api-keys FILE``
starts (or with ``--address`` joins) a Ray cluster and serves:

* ``GET /healthz``: ``{"status": "ok"}``, no key needed;
* ``GET /v1/models``: each model's key, wrapper class, module tree and versions;
* ``POST /v1/trace``: one request (:mod:`nnsight_remote.wire`), answered as a stream of
  frames (queued; running, when the request has the header ``X-NNsight-Progress: 1``;
  then the result or the error).

The ingress checks the API key, the body size, the protocol version and the key's
number of requests in flight, then hands the body to the model's deployment. Each
replica holds one loaded model (:class:`~nnsight_remote.server.ModelServer`) and runs
one request at a time (``max_ongoing_requests=1``); Serve queues the others and routes
them among the replicas. Inside Ray, values travel between actors with Ray's own
serialisation; between the client and the cluster only the wire format does.

A MODEL is a model key loaded with ``--wrapper`` (``LanguageModel`` by default:
``from_pretrained`` of a Hub id or a folder, with ``--device-map`` / ``--dtype``), or
``NAME=package.module:function``, a function of the server's own code returning a
wrapper or a ``torch.nn.Module``, served under NAME.

Example:
    >>> spec = parse_model("mlp=nnsight_remote.testing:mlp")
    >>> spec.name, spec.factory
    ('mlp', 'nnsight_remote.testing:mlp')
    >>> parse_model("openai-community/gpt2").wrapper
    'LanguageModel'
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime
# (`request: Request`), and string annotations do not resolve inside a Serve ingress class.

import argparse
import dataclasses
import importlib
import ipaddress
import re
import socket
import sys
import time
from typing import Any, Optional, Sequence

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from nnsight_core import NNsightModel
from nnsight_core.errors import (ConcurrencyLimitError, InputError, ModelKeyError, RemoteAuthError, RemoteError,
                                 RequestSizeError, VersionSkewError)
from ray import serve

from . import __version__
from .auth import KeyStore, add_key
from .server import ModelServer, ServerLimits, error_payload, versions
from .wire import PROTOCOL, frame

__all__ = ["ModelSpec", "parse_model", "load_model", "build_app", "start", "main", "WRAPPERS",
           "APP_NAME", "RAY_SYSTEM_CONFIG"]

#: The Serve application's name.
APP_NAME = "nnsight"
#: Wrapper classes a model key may be loaded with: name -> (module, class).
WRAPPERS = {"LanguageModel": ("nnsight_transformers", "LanguageModel"),
            "DiffusionModel": ("nnsight_diffusers", "DiffusionModel"),
            "NNsight": ("nnsight_torch", "NNsight")}
_FACTORY = re.compile(r"([A-Za-z0-9_.\-]+)=([A-Za-z_][\w.]*:[A-Za-z_]\w*)")
#: Ray settings for a cluster this server starts itself (``ray.init(_system_config=...)``): answers
#: up to 2 MiB (a language model's last-position logits are ~200 KB) travel between the replica,
#: the ingress and the proxy inline with the call instead of through the shared-memory object
#: store, about 3 ms less per request on loopback. A cluster joined with ``--address`` keeps its own.
RAY_SYSTEM_CONFIG = {"max_direct_call_object_size": 2 * 2**20}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model a server serves.

    Attributes:
        name: The key clients address it by.
        key: The model key given to the wrapper (None for a factory).
        factory: ``package.module:function`` returning a wrapper or module (None for a key).
        wrapper: The wrapper class for a key (a name of :data:`WRAPPERS`).
        load_kwargs: Keyword arguments for the wrapper (``device_map``, ``dtype``).
        replicas: Replicas of this model (None: the server's ``--replicas``).
    """

    name: str
    key: Optional[str] = None
    factory: Optional[str] = None
    wrapper: str = "LanguageModel"
    load_kwargs: Any = dataclasses.field(default_factory=dict)
    replicas: Optional[int] = None


def parse_model(text: str, wrapper: str = "LanguageModel", load_kwargs: "Optional[dict[str, Any]]" = None) -> ModelSpec:
    """A MODEL argument as a :class:`ModelSpec`.

    Raises:
        InputError: An unknown wrapper.
    """
    if wrapper not in WRAPPERS:
        raise InputError(f"--wrapper {wrapper!r} is not one of {sorted(WRAPPERS)}.")
    match = _FACTORY.fullmatch(text)
    if match:
        return ModelSpec(name=match.group(1), factory=match.group(2), wrapper=wrapper)
    return ModelSpec(name=text, key=text, wrapper=wrapper, load_kwargs=dict(load_kwargs or {}))


def load_model(spec: ModelSpec) -> NNsightModel:
    """Build the wrapper a spec names and load its weights."""
    if spec.factory is not None:
        module_name, function = spec.factory.split(":")
        made = getattr(importlib.import_module(module_name), function)()
        if isinstance(made, torch.nn.Module):
            module_name, class_name = WRAPPERS["NNsight"]
            made = getattr(importlib.import_module(module_name), class_name)(made)
        model = made
    else:
        module_name, class_name = WRAPPERS[spec.wrapper]
        model = getattr(importlib.import_module(module_name), class_name)(spec.key, **spec.load_kwargs)
    model.dispatch_model()
    return model


# -- the deployments ----------------------------------------------------------------------


@serve.deployment(max_ongoing_requests=1, health_check_period_s=5)
class ModelDeployment:
    """One replica of one model: loads it once, then answers requests one at a time."""

    def __init__(self, spec: ModelSpec, limits: ServerLimits) -> None:
        self.server = ModelServer(load_model(spec), spec.name, limits)

    def describe(self) -> dict[str, Any]:
        return self.server.describe()

    def handle(self, body: bytes):
        """The answer's frames as they come (a streaming call: "running" arrives when the run starts)."""
        for kind, payload in self.server.handle(body):
            yield frame(kind, payload)

    def handle_all(self, body: bytes) -> bytes:
        """The answer's frames in one piece (one Ray call: a few milliseconds less per request)."""
        return b"".join(frame(kind, payload) for kind, payload in self.server.handle(body))


def _error(status: int, error: Exception) -> Response:
    return Response(error_payload(error), status_code=status, media_type="application/json")


api = FastAPI(title="nnsight-remote", version=__version__)


@serve.deployment(max_ongoing_requests=1000, num_replicas=1)
@serve.ingress(api)
class Ingress:
    """The HTTP front: auth, body size, protocol version and per-key concurrency, then routing."""

    def __init__(self, names: list[str], limits: ServerLimits, hashes: Optional[dict[str, str]], *handles: Any) -> None:
        self.handles = dict(zip(names, handles))
        self.limits = limits
        self.keys = KeyStore(hashes) if hashes is not None else None
        self.in_flight: dict[str, int] = {}
        self.described: Optional[list[Any]] = None

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": sorted(self.handles), "nnsight_remote": __version__}

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        owner = self._owner(request)
        if isinstance(owner, Response):
            return owner
        if self.described is None:
            self.described = [await handle.describe.remote() for handle in self.handles.values()]
        return JSONResponse({"models": self.described, "versions": versions()})

    @api.post("/v1/trace")
    async def trace(self, request: Request) -> Response:
        owner = self._owner(request)
        if isinstance(owner, Response):
            return owner
        protocol = request.headers.get("x-nnsight-protocol")
        if protocol != str(PROTOCOL):
            client = request.headers.get("x-nnsight-remote-version", "unknown")
            return _error(400, VersionSkewError(
                f"the client (nnsight-remote {client}) speaks wire protocol {protocol}, this server "
                f"(nnsight-remote {__version__}) speaks protocol {PROTOCOL}: install matching versions."))
        name = request.headers.get("x-nnsight-model", "")
        handle = self.handles.get(name)
        if handle is None:
            return _error(404, ModelKeyError(f"this server does not serve the model {name!r}; it serves "
                                             f"{sorted(self.handles)} (GET /v1/models lists them)."))
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        if self.in_flight.get(owner, 0) >= self.limits.max_concurrent_per_key:
            return _error(429, ConcurrencyLimitError(
                f"this API key already has {self.in_flight[owner]} requests in flight, the server's limit "
                f"per key is {self.limits.max_concurrent_per_key}: wait for one to finish."))
        self.in_flight[owner] = self.in_flight.get(owner, 0) + 1
        stream = request.headers.get("x-nnsight-progress") == "1"
        return StreamingResponse(self._stream(handle, name, owner, body, stream),
                                 media_type="application/x-nnsight-remote-stream")

    async def _stream(self, handle: Any, name: str, owner: str, body: bytes, stream: bool):
        try:
            yield frame(b"S", b'{"status":"queued"}')
            if stream:
                async for chunk in handle.options(stream=True).handle.remote(body):
                    yield chunk
            else:
                yield await handle.handle_all.remote(body)
        except Exception as error:  # noqa: BLE001 - a dead replica or a cancelled call
            yield frame(b"E", error_payload(RemoteError(
                f"the replica running the request for {name!r} failed before answering ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); no result was produced: run the trace "
                "again (Serve restarts failed replicas).")))
        finally:
            self.in_flight[owner] -= 1
            if not self.in_flight[owner]:
                del self.in_flight[owner]

    def _owner(self, request: Request) -> Any:
        if self.keys is None:
            return "anonymous"
        header = request.headers.get("authorization", "")
        key = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
        owner = self.keys.check(key)
        if owner is None:
            return _error(401, RemoteAuthError(
                "the request has no valid API key: set NNSIGHT_API_KEY (or RemoteBackend(url, api_key=...)) "
                "to a key the server's operator made with `python -m nnsight_remote keygen`."
                if key else "the request has no API key: set NNSIGHT_API_KEY or pass RemoteBackend(url, api_key=...)."))
        return owner

    async def _body(self, request: Request) -> Any:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        too_large = _error(413, RequestSizeError(
            f"the request body is larger than this server's limit of {limit} bytes: send smaller inputs "
            "or constants, or split the work into several traces."))
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
        return b"".join(chunks)


def build_app(specs: Sequence[ModelSpec], limits: Optional[ServerLimits] = None, hashes: "Optional[dict[str, str]]" = None,
              replicas: int = 1, actor_options: "Optional[dict[str, Any]]" = None) -> Any:
    """The Serve application: an ingress bound to one deployment per model.

    Args:
        specs: The models.
        limits: Per-request limits (default :class:`~nnsight_remote.server.ServerLimits`).
        hashes: Accepted API keys as ``{"sha256:HEX": name}``; None serves without keys.
        replicas: Replicas of each model.
        actor_options: ``ray_actor_options`` of each replica (``{"num_gpus": 1}``).
    """
    limits = limits or ServerLimits()
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise InputError(f"two models are served under one name: {names}.")
    bound = [ModelDeployment.options(name=f"model{k}", num_replicas=spec.replicas or replicas,
                                     ray_actor_options=dict(actor_options or {})).bind(spec, limits)
             for k, spec in enumerate(specs)]
    return Ingress.bind(names, limits, hashes, *bound)


def start(specs: Sequence[ModelSpec], port: int = 8000, host: str = "127.0.0.1", keys: Optional[KeyStore] = None,
          limits: Optional[ServerLimits] = None, replicas: int = 1, actor_options: "Optional[dict[str, Any]]" = None,
          address: Optional[str] = None, num_cpus: Optional[int] = None) -> str:
    """Start (or join) Ray, run the application and return its URL once every replica is up.

    Raises:
        InputError: No keys given for a host that is not a loopback address.
    """
    import ray

    if keys is None and not _loopback(host):
        raise InputError(f"--no-auth serves without API keys, which is allowed on a loopback address only, "
                         f"not on {host}: give --api-keys FILE, or bind to 127.0.0.1.")
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, _system_config=None if address else RAY_SYSTEM_CONFIG)
    serve.start(http_options={"host": host, "port": port})
    app = build_app(specs, limits, None if keys is None else keys.hashes, replicas, actor_options)
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


# -- the command line -------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m nnsight_remote serve ...`` / ``keygen ...``."""
    parser = argparse.ArgumentParser(prog="python -m nnsight_remote")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_ = commands.add_parser("serve", help="serve models on Ray Serve")
    serve_.add_argument("models", nargs="+", metavar="MODEL",
                        help="a model key (loaded with --wrapper) or NAME=package.module:function")
    serve_.add_argument("--replicas", type=int, default=1)
    serve_.add_argument("--port", type=int, default=8000)
    serve_.add_argument("--host", default="127.0.0.1")
    serve_.add_argument("--api-keys", metavar="FILE", help="file of hashed API keys (see keygen)")
    serve_.add_argument("--no-auth", action="store_true", help="serve without keys (loopback only)")
    serve_.add_argument("--address", help="join this Ray cluster (ray://host:10001 or auto) instead of starting one")
    serve_.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    serve_.add_argument("--wrapper", default="LanguageModel", choices=sorted(WRAPPERS))
    serve_.add_argument("--device-map", help='from_pretrained device_map, e.g. "auto"')
    serve_.add_argument("--dtype", choices=sorted(_DTYPES))
    serve_.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs each replica reserves")
    serve_.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs each replica reserves")
    serve_.add_argument("--max-body-bytes", type=int, default=ServerLimits.max_body_bytes)
    serve_.add_argument("--max-nodes", type=int, default=ServerLimits.max_nodes)
    serve_.add_argument("--max-saved-bytes", type=int, default=ServerLimits.max_saved_bytes)
    serve_.add_argument("--max-new-tokens", type=int, default=ServerLimits.max_new_tokens)
    serve_.add_argument("--max-seconds", type=float, default=ServerLimits.max_seconds)
    serve_.add_argument("--max-concurrent-per-key", type=int, default=ServerLimits.max_concurrent_per_key)
    serve_.add_argument("--max-source-depth", type=int, default=ServerLimits.max_source_depth,
                        help="how deep a graph may look inside forwards (.source): 1 a module's own "
                             "forward, 2 also the functions it calls, 0 not at all")
    serve_.add_argument("--allow-kwarg", action="append", default=[], metavar="NAME",
                        help="also pass this keyword argument to the model")
    keygen = commands.add_parser("keygen", help="make an API key and add its hash to a key file")
    keygen.add_argument("--api-keys", metavar="FILE", required=True)
    keygen.add_argument("--name", required=True)
    args = parser.parse_args(argv)

    if args.command == "keygen":
        print(add_key(args.api_keys, args.name))
        return 0
    if args.no_auth == bool(args.api_keys):
        parser.error("give exactly one of --api-keys FILE and --no-auth")
    load_kwargs: dict[str, Any] = {}
    if args.device_map:
        load_kwargs["device_map"] = args.device_map
    if args.dtype:
        load_kwargs["dtype"] = _DTYPES[args.dtype]
    specs = [parse_model(text, args.wrapper, load_kwargs) for text in args.models]
    limits = ServerLimits(max_body_bytes=args.max_body_bytes, max_nodes=args.max_nodes,
                          max_saved_bytes=args.max_saved_bytes, max_new_tokens=args.max_new_tokens,
                          max_seconds=args.max_seconds, max_concurrent_per_key=args.max_concurrent_per_key,
                          max_source_depth=args.max_source_depth,
                          allowed_kwargs=ServerLimits.allowed_kwargs | frozenset(args.allow_kwarg))
    keys = KeyStore.load(args.api_keys) if args.api_keys else None
    url = start(specs, port=args.port, host=args.host, keys=keys, limits=limits, replicas=args.replicas,
                actor_options={"num_cpus": args.replica_cpus, "num_gpus": args.replica_gpus},
                address=args.address, num_cpus=args.num_cpus)
    print(f"nnsight-remote {__version__} serving {', '.join(s.name for s in specs)} at {url} "
          f"({args.replicas} replica(s) each); Ctrl-C stops it.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
