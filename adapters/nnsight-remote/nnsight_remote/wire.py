"""The wire format: one binary envelope each way, JSON for structure and safetensors for tensors.

Nothing executable crosses it in either direction: no pickle, no code objects, no
import paths. A message is::

    b"NNSR" | protocol (uint32, little-endian) | header length n (uint64) | n bytes of JSON | safetensors

The JSON header is strict (no ``NaN`` literals, no repeated keys, bounded nesting);
the safetensors part holds every tensor the header refers to as ``{"tensor": "t0"}``.
Values inside the header are written by :func:`encode_value` with a closed set of
tags (:data:`TAGS`): ``tuple``, ``list``, ``dict``, ``float`` (non-finite numbers),
``tensor``, ``size``, ``dtype``, ``device``, ``ndarray``, ``generator`` (a
``torch.Generator``'s state), ``output`` (a model output: its class name, looked up
on the reading side among already-loaded classes, and its fields), ``namedtuple``.

A request's header::

    {"model": "openai-community/gpt2", "method": null | "generate", "keep": false, "grad": true,
     "client": {"nnsight_remote": "0.1.0", "graph_schema": 1},
     "graph": <nnsight_core.serialize document>,
     "constants": {"list": [{"tensor": "t3"}, ...]},
     "invokes": [{"inputs": [<value>, ...], "kwargs": {<name>: <value>}}, ...],
     "kwargs": {<name>: <value>}}

The graph's tensor constants (in a session, the values of earlier traces) are not
written into the document as numbers: its tensor entries say ``{"external": i}`` and
``constants`` lists them, as tensors of the safetensors part.

A response is a stream of frames, each ``kind (1 byte) | length (uint64) | payload``:
``S`` a status (JSON ``{"status": "queued" | "running"}``), ``R`` the result (an
envelope whose header is ``{"values": [[node index, value], ...], "ran": "0110...",
"skipped": [...], "dropped": [...]}``) and ``E`` an error (JSON ``{"error": {"type",
"message"}}``). Requests refused before they run get a plain JSON error body with an
HTTP error status instead.

Example:
    >>> body = pack({"x": encode_value((1, torch.ones(2)), tensors := {})}, tensors)
    >>> header, blobs = unpack(body)
    >>> decode_value(header["x"], blobs)
    (1, tensor([1., 1.]))
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import sys
from collections import UserDict
from collections.abc import Mapping
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from nnsight_core.errors import GraphFormatError, VersionSkewError
from safetensors.torch import load as _load_tensors
from safetensors.torch import save as _save_tensors


__all__ = ["MAGIC", "PROTOCOL", "TAGS", "MAX_HEADER_BYTES", "MAX_DEPTH", "pack", "unpack",
           "encode_value", "decode_value", "frame", "read_frames", "Unencodable", "output_classes",
           "parse_json"]

#: First bytes of every envelope.
MAGIC = b"NNSR"
#: Version of this wire format; client and server must agree (else :class:`~nnsight_core.errors.VersionSkewError`).
#: 2: the graph's tensor constants travel as safetensors (``"constants"``).
PROTOCOL = 2
#: Largest JSON header an envelope may carry, in bytes.
MAX_HEADER_BYTES = 64 * 2**20
#: Deepest nesting of tagged values.
MAX_DEPTH = 32
#: The value tags a header may use.
TAGS = frozenset({"tuple", "list", "dict", "float", "tensor", "size", "dtype", "device", "ndarray",
                  "generator", "output", "namedtuple"})

_PREFIX = struct.Struct("<4sIQ")
_FRAME = struct.Struct("<cQ")
_DTYPES = {name: getattr(torch, name) for name in (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex64", "complex128")}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_DEVICE_TYPES = frozenset({"cpu", "cuda", "mps", "xpu", "hpu", "meta"})


class Unencodable(Exception):
    """Raised inside :func:`encode_value` for a value the wire has no form for."""


# -- envelopes ------------------------------------------------------------------------------


def pack(header: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> bytes:
    """One envelope: the JSON ``header`` and the ``tensors`` it refers to, as safetensors."""
    head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")
    blob = _save_tensors(tensors) if tensors else b""
    return _PREFIX.pack(MAGIC, PROTOCOL, len(head)) + head + blob


def unpack(body: bytes, what: str = "request") -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """The header and tensors of an envelope, checked; nothing in it is executed.

    Raises:
        VersionSkewError: The envelope is of another protocol version.
        GraphFormatError: Anything else is malformed (names the part).
    """
    if len(body) < _PREFIX.size:
        raise GraphFormatError(f"the {what} is {len(body)} bytes, too short for an nnsight-remote "
                               f"envelope ({_PREFIX.size} bytes of prefix).")
    magic, protocol, length = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise GraphFormatError(f"the {what} does not start with {MAGIC!r}: it is not an nnsight-remote "
                               "envelope (send it with nnsight_remote.RemoteBackend).")
    if protocol != PROTOCOL:
        raise VersionSkewError(f"the {what} uses nnsight-remote wire protocol {protocol}, this side speaks "
                               f"protocol {PROTOCOL}: install matching nnsight-remote versions on the "
                               "client and the server.")
    if length > min(MAX_HEADER_BYTES, len(body) - _PREFIX.size):
        raise GraphFormatError(f"the {what}'s header claims {length} bytes, more than the envelope holds "
                               f"or MAX_HEADER_BYTES = {MAX_HEADER_BYTES}.")
    head = body[_PREFIX.size:_PREFIX.size + length]
    header = parse_json(head, what)
    if type(header) is not dict:
        raise GraphFormatError(f"the {what}'s header is not a JSON object.")
    blob = body[_PREFIX.size + length:]
    try:
        tensors = _load_tensors(bytes(blob)) if blob else {}
    except Exception as error:  # noqa: BLE001 - safetensors raises several kinds for bad bytes
        raise GraphFormatError(f"the {what}'s tensors are not valid safetensors: {error}") from None
    return header, tensors


def parse_json(text: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity literals, no repeated keys, bounded nesting."""
    try:
        return json.loads(text.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique)
    except GraphFormatError:
        raise
    except RecursionError:
        raise GraphFormatError(f"the {what}'s JSON nests too deeply.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise GraphFormatError(f"the {what}'s header is not valid JSON: {error}") from None


def _reject_constant(name: str) -> Any:
    raise GraphFormatError(f"the JSON contains the non-standard constant {name}.")


def _unique(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise GraphFormatError("the JSON repeats a key in one object.")
    return result


# -- response frames -----------------------------------------------------------------------


def frame(kind: bytes, payload: bytes) -> bytes:
    """One frame of a response stream: ``S`` status, ``R`` result, ``E`` error."""
    return _FRAME.pack(kind, len(payload)) + payload


def read_frames(chunks: Iterator[bytes], max_bytes: int) -> Iterator[Tuple[bytes, bytes]]:
    """The ``(kind, payload)`` frames of a response stream given as byte chunks.

    Raises:
        GraphFormatError: A frame is cut short, of an unknown kind, or larger than ``max_bytes``.
    """
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= _FRAME.size:
            kind, length = _FRAME.unpack_from(buffer)
            if kind not in (b"S", b"R", b"E") or length > max_bytes:
                raise GraphFormatError(f"the server's response has a frame of kind {kind!r} and {length} "
                                       "bytes, which this client does not read.")
            if len(buffer) < _FRAME.size + length:
                break
            payload = bytes(buffer[_FRAME.size:_FRAME.size + length])
            del buffer[:_FRAME.size + length]
            yield kind, payload
    if buffer:
        raise GraphFormatError("the server's response ended in the middle of a frame (the connection "
                               "was cut).")


# -- values ----------------------------------------------------------------------------------


def encode_value(value: Any, tensors: Dict[str, torch.Tensor], lenient: bool = False,
                 dropped: Optional[List[str]] = None, where: str = "value") -> Any:
    """``value`` as JSON with tagged containers; its tensors are added to ``tensors``.

    Args:
        value: Scalars, strings, tuples, lists, dicts (and ``UserDict`` s such as a
            ``BatchEncoding``), tensors, ``torch.Size``, dtypes, devices, numpy arrays,
            ``torch.Generator`` s, model outputs (dataclasses that are dicts, as
            ``ModelOutput`` and ``BaseOutput`` are) and named tuples, nested. Other objects
            (a config dataclass, a module, ``os.environ``) have no wire form.
        tensors: Where tensors go, keyed ``t0``, ``t1``, ... (each tensor object once).
        lenient: Write ``None`` for a part with no wire form (and note its path in
            ``dropped``) instead of raising.
        dropped: Collects the paths of parts written as ``None``.
        where: The value's name, for messages.

    Raises:
        Unencodable: A part has no wire form and ``lenient`` is False.
    """
    return _Encoder(tensors, lenient, dropped).value(value, where, 0)


class _Encoder:
    def __init__(self, tensors: Dict[str, torch.Tensor], lenient: bool, dropped: Optional[List[str]]) -> None:
        self.tensors = tensors
        self.lenient = lenient
        self.dropped = dropped if dropped is not None else []
        self.by_id: Dict[int, str] = {}
        self.keep: List[Any] = []  # keeps ids unique while encoding
        # safetensors refuses tensors sharing memory: later views of a storage are copied.
        self.storages = {_storage(t) for t in tensors.values()}

    def value(self, value: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            return self.fail(f"{where} nests deeper than {MAX_DEPTH} levels", where)
        kind = type(value)
        if value is None or kind in (bool, int, str):
            return value
        if kind is float:
            return value if math.isfinite(value) else {"float": repr(value)}
        if isinstance(value, torch.Tensor):
            return self.tensor(value, where)
        if kind is torch.Size:
            return {"size": list(value)}
        if kind is torch.dtype:
            name = _DTYPE_NAMES.get(value)
            return {"dtype": name} if name else self.fail(f"{where} is the dtype {value}", where)
        if kind is torch.device:
            return {"device": str(value)}
        if kind is torch.Generator:
            state = value.get_state()
            return {"generator": {"device": str(value.device), "state": self.tensor(state, where)["tensor"]}}
        if kind.__module__ == "numpy" and kind.__name__ == "ndarray":
            try:
                return {"ndarray": self.tensor(torch.from_numpy(value), where)["tensor"]}
            except TypeError:
                return self.fail(f"{where} is a numpy array of dtype {value.dtype}", where)
        if dataclasses.is_dataclass(value) and isinstance(value, Mapping) and not isinstance(value, type):
            names = [f.name for f in dataclasses.fields(value)]
            fields = [[name, self.value(getattr(value, name, None), f"{where}.{name}", depth + 1)]
                      for name in names]
            return {"output": {"class": kind.__name__, "fields": fields}}
        names = _field_names(kind) if isinstance(value, tuple) else None
        if names:  # a named tuple, or a structseq such as torch.return_types.max
            return {"namedtuple": {"class": f"{kind.__module__}.{kind.__qualname__}",
                                   "fields": [self.value(v, f"{where}.{n}", depth + 1)
                                              for n, v in zip(names, value)]}}
        if kind is tuple or kind is list:
            return {kind.__name__: [self.value(v, f"{where}[{k}]", depth + 1) for k, v in enumerate(value)]}
        if isinstance(value, (dict, UserDict)):  # not any Mapping: os.environ is one
            items = []
            for key, item in value.items():
                if not (key is None or type(key) in (bool, int, str)):
                    return self.fail(f"{where} has a key of type {type(key).__name__}", where)
                items.append([key, self.value(item, f"{where}[{key!r}]", depth + 1)])
            return {"dict": items}
        return self.fail(f"{where} is a {kind.__module__}.{kind.__qualname__}, which has no wire form", where)

    def tensor(self, tensor: torch.Tensor, where: str) -> Any:
        key = self.by_id.get(id(tensor))
        if key is not None:
            return {"tensor": key}
        if tensor.layout is not torch.strided or tensor.device.type == "meta" or tensor.dtype not in _DTYPE_NAMES:
            return self.fail(f"{where} is a {tensor.layout} {tensor.dtype} tensor on {tensor.device}", where)
        data = tensor.detach().resolve_conj().resolve_neg().to("cpu").contiguous()
        storage = _storage(data)
        if storage in self.storages:
            data = data.clone()
            storage = _storage(data)
        self.storages.add(storage)
        key = f"t{len(self.tensors)}"
        self.tensors[key] = data
        self.by_id[id(tensor)] = key
        self.keep.append(tensor)
        return {"tensor": key}

    def fail(self, problem: str, where: str) -> Any:
        if not self.lenient:
            raise Unencodable(problem)
        self.dropped.append(where)
        return None


def _storage(tensor: torch.Tensor) -> Any:
    try:
        return tensor.untyped_storage().data_ptr() or id(tensor)
    except (RuntimeError, NotImplementedError):
        return id(tensor)


def decode_value(raw: Any, tensors: Dict[str, torch.Tensor], where: str = "value",
                 outputs: Optional[Dict[str, type]] = None, depth: int = 0) -> Any:
    """Rebuild a value :func:`encode_value` wrote; every part is checked.

    Args:
        raw: The JSON value.
        tensors: The envelope's tensors.
        where: The value's name, for messages.
        outputs: Model-output classes by name that ``{"output": ...}`` may rebuild (see
            :func:`output_classes`); others come back as a dict. Named tuples are rebuilt
            only from ``torch.return_types``.

    Raises:
        GraphFormatError: A tag, a tensor reference or a scalar is not valid.
    """
    if depth > MAX_DEPTH:
        raise GraphFormatError(f"{where} nests deeper than {MAX_DEPTH} levels.")
    kind = type(raw)
    if raw is None or kind in (bool, int, str):
        return raw
    if kind is float:
        if not math.isfinite(raw):
            raise GraphFormatError(f"{where}: a non-finite number is written {{\"float\": \"nan\"}}.")
        return raw
    if kind is not dict or len(raw) != 1:
        raise GraphFormatError(f"{where}: a value is a scalar, a string or an object with one key of "
                               f"{sorted(TAGS)}.")
    (tag, payload), = raw.items()
    if tag not in TAGS:
        raise GraphFormatError(f"{where}: unknown value kind {tag!r}; allowed are {sorted(TAGS)}.")

    def items(value: Any, name: str) -> List[Any]:
        if type(value) is not list:
            raise GraphFormatError(f"{where}.{name}: expected a list.")
        return [decode_value(v, tensors, f"{where}[{k}]", outputs, depth + 1) for k, v in enumerate(value)]

    if tag == "tuple":
        return tuple(items(payload, tag))
    if tag == "list":
        return items(payload, tag)
    if tag == "dict":
        if type(payload) is not list or not all(type(p) is list and len(p) == 2 for p in payload):
            raise GraphFormatError(f"{where}.dict: expected a list of [key, value] pairs.")
        result = {}
        for key, item in payload:
            if not (key is None or type(key) in (bool, int, str)):
                raise GraphFormatError(f"{where}.dict: keys are strings, integers, booleans or null.")
            result[key] = decode_value(item, tensors, f"{where}[{key!r}]", outputs, depth + 1)
        return result
    if tag == "float":
        if payload not in ("nan", "inf", "-inf"):
            raise GraphFormatError(f'{where}.float: expected "nan", "inf" or "-inf".')
        return float(payload)
    if tag == "tensor":
        return _tensor(payload, tensors, where)
    if tag == "ndarray":
        return _tensor(payload, tensors, where).numpy()
    if tag == "size":
        if type(payload) is not list or len(payload) > 64 or not all(type(s) is int and s >= 0 for s in payload):
            raise GraphFormatError(f"{where}.size: expected a list of sizes >= 0.")
        return torch.Size(payload)
    if tag == "dtype":
        if payload not in _DTYPES:
            raise GraphFormatError(f"{where}.dtype: expected one of {sorted(_DTYPES)}.")
        return _DTYPES[payload]
    if tag == "device":
        return _device(payload, where)
    if tag == "generator":
        if type(payload) is not dict or set(payload) != {"device", "state"}:
            raise GraphFormatError(f"{where}.generator: expected {{\"device\", \"state\"}}.")
        state = _tensor(payload["state"], tensors, where)
        try:
            generator = torch.Generator(device=_device(payload["device"], where))
            generator.set_state(state)
        except (RuntimeError, TypeError, ValueError) as error:
            raise GraphFormatError(f"{where}.generator: not a generator state: {error}") from None
        return generator
    # Model outputs and named tuples.
    if type(payload) is not dict or set(payload) != {"class", "fields"} or type(payload["class"]) is not str:
        raise GraphFormatError(f"{where}.{tag}: expected {{\"class\": name, \"fields\": [...]}}.")
    name = payload["class"]
    if tag == "namedtuple":
        values = items(payload["fields"], tag)
        cls = _return_type(name)
        return cls(values) if cls is not None and len(values) == len(_field_names(cls)) else tuple(values)
    fields = payload["fields"]
    if type(fields) is not list or not all(type(f) is list and len(f) == 2 and type(f[0]) is str for f in fields):
        raise GraphFormatError(f"{where}.output: fields are [name, value] pairs.")
    values = {key: decode_value(item, tensors, f"{where}.{key}", outputs, depth + 1) for key, item in fields}
    cls = (outputs or {}).get(name)
    if cls is None:
        return values
    try:
        return cls(**values)
    except TypeError:
        return values


def _tensor(key: Any, tensors: Dict[str, torch.Tensor], where: str) -> torch.Tensor:
    if type(key) is not str or key not in tensors:
        raise GraphFormatError(f"{where}: refers to the tensor {key!r}, which the envelope does not hold.")
    return tensors[key]


def _device(payload: Any, where: str) -> torch.device:
    if type(payload) is not str or payload.split(":")[0] not in _DEVICE_TYPES or len(payload) > 16:
        raise GraphFormatError(f"{where}.device: expected a device such as 'cpu' or 'cuda:0'.")
    try:
        return torch.device(payload)
    except (RuntimeError, ValueError):
        raise GraphFormatError(f"{where}.device: {payload!r} is not a device.") from None


def _return_type(name: str) -> Optional[type]:
    prefix = "torch.return_types."
    if not name.startswith(prefix):
        return None
    short = name[len(prefix):]
    cls = getattr(torch.return_types, short, None) if short in getattr(torch.return_types, "__all__", ()) else None
    return cls if isinstance(cls, type) and _field_names(cls) else None


def _field_names(cls: type) -> Optional[Tuple[str, ...]]:
    """The field names of a named tuple or structseq class, or None."""
    names = getattr(cls, "_fields", None) or getattr(cls, "__match_args__", None)
    return tuple(names) if names and all(type(n) is str for n in names) else None


def output_classes() -> Dict[str, type]:
    """Model-output classes a response may name, by class name: subclasses of the model-output
    bases of frameworks this process has already imported (transformers' ``ModelOutput``,
    diffusers' ``BaseOutput``). Nothing is imported to find them."""
    bases = []
    for module, name in (("transformers.utils", "ModelOutput"), ("diffusers.utils", "BaseOutput")):
        loaded = sys.modules.get(module)
        base = getattr(loaded, name, None) if loaded is not None else None
        if isinstance(base, type):
            bases.append(base)
    found: Dict[str, type] = {}
    stack = list(bases)
    while stack:
        cls = stack.pop()
        found.setdefault(cls.__name__, cls)
        stack.extend(cls.__subclasses__())
    return found
