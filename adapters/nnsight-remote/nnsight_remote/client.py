"""The client: :class:`RemoteBackend` sends a finished trace to a server and fills in its results.

A trace opened with ``remote=True`` (or ``backend=RemoteBackend(...)``) records and
scans locally as always, so shape errors are caught before anything is sent; when
its block exits the Runner hands itself to the backend instead of running the model.
The backend writes the graph (:func:`nnsight_core.serialize.to_dict`), the invokes'
raw inputs and the trace's keyword arguments into one envelope
(:mod:`nnsight_remote.wire`), POSTs it to ``/v1/trace`` and reads the answer: the
saved values, rebuilt as the same types, become the proxies' values; an error is
raised as the same :mod:`nnsight_core.errors` class with the server's message.

Example:
    >>> backend = RemoteBackend("http://127.0.0.1:8000", api_key="...", progress=False)
    >>> backend.url
    'http://127.0.0.1:8000'
"""

from __future__ import annotations

import os
import re
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple

import httpx
import nnsight_core.errors as _errors
import torch
from nnsight_core.errors import InputError, OutputNotReturnedError, RemoteError
from nnsight_core.graph import Graph, format_location
from nnsight_core.serialize import VERSION as GRAPH_SCHEMA
from nnsight_core.serialize import to_dict

from . import __version__
from .server import parse_error
from .wire import (PROTOCOL, Unencodable, decode_value, encode_value, output_classes, pack, read_frames,
                   unpack)

if TYPE_CHECKING:
    from nnsight_core import NNsightModel, Runner

__all__ = ["RemoteBackend", "RequestStats", "build_request", "model_key_of", "remote_exception", "URL_ENV", "KEY_ENV"]

#: Environment variable with the server's URL (``remote=True`` reads it).
URL_ENV = "NNSIGHT_REMOTE_URL"
#: Environment variable with the API key (``remote=True`` and ``RemoteBackend()`` read it).
KEY_ENV = "NNSIGHT_API_KEY"

# Exceptions a server may name that the client raises as themselves: every class of
# nnsight_core.errors and a few built-ins, found by name in this closed table (the
# server's text never makes the client import anything).
_ERRORS: Dict[str, type] = {name: getattr(_errors, name) for name in _errors.__all__}
_ERRORS.update({cls.__name__: cls for cls in (ValueError, TypeError, RuntimeError, IndexError, KeyError,
                                              AttributeError, NotImplementedError, ZeroDivisionError,
                                              OverflowError, AssertionError, LookupError)})
_NODE_REF = re.compile(r"%(\d+)")


