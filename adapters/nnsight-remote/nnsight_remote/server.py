"""Running one request on a loaded model: validation, limits, execution and the response.

:class:`ModelServer` is what each Ray Serve replica holds (see :mod:`nnsight_remote.serve`);
it needs no Ray, so it can be used and tested in-process. A request is checked whole
before anything runs: the envelope and its protocol version, the graph document
(:func:`nnsight_core.serialize.from_dict`: schema, closed vocabulary, sizes), the
node count, the model key, the module paths, the invokes' inputs, the keyword
arguments (an allow-list) and ``max_new_tokens``. The graph then runs through the
model's ``run_graph`` under :class:`~nnsight_core.serialize.GuardedInterleaver`
(what a loaded graph may reach, and its :class:`~nnsight_core.serialize.Limits`),
with a wall-time limit that cancels the run at the model's next call of a block (see
:func:`cancel_points`).

Example:
    >>> server = ModelServer(model, "mlp")
    >>> with model.trace(x) as tracer:
    ...     hidden = model.layer1.output.save()
    >>> from nnsight_remote.client import build_request
    >>> frames = list(server.handle(build_request(tracer, "mlp", keep=False)))
    >>> [kind for kind, _ in frames]
    [b'S', b'R']
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from importlib import metadata
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Tuple

import torch
from nnsight_core import NNsightModel
from nnsight_core.errors import (GenerationLengthError, GraphAccessError, GraphFormatError, InputError,
                                 ModelKeyError, NNsightError, NodeLimitError, RequestSizeError, RequestTimeoutError,
                                 SavedBytesError, VersionSkewError)
from nnsight_core.graph import MODULE_VALUE_OPS, Graph
from nnsight_core.serialize import VERSION as GRAPH_SCHEMA
from nnsight_core.serialize import GuardedInterleaver, Limits, from_dict
from nnsight_core.source import split_path

from . import __version__
from .wire import PROTOCOL, decode_value, encode_value, pack, parse_json, unpack

__all__ = ["ServerLimits", "ModelServer", "Request", "DEFAULT_KWARGS", "DEFAULT_INVOKER_KWARGS",
           "DEFAULT_KWARG_BOUNDS", "error_payload", "parse_error", "versions",
           "check_versions", "cancel_points"]

#: Keyword arguments a request may pass to the model's execution (``trace``/``generate``
#: kwargs): generation and sampling settings, diffusion settings, output switches. Anything
#: else (``custom_generate``, ``trust_remote_code``, ``streamer``, ...) is refused unless the
#: server adds it (``ServerLimits(allowed_kwargs=...)``, ``--allow-kwarg``).
DEFAULT_KWARGS = frozenset("""
    max_new_tokens min_new_tokens do_sample temperature top_k top_p min_p typical_p num_beams
    num_beam_groups repetition_penalty length_penalty no_repeat_ngram_size early_stopping
    num_return_sequences pad_token_id eos_token_id bos_token_id use_cache output_attentions
    output_hidden_states output_scores output_logits return_dict_in_generate return_dict
    num_inference_steps guidance_scale height width generator negative_prompt num_images_per_prompt
    eta output_type seed class_labels
