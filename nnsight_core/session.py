"""Session: a block of several traces that can use each other's values directly.

Outside a session every value a trace did not ``.save()`` is freed right after
its last use. Inside ``with model.session():`` every trace that runs keeps all
its values until the session ends, so a later trace can use any proxy of an
earlier one (saved or not) as a plain value; when the session ends, the values
that were not saved are freed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional

from . import _state
from .errors import TraceStateError

if TYPE_CHECKING:
    from .model import NNsightModel
    from .tracer import Runner

__all__ = ["Session"]


class Session:
    """A context in which every trace keeps all its values until the context ends.

    Example:
        >>> clean, corrupted = torch.rand(1, 5), torch.rand(1, 5)
        >>> with model.session() as session:
        ...     with model.trace(clean):
        ...         hidden = model.layer1.output          # not saved
        ...     with model.trace(corrupted):
        ...         model.layer1.output = hidden          # usable: the session kept it
        ...         out = model.output.save()
        >>> torch.equal(out.value, net(clean))
        True

    The session applies to every trace that runs in this thread while it is
    open, of any model, so a value of one model's trace can be used in
    another model's later trace. Values of a trace still being recorded cannot
    be used in another trace (:class:`~nnsight_core.errors.ProxyScopeError`),
    inside a session or not.

    How: a trace that runs while a session is open runs its graph keeping every
    value (``Interleaver(..., keep=True)``) and registers with the session,
    which removes the unsaved values from the trace's results when it ends.

    Attributes:
        model: The model whose ``session()`` opened it.
        traces: The Runners of the traces that ran inside it, in order.
        backend: The backend every trace of the block runs on (``session(remote=True)``), or None.
    """

    def __init__(self, model: NNsightModel, backend: Optional[Callable[..., Any]] = None) -> None:
        self.model = model
        self.traces: List[Runner] = []
        self.backend = backend

    def __enter__(self) -> Session:
        if _state.local.session is not None:
            raise TraceStateError("a session is already open in this thread: sessions cannot be "
                                  "nested; put all the traces in one `with model.session():` block.")
        if _state.current_runner() is not None:
            raise TraceStateError("model.session() was opened inside a trace: a session contains "
                                  "traces, so open it first and the traces inside it.")
        _state.local.session = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _state.local.session = None
        for runner in self.traces:
            values, nodes = runner.values, runner.graph.nodes
            for index in [i for i in values if not nodes[i].saved]:
                del values[index]


def open_session() -> Any:
    """The session open in this thread, or None (a Runner asks before it executes)."""
    return _state.local.session


def session_backend() -> Any:
    """The backend of the session open in this thread (``session(remote=True)``), or None."""
    session = _state.local.session
    return None if session is None else session.backend
