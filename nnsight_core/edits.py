"""Persistent edits: interventions recorded once and applied in every later trace of a model.

``with model.edit() as edited:`` records interventions like a trace without
inputs, but runs nothing. ``edited`` is a new wrapper of the same module whose
later traces all start with those interventions; ``model.edit(inplace=True)``
gives them to ``model`` itself, and ``model.clear_edits()`` removes them.

How an edit is applied: every invoke of a later trace begins with a copy of
each edit's nodes, recorded for that invoke, exactly as if the edit's code had
been written at the top of the invoke. The copies go through the invoke's
record of module values, so the trace's own code sees (and builds on) the
edited values, and the edit applies to each invoke's own rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Sequence

from .envoy import Envoy
from .errors import InvokeError, TraceStateError
from ._tree import map_structure
from .graph import _EVENT_KIND, _FED_OPS, MODULE_VALUE_OPS, Graph, Iteration, Node
from .tracer import Invoker, Runner

if TYPE_CHECKING:
    from .model import NNsightModel

__all__ = ["EditRunner", "replay_edits"]


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
        graph.release()
        if exc_type is not None:
            return
        for node in graph.nodes:
            if node.op == "save":
                at = node.source()
                raise TraceStateError(
                    f".save() of {node.args[0].describe()}{' at ' + at if at else ''} inside "
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


def replay_edits(edits: Sequence[Graph], invoker: Invoker) -> None:
    """Record a copy of each edit graph's nodes into ``invoker`` (called as the invoke opens).

    Module values go through the invoke's current values (``Invoker._current``)
    exactly as envoy accesses do: a value an earlier edit already produced is
    reused, and an assignment becomes the module's current value, so later
    edits and the trace's own code build on it.
    """
    for edit in edits:
        _replay(edit, invoker)


def _replay(edit: Graph, invoker: Invoker) -> None:
    graph = invoker._runner._graph
    proxy_class = invoker._runner._model.proxy_class
    current = invoker._current
    copies: Dict[int, Node] = {}

    def bind(value: Any) -> Any:
        return copies[value.index] if type(value) is Node else value

    for node in edit.nodes:
        target = node.target
        if node.op in MODULE_VALUE_OPS:
            path, call = target
            if type(call) is Iteration:
                call = invoker._iteration(call.start, call.stop, call.step)
            target = (path, call)
            key = (_EVENT_KIND[node.op], path, call)
            existing = current.get(key) if node.op in _FED_OPS else None
            if existing is not None:
                copies[node.index] = existing.node
                continue
        copy = graph.create_node(node.op, target, map_structure(node.args, bind),
                                 map_structure(node.kwargs, bind), invoke=invoker.index, where=node.where)
        copies[node.index] = copy
        invoker._runner._edit_nodes.add(copy.index)
        if node.op in MODULE_VALUE_OPS:
            current[key] = proxy_class(copy)
