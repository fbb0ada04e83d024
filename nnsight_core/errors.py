"""Exceptions raised by nnsight_core and its adapters.

Every exception subclasses :class:`NNsightError` and the nearest built-in, so
``except ValueError`` keeps working for code written against plain PyTorch.
Messages name the module path, invoke or node involved, then the fix.
"""

from __future__ import annotations

__all__ = [
    "NNsightError",
    "ValueNotSetError",
    "ProxyControlFlowError",
    "ProxyScopeError",
    "EnvoyAttributeError",
    "ModuleIndexError",
    "TraceStateError",
    "InvokeError",
    "BatchError",
    "MissedCallError",
    "OutOfOrderEditError",
    "InterventionError",
    "AdapterNotFoundError",
    "InputError",
    "ModelKeyError",
    "ProxyCallError",
    "TokenIndexError",
    "AssignmentError",
    "GraphvizNotFoundError",
    "ImageFormatError",
    "PluginLoadError",
    "GraphFormatError",
    "GraphAccessError",
    "GraphLimitError",
    "CacheError",
    "CacheKeyError",
    "GradientError",
    "ScanError",
    "RenameError",
    "UnsupportedMethodError",
    "SourceError",
    "RemoteError",
    "RemoteAuthError",
    "VersionSkewError",
    "RemoteLimitError",
    "RequestSizeError",
    "NodeLimitError",
    "SavedBytesError",
    "GenerationLengthError",
    "RequestTimeoutError",
    "ConcurrencyLimitError",
    "OutputNotReturnedError",
]


class NNsightError(Exception):
    """Raised for any misuse or failure detected by nnsight_core (base class)."""


class ValueNotSetError(NNsightError, ValueError):
    """Raised when a proxy's value is read before it exists or after it was freed."""


class OutputNotReturnedError(ValueNotSetError):
    """Raised when ``tracer.output`` is read after a trace whose backend ran it elsewhere and did not return the model's output."""


class ProxyControlFlowError(NNsightError, TypeError):
    """Raised when Python control flow (``if``, ``len``, ``for``) is used on a proxy inside a trace."""


class ProxyScopeError(NNsightError, RuntimeError):
    """Raised when a proxy is used in a trace it does not belong to."""


class EnvoyAttributeError(NNsightError, AttributeError):
    """Raised when an envoy has no child module or module attribute of the requested name."""


class ModuleIndexError(NNsightError, IndexError):
    """Raised when a module container (``ModuleList``, ``Sequential``) is indexed out of range."""


class TraceStateError(NNsightError, RuntimeError):
    """Raised when an API that needs an open trace (or no open trace) is used at the wrong time."""


class InvokeError(NNsightError, RuntimeError):
    """Raised when invokes are opened, nested or sized in a way the Runner cannot batch."""


class BatchError(NNsightError, ValueError):
    """Raised when invokes' inputs or an edit cannot be mapped onto the batch rows."""


class MissedCallError(NNsightError, RuntimeError):
    """Raised when the graph waits on a module call that never happened during execution."""


class OutOfOrderEditError(NNsightError, RuntimeError):
    """Raised when an edit of a module value depends on a value computed after that module ran."""


class InterventionError(NNsightError, RuntimeError):
    """Raised when a recorded operation fails while the model runs; the cause is chained."""


class AdapterNotFoundError(NNsightError, LookupError):
    """Raised when no installed adapter answers a hook for a model class."""


class InputError(NNsightError, ValueError):
    """Raised when a trace or invoke gets no inputs, or inputs its adapter cannot use."""


class ModelKeyError(NNsightError, TypeError):
    """Raised when a model wrapper is given a model key its adapter cannot load."""


class ProxyCallError(NNsightError, TypeError):
    """Raised when a proxy that is not a method of a value is called inside a trace."""


class TokenIndexError(NNsightError, IndexError):
    """Raised when a token index falls outside the tokens of the invoke it is used in."""


class AssignmentError(NNsightError, ValueError):
    """Raised when a value assigned to a module's output or input does not fit the value it replaces."""


class GraphvizNotFoundError(NNsightError, RuntimeError):
    """Raised when a graph is drawn but the ``graphviz`` package or the ``dot`` program is missing."""


class ImageFormatError(NNsightError, ValueError):
    """Raised when a graph is drawn in an image format that ``Graph.vis`` does not render."""


class PluginLoadError(NNsightError, ImportError):
    """Raised when a plugin registered under the ``nnsight_core`` entry-point group fails to load."""


class GraphFormatError(NNsightError, ValueError):
    """Raised when a graph cannot be written as JSON, or a JSON document is not a valid graph."""


class GraphAccessError(GraphFormatError):
    """Raised when a graph run by ``serialize.run`` reaches for an attribute, method or object a loaded graph may not touch."""


class GraphLimitError(GraphFormatError):
    """Raised when a graph run by ``serialize.run`` would exceed one of its resource ``Limits``."""


class GradientError(NNsightError, RuntimeError):
    """Raised when a gradient is read, assigned or computed where autograd cannot provide it."""


class CacheError(NNsightError, ValueError):
    """Raised when ``tracer.cache()`` gets modules or options it cannot use, or cannot estimate its memory."""


class CacheKeyError(NNsightError, KeyError):
    """Raised when a cache is asked for a module it does not hold."""

    def __str__(self) -> str:
        # KeyError quotes its message; this one is a sentence.
        return str(self.args[0]) if self.args else ""


class ScanError(NNsightError, RuntimeError):
    """Raised when a proxy's shape, dtype or device is asked inside a trace but the scan on fake tensors cannot know it."""


class RenameError(NNsightError, ValueError):
    """Raised when a ``rename=`` table (given, or an adapter's built-in names) does not fit the model's modules."""


class UnsupportedMethodError(NNsightError, TypeError):
    """Raised when a wrapper is asked to run a method its model does not have (``generate`` on a classifier)."""


class SourceError(NNsightError, RuntimeError):
    """Raised when ``.source`` cannot look inside a forward or function: no Python source, or no such call site."""
class RemoteError(NNsightError, RuntimeError):
    """Raised when a remote backend cannot run a trace: the server is unreachable, a replica died, or it raised an error this client does not know."""


class RemoteAuthError(RemoteError, PermissionError):
    """Raised when a remote server refuses a request for a missing or unknown API key."""


class VersionSkewError(RemoteError):
    """Raised when a remote client and server speak different wire protocol or graph schema versions."""


class RemoteLimitError(RemoteError):
    """Raised when a request to a remote server exceeds one of its per-request limits (base class)."""


class RequestSizeError(RemoteLimitError):
    """Raised when a remote request's body is larger than the server accepts."""


class NodeLimitError(RemoteLimitError):
    """Raised when a remote request's graph has more nodes than the server accepts."""


class SavedBytesError(RemoteLimitError):
    """Raised when the values a remote trace saves are larger than the server returns."""


class GenerationLengthError(RemoteLimitError):
    """Raised when a remote generation asks for more new tokens than the server allows (or names none)."""


class RequestTimeoutError(RemoteLimitError, TimeoutError):
    """Raised when a remote request runs longer than the server's wall-time limit; the run is cancelled."""


class ConcurrencyLimitError(RemoteLimitError):
    """Raised when one API key has more requests running on a remote server than it allows."""