class RemoteBackend:
    """Runs traces on an nnsight-remote server; pass it as ``backend=`` (or use ``remote=True``).

    Example:
        >>> backend = RemoteBackend("http://127.0.0.1:8000", api_key="secret", progress=False)
        >>> backend.headers()["Authorization"]
        'Bearer secret'

    Args:
        url: The server (``http://host:port``); default ``$NNSIGHT_REMOTE_URL``.
        api_key: Its API key; default ``$NNSIGHT_API_KEY`` (none for a ``--no-auth`` server).
        model: The server's name for the model; default the wrapper's ``model_key`` when it
            is a string (``LanguageModel("openai-community/gpt2")``), else its module's
            class name.
        timeout: Seconds to wait for the answer, queueing included.
        progress: Print ``queued`` / ``running`` / ``done`` lines to standard error: True
            as they happen (the server then also streams when the replica starts running),
            False never, None (default) one line at the end of a request that took 2 s.

    Attributes:
        last: The :class:`RequestStats` of the latest request that got a result (from any
            thread using this backend), or None.

    Raises:
        RemoteError: No URL given and ``$NNSIGHT_REMOTE_URL`` unset.
    """

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, *, model: Optional[str] = None,
                 timeout: float = 600.0, progress: Optional[bool] = None) -> None:
        url = url or os.environ.get(URL_ENV)
        if not url:
            raise RemoteError(f"remote execution needs a server URL: set {URL_ENV}=http://host:port or pass "
                              "backend=RemoteBackend(url, api_key=...).")
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(KEY_ENV)
        self.model = model
        self.timeout = timeout
        self.progress = progress
        # One connection pool per backend (thread-safe): a new TCP connection and client per
        # request would cost about 20 ms on loopback.
        self._http = httpx.Client(timeout=timeout)
        self.last: Optional[RequestStats] = None

    def headers(self) -> Dict[str, str]:
        """The HTTP headers of a request: the API key and the versions the server checks."""
        headers = {"X-NNsight-Protocol": str(PROTOCOL), "X-NNsight-Remote-Version": __version__,
                   "Content-Type": "application/x-nnsight-remote"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def models(self) -> Any:
        """``GET /v1/models``: the served models with their module trees and versions."""
        try:
            response = self._http.get(f"{self.url}/v1/models", headers=self.headers())
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None
        if response.status_code != 200:
            raise remote_exception(*parse_error(response.content))
        return response.json()

    def __call__(self, runner: Runner, keep: bool) -> OutputNotReturnedError:
        """Run ``runner``'s trace on the server and fill its ``trace_state``.

        The server sends back saved values only, so the model's output is not returned:
        reading ``tracer.output`` afterwards raises the
        :class:`~nnsight_core.errors.OutputNotReturnedError` this returns (save
        ``model.output`` inside the trace instead)."""
        key = self.model or model_key_of(runner.model_wrapper)
        body = build_request(runner, key, keep)
        values, ran, skipped, dropped = self.send(body, key, runner.graph)
        state = runner.trace_state
        state.values, state.ran, state.skipped = values, ran, skipped
        if dropped:
            warnings.warn(f"the server could not send back parts of saved values that are not data "
                          f"(e.g. a KV cache object): {', '.join(dropped[:8])}{' ...' if len(dropped) > 8 else ''} "
                          "came back as None.", stacklevel=3)
        return OutputNotReturnedError(
            f"tracer.output is not sent back by a remote trace (model {key!r} ran on {self.url}): the server "
            "returns saved values only. Save the model's output inside the trace, `out = model.output.save()`, "
            "and read out.value.")

    def send(self, body: bytes, key: str, graph: Optional[Graph] = None) -> Tuple[Dict[int, Any], list, frozenset, list]:
        """POST one request; its values, which nodes ran, which were skipped, what was dropped.

        Raises:
            NNsightError: The server's error, as the same class with the same message.
            RemoteError: The server cannot be reached, or the connection broke.
        """
        headers = dict(self.headers(), **{"X-NNsight-Model": key})
        if self.progress:  # the server streams "running" when the replica starts (costs a few ms)
            headers["X-NNsight-Progress"] = "1"
        started = time.monotonic()
        status = _Progress(key, self.progress, started)
        received = [0]

        def counted(chunks: Any) -> Any:
            for chunk in chunks:
                received[0] += len(chunk)
                yield chunk

        try:
            with self._http.stream("POST", f"{self.url}/v1/trace", content=body, headers=headers) as response:
                if response.status_code != 200:
                    raise remote_exception(*parse_error(response.read()), graph=graph)
                for kind, payload in read_frames(counted(response.iter_bytes()), 2**40):
                    if kind == b"S":
                        status.update(payload)
                    elif kind == b"E":
                        status.done("failed")
                        raise remote_exception(*parse_error(payload), graph=graph)
                    else:
                        status.done("done")
                        *results, server_seconds = _results(payload)
                        self.last = RequestStats(len(body), received[0], time.monotonic() - started,
                                                 server_seconds)
                        return tuple(results)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None
        except _errors.GraphFormatError as error:
            if type(error) is not _errors.GraphFormatError or not str(error).startswith("the server's response"):
                raise
            raise RemoteError(f"the answer of {self.url} for model {key!r} broke off: {error} The request "
                              "may not have run; run the trace again.") from None
        raise RemoteError(f"{self.url} ended its answer for model {key!r} without a result (the replica "
                          "may have stopped); run the trace again.")

    def _unreachable(self, error: Exception) -> RemoteError:
        return RemoteError(f"cannot reach the nnsight-remote server at {self.url}: {type(error).__name__}: "
                           f"{error}. Start one (`python -m nnsight_remote serve MODEL ...`) or check "
                           f"{URL_ENV}.")


class RequestStats(NamedTuple):
    """What one request cost (``RemoteBackend.last``): bytes each way and seconds.

    Attributes:
        request_bytes: The request body.
        response_bytes: The answer, all frames.
        seconds: From sending the request to reading its result, on the client.
        server_seconds: The replica's run of it: preparing the inputs, running the model with
            the graph, encoding the saved values (the rest is HTTP, Serve's routing, queueing
            and the client's decoding).
    """

    request_bytes: int
    response_bytes: int
    seconds: float
    server_seconds: float


def _results(payload: bytes) -> Tuple[Dict[int, Any], list, frozenset, list, float]:
    header, tensors = unpack(payload, "response")
    outputs = output_classes()
    values = {}
    for index, raw in header.get("values", []):
        values[int(index)] = decode_value(raw, tensors, f"%{index}", outputs)
    ran = [c == "1" for c in header.get("ran", "")]
    seconds = header.get("seconds")
    return (values, ran, frozenset(header.get("skipped", [])), list(header.get("dropped", [])),
            float(seconds) if type(seconds) in (int, float) else 0.0)


class _Progress:
    """The queued / running / done line of a request: each step as it comes (``progress=True``),
    or one summary line at the end of a request that took 2 s or more (``progress=None``)."""

    def __init__(self, key: str, mode: Optional[bool], started: float) -> None:
        self.key, self.mode, self.started = key, mode, started
        self.steps: list = []

    def update(self, payload: bytes) -> None:
        self._step("running" if b"running" in payload else "queued")

    def done(self, what: str) -> None:
        self._step(what)
        if self.mode is None and time.monotonic() - self.started >= 2.0:
            print(f"[nnsight-remote] {self.key}: {', '.join(self.steps)}", file=sys.stderr)

    def _step(self, what: str) -> None:
        step = f"{what} {time.monotonic() - self.started:.1f} s"
        self.steps.append(step)
        if self.mode:
            print(f"[nnsight-remote] {self.key}: {step}", file=sys.stderr)


def model_key_of(model: NNsightModel) -> str:
    """The name a server knows ``model`` by: its ``model_key`` if a string, else its module's class name."""
    key = model.model_key
    return key if isinstance(key, str) else type(model._model).__name__


def build_request(runner: Runner, key: str, keep: bool) -> bytes:
    """The request envelope of a finished trace (graph, invokes' raw inputs, keyword arguments).

    Raises:
        GraphFormatError: The graph holds something a document cannot (``tracer.apply``, a lambda).
        InputError: An input or keyword argument has no wire form.
    """
    tensors: Dict[str, torch.Tensor] = {}

    def encode(value: Any, where: str) -> Any:
        try:
            return encode_value(value, tensors, where=where)
        except Unencodable as error:
            raise InputError(f"{error}: a remote trace sends its inputs and keyword arguments as data "
                             "(tensors, strings, numbers, lists, dicts, token ids, torch.Generator); "
                             "convert it, or run the trace locally.") from None

    invokes = [{"inputs": encode(tuple(invoker.inputs), f"invoke {k}'s inputs")["tuple"],
                "kwargs": {name: encode(value, f"invoke {k}'s {name}=") for name, value in invoker.kwargs.items()}}
               for k, invoker in enumerate(runner.invokers)]
    constants: List[torch.Tensor] = []  # the graph's tensor constants travel as safetensors, not JSON numbers
    document = to_dict(runner.graph, tensors=constants)
    header = {"model": key, "method": runner.method, "keep": keep, "grad": torch.is_grad_enabled(),
              "client": {"nnsight_remote": __version__, "graph_schema": GRAPH_SCHEMA, "protocol": PROTOCOL},
              "graph": document, "constants": encode(constants, "the graph's tensor constants"), "invokes": invokes,
              "kwargs": {name: encode(value, f"{name}=") for name, value in runner.execution_kwargs.items()}}
    return pack(header, tensors)


def remote_exception(name: str, message: str, graph: Optional[Graph] = None) -> Exception:
    """The exception the server named, as the client raises it: the same class (from a closed
    table of nnsight_core's errors and a few built-ins) with the same message, plus the
    user's lines of the nodes it names; an unknown class becomes a RemoteError."""
    if graph is not None:
        message = _with_locations(message, graph)
    cls = _ERRORS.get(name)
    if cls is None:
        return RemoteError(f"the server raised {name}: {message}")
    return cls(message)


def _with_locations(message: str, graph: Graph) -> str:
    """Append where each node the message names was recorded (the server has no source lines)."""
    lines = []
    for index in dict.fromkeys(int(i) for i in _NODE_REF.findall(message)):
        if index < len(graph.nodes) and graph.nodes[index].where is not None:
            lines.append(f"  node %{index} was recorded at {format_location(graph.nodes[index].where)}")
    return message + ("\n" + "\n".join(lines) if lines else "")
