"""Session: a block of several traces that can use each other's values directly.

Outside a session every value a trace did not ``.save()`` is freed right after
its last use. Inside ``with model.session():`` every trace that runs keeps all
its values until the session ends, so a later trace can use any proxy of an
earlier one (saved or not) as a plain value; when the session ends, the values
that were not saved are freed.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from . import _state
from .errors import TraceStateError
from .graph import EMPTY, Graph, Node

if TYPE_CHECKING:
    from .model import NNsightModel

__all__ = ["Session", "current_session"]


class _Local(threading.local):
    def __init__(self) -> None:
        self.session: Optional[Session] = None


_local = _Local()


def current_session() -> Optional[Session]:
    """The session open in this thread, or None."""
    return _local.session


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

    Attributes:
        model: The model whose ``session()`` opened it.
        traces: The graphs of the traces that ran inside it, in order.
    """

    def __init__(self, model: NNsightModel) -> None:
        self.model = model
        self.traces: List[Graph] = []
        self._unsaved: List[Node] = []

    def __enter__(self) -> Session:
        if _local.session is not None:
            raise TraceStateError("a session is already open in this thread: sessions cannot be "
                                  "nested; put all the traces in one `with model.session():` block.")
        if _state.current_runner() is not None:
            raise TraceStateError("model.session() was opened inside a trace: a session contains "
                                  "traces, so open it first and the traces inside it.")
        _local.session = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _local.session = None
        for node in self._unsaved:
            node.value = EMPTY
        self._unsaved = []

    def _keep(self, graph: Graph) -> Callable[[], None]:
        """Mark every node of ``graph`` saved for its execution; return what unmarks them.

        The Runner calls the returned function after the graph was released, so
        the values stay (until the session ends) while the graph still prints,
        serialises and reports ``saved`` as the user wrote it.
        """
        unsaved = [node for node in graph.nodes if not node.saved]
        for node in unsaved:
            node.saved = True
        self.traces.append(graph)

        def unmark() -> None:
            for node in unsaved:
                node.saved = False
            self._unsaved.extend(unsaved)

        return unmark


def keep_values(graph: Graph) -> Optional[Callable[[], None]]:
    """If a session is open, have it keep ``graph``'s values and return the function to call
    after the graph was released (see :meth:`Session._keep`); else None."""
    session = _local.session
    return None if session is None else session._keep(graph)
