"""nnsight_core: record interventions on a PyTorch model's activations and run them with its forward pass.

The core is framework-agnostic; adapters (``nnsight-torch``, ``nnsight-transformers``,
``nnsight-diffusers`` or your own) implement the hooks of :mod:`nnsight_core.hookspecs`
and register under the ``nnsight_core`` entry-point group.
"""

from __future__ import annotations

from .cache import Cache, CacheEntry
from .envoy import Envoy
from .errors import (AdapterNotFoundError, AssignmentError, BatchError, CacheError, CacheKeyError,
                     EnvoyAttributeError, GraphAccessError, GraphFormatError, GraphLimitError,
                     GradientError, GraphvizNotFoundError,
                     ImageFormatError, InputError, InterventionError, InvokeError, MissedCallError,
                     ModelKeyError, ModuleIndexError, NNsightError, OutOfOrderEditError, OutputNotReturnedError,
                     PluginLoadError, ProxyCallError, ProxyControlFlowError, ProxyScopeError, RenameError,
                     ScanError, SourceError, TokenIndexError, TraceStateError, UnsupportedMethodError,
                     ValueNotSetError)
from .errors import (ConcurrencyLimitError, GenerationLengthError, NodeLimitError, RemoteAuthError,
                     RemoteError, RemoteLimitError, RequestSizeError, RequestTimeoutError, SavedBytesError,
                     VersionSkewError)
from .graph import OPS, Graph, Node
from ._state import register_internal_package
from .hookspecs import hookimpl, hookspec
from .interleaver import Interleaver
from .model import NNsightModel
from .plugins import get_plugin_manager
from .proxy import InterventionProxy, Proxy
from .session import Session
from .tracer import Invoker, Runner
from . import serialize, vis  # noqa: F401,E402 - they add Graph.to_json/from_json/to_dot/vis (Graph.extensions)

__version__ = "0.1.0"

__all__ = [
    "AdapterNotFoundError",
    "AssignmentError",
    "BatchError",
    "Cache",
    "CacheEntry",
    "CacheError",
    "CacheKeyError",
    "ConcurrencyLimitError",
    "Envoy",
    "EnvoyAttributeError",
    "GenerationLengthError",
    "GradientError",
    "Graph",
    "GraphAccessError",
    "GraphFormatError",
    "GraphLimitError",
    "GraphvizNotFoundError",
    "ImageFormatError",
    "InputError",
    "Interleaver",
    "InterventionError",
    "InterventionProxy",
    "InvokeError",
    "Invoker",
    "MissedCallError",
    "ModelKeyError",
    "ModuleIndexError",
    "NNsightError",
    "NNsightModel",
    "Node",
    "NodeLimitError",
    "OPS",
    "OutOfOrderEditError",
    "PluginLoadError",
    "Proxy",
    "ProxyCallError",
    "ProxyControlFlowError",
    "ProxyScopeError",
    "RemoteAuthError",
    "RemoteError",
    "RemoteLimitError",
    "RequestSizeError",
    "RequestTimeoutError",
    "OutputNotReturnedError",
    "RenameError",
    "Runner",
    "SavedBytesError",
    "ScanError",
    "Session",
    "SourceError",
    "TokenIndexError",
    "TraceStateError",
    "UnsupportedMethodError",
    "ValueNotSetError",
    "VersionSkewError",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "register_internal_package",
]
