"""Gradients inside a trace: ``proxy.grad`` (read and assign) and ``proxy.backward()``.

A ``grad`` node takes the gradient of its value in the first ``backward`` node
recorded after it (nnsight's order: read ``.grad``, then call
``.backward()``). When its value exists, the node registers a tensor hook and
waits; while that backward pass runs, the hook feeds the node, runs whatever
became ready (a ``set_grad`` replacing the gradient, values computed from it)
and returns the replacement to autograd, as a hook that returns a new
gradient does. A hook fires for its own backward pass only, so a trace may
run several (one per invoke, with ``retain_graph=True``) without one
delivering another's gradient.

The hook goes on the tensor the model goes on with. A view of a module value
(``output[:, -1]``) is not on that path, so the hook goes on the view's base
and the gradient is the same view of the base's gradient. A module value whose
gradient is read is an invoke's own copy of its rows, written back into the
batch (``Graph.create_node`` marks it like an in-place edit), so each invoke
gets exactly its own rows of the gradient.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import torch

from .errors import AssignmentError, GradientError, MissedCallError, OutOfOrderEditError
from .graph import Graph, Node

if TYPE_CHECKING:
    from .interleaver import Interleaver

__all__ = ["DEFERRED", "Gradients", "run_backward"]

#: Returned by an op whose value a hook supplies later: the node is not done yet.
DEFERRED: Any = object()

# (size, stride, storage offset relative to the base) of a view.
Geometry = Tuple[torch.Size, Tuple[int, ...], int]


def bind(graph: Graph) -> Dict[int, Node]:
    """Each ``grad`` node's index to the first ``backward`` node recorded after it.

    Raises:
        GradientError: A ``grad`` node has no ``backward`` after it.
    """
    backwards = [node for node in graph.nodes if node.op == "backward"]
    indices = [node.index for node in backwards]
    owners = {}
    for grad in graph.gradients:
        position = bisect_right(indices, grad.index)
        if position == len(backwards):
            raise GradientError(
                f"{grad.describe()}{grad.at()} has no .backward() recorded after it, so no backward "
                "pass will compute it. Record the backward pass after reading .grad, e.g. "
                "`loss = model.output.sum(); loss.backward()`."
            )
        owners[grad.index] = backwards[position]
    return owners


def _check_loss(node: Node, loss: Any) -> None:
    if not isinstance(loss, torch.Tensor):
        raise GradientError(f"{node.describe()}{node.at()}: .backward() starts from a tensor, but the "
                            f"value is a {type(loss).__name__}; reduce it to a tensor first (e.g. "
                            "`.sum()`).")
    if not loss.requires_grad:
        raise GradientError(
            f"{node.describe()}{node.at()}: the value does not require grad, so there is nothing to "
            "backpropagate. Run the trace with gradients enabled (not under torch.no_grad() or "
            "torch.inference_mode()), from values computed with parameters that require grad."
        )


def run_backward(node: Node, args: tuple, kwargs: dict, gradients: Optional[Gradients]) -> None:
    """Run ``args[0].backward(*args[1:], **kwargs)``, delivering the gradients it owns.

    Raises:
        GradientError: The value is not a tensor that requires grad.
        MissedCallError: A gradient this backward pass owns never reached its value.
    """
    _check_loss(node, args[0])
    if gradients is None:
        args[0].backward(*args[1:], **kwargs)
        return
    previous, gradients.running = gradients.running, node
    try:
        args[0].backward(*args[1:], **kwargs)
    finally:
        gradients.running = previous
    gradients.check_delivered(node)


def _dense_copy(grad: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """A copy of ``grad`` laid out like ``base``, so views of ``base`` map onto it."""
    out = torch.empty_strided(base.size(), base.stride(), dtype=grad.dtype, device=grad.device)
    return out.copy_(grad)


def _check_new_gradient(node: Node, old: torch.Tensor, new: Any) -> None:
    if not isinstance(new, torch.Tensor):
        raise AssignmentError(f"{node.describe()}{node.at()}: a gradient is replaced by a tensor, not a "
                              f"{type(new).__name__}; assign a tensor of shape {tuple(old.shape)}.")
    for what, before, after in (("shape", tuple(old.shape), tuple(new.shape)),
                                ("dtype", old.dtype, new.dtype), ("device", old.device, new.device)):
        if before != after:
            raise AssignmentError(f"{node.describe()}{node.at()}: the new gradient has {what} {after} but "
                                  f"the gradient it replaces has {before}; give it {what} {before}.")


class Gradients:
    """The gradient state of one execution: which backward pass delivers each ``grad`` node,
    the tensor hooks registered so far, and the gradient whose hook is running.

    Example:
        >>> from nnsight_core._grad import Gradients
        >>> with model.trace(x) as tracer:
        ...     g = model.layer1.output.grad.save()
        ...     model.output.sum().backward()
        >>> gradients = Gradients(tracer.graph, None)   # the Interleaver makes one per execution
        >>> [grad.index for grad in gradients.owned[4]]   # node %4 (the backward) feeds %1
        [1]

    Raises:
        GradientError: On creation, when a ``grad`` node has no ``backward`` after it.
    """

    def __init__(self, graph: Graph, interleaver: Optional[Interleaver]) -> None:
        self.interleaver = interleaver
        self.owners = bind(graph)
        self.owned: Dict[int, List[Node]] = {}
        for grad in graph.gradients:
            self.owned.setdefault(self.owners[grad.index].index, []).append(grad)
        self.running: Optional[Node] = None
        self._handles: List[Any] = []
        self._registered: set = set()
        # Grad node index -> the replacements assigned while its hook runs.
        self._open: Dict[int, List[torch.Tensor]] = {}

    def register(self, node: Node, value: Any) -> Any:
        """Hook the tensor ``node``'s gradient comes from; the hook feeds ``node`` later.

        Raises:
            GradientError: The value is not a tensor that requires grad, or it was
                computed after the backward pass that owns ``node`` had run.
        """
        owner = self.owners[node.index]
        if self.interleaver.done[owner.index]:
            raise GradientError(f"{node.describe()}{node.at()}: the value was computed after its backward "
                                f"pass ({owner.describe()}{owner.at()}) had run; record .backward() on a "
                                "loss computed after every value whose gradient you read.")
        if not isinstance(value, torch.Tensor):
            raise GradientError(f"{node.describe()}{node.at()}: .grad is the gradient of a tensor, but the "
                                f"value is a {type(value).__name__}; index it first (e.g. `.output[0].grad`).")
        if not value.requires_grad:
            raise GradientError(
                f"{node.describe()}{node.at()}: the value does not require grad, so it has no gradient. "
                "Run the trace with gradients enabled (not under torch.no_grad() or "
                "torch.inference_mode()); integer values such as token ids never have one."
            )
        base = value._base if value._is_view() and value._base.requires_grad else value
        geometry = None if base is value else (value.size(), value.stride(),
                                               value.storage_offset() - base.storage_offset())
        self._handles.append(base.register_hook(self._hook(node, owner, base, geometry)))
        self._registered.add(node.index)
        return DEFERRED

    def _hook(self, node: Node, owner: Node, base: torch.Tensor,
              geometry: Optional[Geometry]) -> Callable[[torch.Tensor], Optional[torch.Tensor]]:
        interleaver = self.interleaver

        def hook(grad: torch.Tensor) -> Optional[torch.Tensor]:
            if self.running is not owner or interleaver.done[node.index]:
                return None  # another backward pass than the one that owns the node
            value = grad if geometry is None else _dense_copy(grad, base).as_strided(*geometry)
            assigned = self._open[node.index] = []
            # Only what this gradient makes ready runs inside the hook (where autograd records
            # nothing); nodes that were ready before wait for the backward pass to end.
            try:
                interleaver.feed_apart(node, value)
            finally:
                del self._open[node.index]
            self._check_assignments_ran(node, interleaver._users[node.index], interleaver.done)
            if not assigned:
                return None
            if geometry is None:
                return assigned[-1]
            full = _dense_copy(grad, base)
            full.as_strided(*geometry).copy_(assigned[-1])
            return full

        return hook

    @staticmethod
    def _check_assignments_ran(node: Node, users: List[Node], done: List[bool]) -> None:
        for user in users:
            if user.op == "set_grad" and user.args[0] is node and not done[user.index]:
                late = [d.describe() for d in user.deps if not done[d.index]]
                raise OutOfOrderEditError(
                    f"{user.describe()}{user.at()} replaces a gradient but depends on "
                    f"{', '.join(late) or 'a value'}, which did not exist while that gradient passed. "
                    "A new gradient can only use values computed before it (forward values, or "
                    "gradients of values that come later in the model)."
                )

    def assign(self, node: Node, grad: Node, current: Any, new: Any) -> Any:
        """Record ``new`` as the replacement of ``grad``'s gradient (a ``set_grad`` node).

        Raises:
            OutOfOrderEditError: The gradient's hook is not running.
            AssignmentError: ``new`` is not a tensor of the gradient's shape, dtype and device.
        """
        assigned = self._open.get(grad.index)
        if assigned is None:
            raise OutOfOrderEditError(f"{node.describe()}{node.at()} ran after the gradient it replaces "
                                      "had passed.")
        _check_new_gradient(node, current, new)
        assigned.append(new)
        return new

    def check_delivered(self, backward: Node) -> None:
        """After ``backward`` ran: every gradient it owns must have arrived.

        Raises:
            MissedCallError: Naming the gradient and why it never arrived.
        """
        for grad in self.owned.get(backward.index, ()):
            if self.interleaver.done[grad.index]:
                continue
            if grad.index in self._registered:
                why = ("the backward pass did not reach the value: it is not part of the computation "
                       "of the loss. A copy made by indexing with a tensor or a list, or a value "
                       "computed from a module value that the model never uses, gets no gradient: "
                       "read the module value's .grad and index that instead (`h.grad[idx]`).")
            else:
                why = "its value was computed only after the backward pass had run."
            raise MissedCallError(f"{grad.describe()}{grad.at()} never got its gradient from "
                                  f"{backward.describe()}{backward.at()}: {why}")

    def check_complete(self) -> None:
        """After the run: every gradient whose backward pass never ran is an error.

        Raises:
            MissedCallError: Naming the gradient and its backward node.
        """
        interleaver = self.interleaver
        done = interleaver.done
        for grad_index, owner in self.owners.items():
            grad = owner.graph.nodes[grad_index]
            if not done[grad_index] and owner.index in interleaver.skipped:
                interleaver.skip_with_users(grad)  # its backward sat in a false tracer.cond block
                continue
            if not done[grad_index] and not done[owner.index]:
                raise MissedCallError(
                    f"{grad.describe()}{grad.at()} never got its gradient: its backward pass "
                    f"({owner.describe()}{owner.at()}) never ran, because the loss it starts from was "
                    "never computed."
                )

    def remove_hooks(self) -> None:
        """Remove every tensor hook (saved tensors must not call into a finished execution)."""
        while self._handles:
            self._handles.pop().remove()
