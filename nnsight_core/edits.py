"""Persistent edits: interventions recorded once and applied in every later trace of a model.

``with model.edit() as edited:`` records interventions like a trace without
inputs, but runs nothing. ``edited`` is a new wrapper of the same module whose
later traces all start with those interventions; ``model.edit(inplace=True)``
gives them to ``model`` itself, and ``model.clear_edits()`` removes them.

How an edit is applied: the model gives its edit graphs to every Runner it
makes (``preludes``), and every invoke of a later trace begins with a copy of
each edit's nodes (:meth:`nnsight_core.tracer.Invoker.replay`), recorded for
that invoke, exactly as if the edit's code had been written at the top of the
invoke. The copies go through the invoke's record of module values, so the
trace's own code sees (and builds on) the edited values, and the edit applies
to each invoke's own rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .envoy import Envoy
from .errors import InvokeError, TraceStateError
from .tracer import Invoker, Runner

if TYPE_CHECKING:
    from .model import NNsightModel

__all__ = ["EditRunner"]


class EditRunner(Runner):
    """The context of ``model.edit()``: records interventions to apply in every later trace.

    Example:
        >>> with model.edit() as edited:
        ...     model.layer1.output[:, 0] = 0         # recorded through `model`, kept by `edited`
        >>> with edited.trace(x):                      # every trace of `edited` applies it
        ...     hidden = edited.layer1.output.save()
        >>> hidden.value[:, 0].tolist()
        [0.0]

    Inside the block the model is used as in a trace with one invoke and no
    inputs; ``__enter__`` returns the wrapper that keeps the edit (``model``
    itself with ``inplace=True``). Nothing runs when the block exits.
    """

    def __init__(self, model: NNsightModel, inplace: bool) -> None:
        super().__init__(model, (), {}, {}, scan=False)
        self._target = model if inplace else _edited_copy(model)

    def __enter__(self) -> NNsightModel:
        super().__enter__()
        invoker = Invoker(self, (), {})
        invoker.index = 0
        self._invoker = invoker
        self.trace_state.invoke = 0
        return self._target

    def invoke(self, *inputs: Any, **kwargs: Any) -> Invoker:
        """Refused: an edit applies to every invoke of later traces.

        Raises:
            InvokeError: Always.
        """
        raise InvokeError("model.edit() records interventions for every invoke of later traces, so it "
                          "takes no invokes or inputs: write the interventions directly in the block.")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._close()
        graph = self._graph
        if exc_type is not None:
            return
        if graph.saves:
            node = graph.saves[0]
            saved = node.args[0] if node.op == "save" else node
            at = node.source()
            raise TraceStateError(
                f".save() of {saved.describe()}{' at ' + at if at else ''} inside "
                "model.edit(): an edit's values belong to every later trace, not to one; save "
                "values inside the trace instead."
            )
        target = self._target
        target.__dict__["_edits"] = [*target._edits, graph]


def _edited_copy(model: NNsightModel) -> NNsightModel:
    """A new wrapper of ``model``'s module (same weights, same lock) with its own envoys and edits.

    A lazily loaded model is dispatched first, so both wrappers share the real module.
    """
    if not model.dispatched:
        model.dispatch_model()
    copy = object.__new__(type(model))
    state = copy.__dict__
    state.update((k, v) for k, v in model.__dict__.items() if not isinstance(v, Envoy))
    state["_envoy"] = Envoy(model._model, "", copy)
    state["_edits"] = list(model._edits)
    return copy