""".split())


#: Keyword arguments an invoke may give its input preparation (a LanguageModel's tokenizer):
#: none that could pad a prompt to an arbitrary length.
DEFAULT_INVOKER_KWARGS = frozenset({"add_special_tokens", "truncation", "max_length"})

#: Largest values of keyword arguments that multiply the work or memory of one request.
DEFAULT_KWARG_BOUNDS = {"num_return_sequences": 16, "num_beams": 16, "num_beam_groups": 16,
                        "num_images_per_prompt": 16, "num_inference_steps": 1000, "height": 2048,
                        "width": 2048, "max_length": 65_536, "min_new_tokens": 65_536}


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one request to a server may use; each exceeded limit raises its own error.

    Example:
        >>> ServerLimits(max_new_tokens=32).max_seconds
        60.0

    Attributes:
        max_body_bytes: Largest request body (:class:`~nnsight_core.errors.RequestSizeError`).
        max_nodes: Most graph nodes (:class:`~nnsight_core.errors.NodeLimitError`).
        max_saved_bytes: Most bytes of tensors a response returns
            (:class:`~nnsight_core.errors.SavedBytesError`).
        max_new_tokens: Most new tokens a generation may ask for; a generation must name
            ``max_new_tokens`` (:class:`~nnsight_core.errors.GenerationLengthError`).
        max_seconds: Wall time of one run; it is cancelled at the next call of a block after
            it (:func:`cancel_points`; :class:`~nnsight_core.errors.RequestTimeoutError`).
        max_concurrent_per_key: Requests one API key may have in flight at once
            (:class:`~nnsight_core.errors.ConcurrencyLimitError`).
        max_source_depth: How deep a graph may look inside forwards (``.source``): 1 reaches
            the call sites of a module's own forward, 2 also those of the plain functions
            they call (library code beyond the model's), 0 none
            (:class:`~nnsight_core.errors.GraphAccessError`).
        graph: The :class:`~nnsight_core.serialize.Limits` of what the graph's own nodes compute.
        allowed_kwargs: Keyword arguments a request may pass to the model's execution.
        allowed_invoker_kwargs: Keyword arguments an invoke may pass to its input preparation.
        kwarg_bounds: Largest value of each numeric keyword argument that multiplies the work.
    """

    max_body_bytes: int = 64 * 2**20
    max_nodes: int = 20_000
    max_saved_bytes: int = 512 * 2**20
    max_new_tokens: int = 512
    max_seconds: float = 60.0
    max_concurrent_per_key: int = 4
    max_source_depth: int = 1
    graph: Limits = dataclasses.field(default_factory=Limits)
    allowed_kwargs: FrozenSet[str] = DEFAULT_KWARGS
    allowed_invoker_kwargs: FrozenSet[str] = DEFAULT_INVOKER_KWARGS
    kwarg_bounds: Any = dataclasses.field(default_factory=lambda: dict(DEFAULT_KWARG_BOUNDS))  # {name: bound}


@dataclasses.dataclass
class Request:
    """A validated request, ready to run: its graph, each invoke's inputs and preparation
    keywords, the execution's keyword arguments, the method, whether to keep every value and
    whether autograd is on (as it was around the client's trace)."""

    graph: Graph
    inputs: List[Tuple[Any, ...]]
    invoker_args: List[Dict[str, Any]]
    kwargs: Dict[str, Any]
    method: Optional[str]
    keep: bool
    grad: bool = True


_REQUEST_KEYS = frozenset({"model", "method", "keep", "grad", "client", "graph", "constants", "invokes", "kwargs"})
# Methods a request may run: the forward pass, or the wrapper's generate.
_METHODS = (None, "generate")
_CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential)
# The deadline of the run in this thread (the deadline hooks read it).
_deadline = threading.local()


class ModelServer:
    """One loaded model, answering requests: validate, run, encode the saved values.

    Example:
        >>> ModelServer(model, "mlp").describe()["modules"][:2]
        [['', 'Sequential'], ['layer1', 'Linear']]

    Args:
        model: The model wrapper (its weights are loaded on first use).
        key: The name clients address it by (usually the wrapper's ``model_key``).
        limits: The per-request limits.
    """

    def __init__(self, model: NNsightModel, key: str, limits: Optional[ServerLimits] = None) -> None:
        self.model = model
        self.key = key
        self.limits = limits or ServerLimits()
        self._points: Tuple[Any, List[torch.nn.Module]] = (None, [])  # (root module, its cancel points)

    def describe(self) -> Dict[str, Any]:
        """The model's key, wrapper class, module tree (``[path, class name]``) and versions."""
        return {"key": self.key, "wrapper": type(self.model).__name__,
                "modules": [[name, type(module).__name__] for name, module in self.model._model.named_modules()],
                "versions": versions()}

    # -- one request -----------------------------------------------------------------------

    def handle(self, body: bytes) -> Iterator[Tuple[bytes, bytes]]:
        """Answer one request: ``(b"S", running)``, then ``(b"R", result)`` or ``(b"E", error)``."""
        yield b"S", b'{"status":"running"}'
        try:
            request = self.validate(body)
            result = self.run(request)
        except Exception as error:  # noqa: BLE001 - every failure goes back to the client as data
            yield b"E", error_payload(error)
            return
        yield b"R", result

    def validate(self, body: bytes) -> Request:
        """Check the whole request before anything runs (module paths and call sites the model
        lacks are refused by :meth:`run`, also before anything runs).

        Raises:
            RequestSizeError, VersionSkewError, GraphFormatError, NodeLimitError,
            ModelKeyError, InputError, GenerationLengthError: as named.
            GraphAccessError: A call site deeper inside forwards than ``max_source_depth``.
        """
        limits = self.limits
        if len(body) > limits.max_body_bytes:
            raise RequestSizeError(f"the request body is {len(body)} bytes, more than this server's "
                                   f"limit of {limits.max_body_bytes}: send smaller inputs or constants.")
        header, tensors = unpack(body)
        unknown = sorted(set(header) - _REQUEST_KEYS)
        if unknown:
            raise GraphFormatError(f"the request has unknown field(s) {unknown}; allowed are "
                                   f"{sorted(_REQUEST_KEYS)}.")
        check_versions(header.get("client"))
        if header.get("model") != self.key:
            raise ModelKeyError(f"the request is for model {header.get('model')!r} but reached the "
                                f"deployment of {self.key!r}; address the model by its key.")
        method = header.get("method")
        if method not in _METHODS:
            raise InputError(f"the request runs method {method!r}; a server runs a forward pass (null) "
                             "or 'generate'.")
        keep, grad = header.get("keep", False), header.get("grad", True)
        if type(keep) is not bool or type(grad) is not bool:
            raise GraphFormatError("the request's 'keep' and 'grad' are true or false.")
        document = header.get("graph")
        nodes = document.get("nodes") if type(document) is dict else None
        if type(nodes) is list and len(nodes) > limits.max_nodes:
            raise NodeLimitError(f"the graph has {len(nodes)} nodes, more than this server's limit of "
                                 f"{limits.max_nodes}: split the work into several traces.")
        constants = decode_value(header.get("constants", {"list": []}), tensors, "constants")
        if type(constants) is not list:
            raise GraphFormatError("the request's 'constants' is a list of tensors.")
        graph = from_dict(document, tensors=constants)
        self._check_sources(graph)
        invokes = header.get("invokes")
        if type(invokes) is not list or len(invokes) != len(graph.rows):
            raise GraphFormatError(f"the request has {len(invokes) if type(invokes) is list else 'no'} "
                                   f"invokes' inputs but its graph has {len(graph.rows)} invoke(s).")
        inputs, invoker_args = [], []
        for k, entry in enumerate(invokes):
            if type(entry) is not dict or set(entry) != {"inputs", "kwargs"}:
                raise GraphFormatError(f"invokes[{k}]: expected {{\"inputs\": [...], \"kwargs\": {{...}}}}.")
            args = decode_value({"tuple": entry["inputs"]}, tensors, f"invokes[{k}].inputs")
            kwargs = decode_value({"dict": _pairs(entry["kwargs"], f"invokes[{k}].kwargs")}, tensors,
                                  f"invokes[{k}].kwargs")
            _check_keys(kwargs, f"invoke {k}'s keyword arguments")
            refused = sorted(set(kwargs) - limits.allowed_invoker_kwargs)
            if refused:
                raise InputError(f"this server does not pass invoke {k}'s keyword argument(s) {refused} to input "
                                 f"preparation; it accepts {sorted(limits.allowed_invoker_kwargs)}.")
            self._check_bounds(kwargs, f"invoke {k}'s")
            inputs.append(args)
            invoker_args.append(kwargs)
        kwargs = decode_value({"dict": _pairs(header.get("kwargs", {}), "kwargs")}, tensors, "kwargs")
        _check_keys(kwargs, "the trace's keyword arguments")
        refused = sorted(set(kwargs) - limits.allowed_kwargs)
        if refused:
            raise InputError(f"this server does not pass the keyword argument(s) {refused} to the model; "
                             f"it accepts {sorted(limits.allowed_kwargs)} (the operator can allow more "
                             "with --allow-kwarg).")
        # A token generation (a model with a generation config) must bound its length.
        generates_tokens = method == "generate" and getattr(self.model._model, "generation_config", None) is not None
        self._check_bounds(kwargs, "the trace's")
        if "max_new_tokens" in kwargs or generates_tokens:
            wanted = kwargs.get("max_new_tokens")
            if type(wanted) is not int or not 0 < wanted <= limits.max_new_tokens:
                raise GenerationLengthError(
                    f"a remote generate() needs max_new_tokens=N with 1 <= N <= {limits.max_new_tokens} "
                    f"(this server's limit), got {wanted!r}: pass e.g. max_new_tokens=20.")
        return Request(graph, inputs, invoker_args, kwargs, method, keep, grad)

    def _check_sources(self, graph: Graph) -> None:
        """Call sites (``.source``) no deeper than the server allows; that they exist is checked
        by ``run_graph`` before anything runs."""
        depth = self.limits.max_source_depth
        for node in graph.nodes:
            if node.op in MODULE_VALUE_OPS and len(split_path(node.target[0])[1]) > depth:
                raise GraphAccessError(
                    f"{node.describe()} (node %{node.index}) looks {len(split_path(node.target[0])[1])} "
                    f"level(s) deep inside forwards (.source), this server allows {depth}: "
                    + ("address a call site of a module's own forward, not of the functions it calls "
                       if depth else "this server does not look inside forwards; save module values instead ")
                    + "(the operator can allow more with --max-source-depth).")

    def _check_bounds(self, kwargs: Dict[str, Any], whose: str) -> None:
        for name, bound in self.limits.kwarg_bounds.items():
            value = kwargs.get(name)
            if value is not None and (type(value) is not int or not 0 <= value <= bound):
                raise InputError(f"{whose} keyword argument {name}={value!r} is outside what this server "
                                 f"runs: an integer from 0 to {bound}.")

    def run(self, request: Request) -> bytes:
        """Run a validated request; the response envelope with the saved values.

        Raises:
            RequestTimeoutError: The run went past ``limits.max_seconds`` (it is cancelled).
            SavedBytesError: The saved values are larger than ``limits.max_saved_bytes``.
            NNsightError: Whatever the trace raised, as it would locally.
        """
        limits = self.limits
        runs: List[GuardedInterleaver] = []

        def executor(graph: Graph, root: Any, attached: Any, batch: Any, keep: bool) -> GuardedInterleaver:
            interleaver = GuardedInterleaver(graph, root, attached, batch, request.keep, limits=limits.graph)
            runs.append(interleaver)
            return interleaver

        started = time.monotonic()
        if not self.model.dispatched:  # load the weights first: loading may replace the modules
            self.model.dispatch_model()
        root = self.model._model
        if self._points[0] is not root:
            self._points = (root, cancel_points(root))
        deadline = _Deadline(started + limits.max_seconds, limits.max_seconds, self._points[1])
        with deadline, torch.set_grad_enabled(request.grad):
            values = self.model.run_graph(request.graph, invokes=request.inputs, invoker_args=request.invoker_args,
                                          method=request.method, executor=executor, **request.kwargs)
        interleaver = runs[-1]
        count = len(request.graph.nodes)
        ran = "".join("1" if done else "0" for done in interleaver.done[:count])
        tensors: Dict[str, torch.Tensor] = {}
        dropped: List[str] = []
        encoded = []
        for index, value in values.items():
            # Lenient: a part with no wire form (a KV cache object) comes back as None, named in "dropped".
            encoded.append([index, encode_value(value, tensors, lenient=True, dropped=dropped, where=f"%{index}")])
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > limits.max_saved_bytes:
            raise SavedBytesError(f"the trace saves {size} bytes of tensors, more than this server returns "
                                  f"({limits.max_saved_bytes}): save fewer or smaller values (e.g. index "
                                  "the rows and positions you need before .save()).")
        header = {"values": encoded, "ran": ran, "skipped": sorted(i for i in interleaver.skipped if i < count),
                  "dropped": dropped, "seconds": round(time.monotonic() - started, 6)}
        return pack(header, tensors)


def _pairs(value: Any, where: str) -> Any:
    if type(value) is not dict:
        raise GraphFormatError(f"{where}: expected an object of keyword arguments.")
    return [[key, item] for key, item in value.items()]


def _check_keys(kwargs: Dict[Any, Any], what: str) -> None:
    for key in kwargs:
        if type(key) is not str or not key.isidentifier() or key.startswith("_"):
            raise InputError(f"{what} include the name {key!r}, which is not a public keyword.")


def versions() -> Dict[str, Any]:
    """The versions a server reports (and a client compares): wire protocol, graph schema, packages."""
    found: Dict[str, Any] = {"protocol": PROTOCOL, "graph_schema": GRAPH_SCHEMA, "nnsight_remote": __version__,
                             "torch": torch.__version__}
    for name in ("nnsight-core", "transformers", "diffusers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def check_versions(client: Any) -> None:
    """Raise :class:`~nnsight_core.errors.VersionSkewError` when the client's graph schema or
    package differ in a way this server cannot serve, naming both versions."""
    if type(client) is not dict:
        raise VersionSkewError("the request does not say which nnsight-remote client sent it ('client' "
                               f"field); this server runs nnsight-remote {__version__} with graph schema "
                               f"{GRAPH_SCHEMA}: send it with nnsight_remote.RemoteBackend.")
    schema, remote = client.get("graph_schema"), client.get("nnsight_remote")
    if schema != GRAPH_SCHEMA:
        raise VersionSkewError(f"the client writes graph schema {schema!r} (nnsight-remote {remote}) but this "
                               f"server reads graph schema {GRAPH_SCHEMA} (nnsight-remote {__version__}): "
                               "install matching versions on both sides.")


def error_payload(error: BaseException) -> bytes:
    """An exception as the JSON an ``E`` frame (or an error response) carries: class name and message."""
    if isinstance(error, NNsightError) or type(error).__module__ == "builtins":
        name, message = type(error).__name__, str(error)
    else:  # a framework's own exception: name it in the text, the client raises a RemoteError
        name, message = type(error).__name__, f"{type(error).__module__}.{type(error).__qualname__}: {error}"
    return json.dumps({"error": {"type": name, "message": message, "server": __version__}}).encode()


def cancel_points(root: torch.nn.Module) -> List[torch.nn.Module]:
    """The modules where a run past its deadline is cancelled: the root, its children and the
    items of every ``ModuleList``, ``ModuleDict`` and ``Sequential`` (a model's blocks, called
    once per layer, step or denoising step). A hook on every module would slow every call of a
    model's hundreds of small modules.

    Example:
        >>> [type(m).__name__ for m in cancel_points(model._model)]
        ['Sequential', 'Linear', 'Sigmoid', 'Linear', 'Sigmoid']
    """
    found = {id(root): root}
    found.update((id(child), child) for child in root._modules.values() if child is not None)
    stack, seen = [root], set()
    while stack:  # a flat walk: Module.modules() recurses through nested generators
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        children = [child for child in module._modules.values() if child is not None]
        if isinstance(module, _CONTAINERS):
            found.update((id(child), child) for child in children)
        stack.extend(children)
    return list(found.values())


class _Deadline:
    """Cancel the run of this thread at the first call of one of ``modules`` after ``deadline``.

    Their forward pre-hooks, there while the request runs, read the deadline of the calling
    thread (several threads may run requests on one model); threads without one are untouched.
    """

    def __init__(self, deadline: float, seconds: float, modules: List[torch.nn.Module]) -> None:
        self.deadline, self.seconds, self.modules = deadline, seconds, modules
        self.handles: List[Any] = []

    def __enter__(self) -> _Deadline:
        _deadline.value = self
        self.handles = [module.register_forward_pre_hook(_check_deadline) for module in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        _deadline.value = None
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if exc[0] is not None and time.monotonic() > self.deadline and not isinstance(exc[1], RequestTimeoutError):
            # The cancellation surfaced wrapped (e.g. inside an InterventionError): report it as what it is.
            raise self.error() from exc[1]

    def error(self) -> RequestTimeoutError:
        return RequestTimeoutError(f"the request ran longer than this server's limit of {self.seconds:g} s "
                                   "and was cancelled: trace fewer tokens, steps or invokes per request.")


def _check_deadline(module: torch.nn.Module, args: Any) -> None:
    deadline = getattr(_deadline, "value", None)
    if deadline is not None and time.monotonic() > deadline.deadline:
        raise deadline.error()


def parse_error(payload: bytes) -> Tuple[str, str]:
    """``(class name, message)`` of an error payload (a malformed one becomes a RemoteError's text)."""
    try:
        data = parse_json(payload, "error")
        error = data["error"]
        name, message = error["type"], error["message"]
        if type(name) is str and type(message) is str:
            return name, message
    except (GraphFormatError, KeyError, TypeError):
        pass
    return "RemoteError", f"the server answered with an error this client cannot read: {payload[:200]!r}"

