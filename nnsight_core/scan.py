"""Scan: run a trace's graph on fake tensors, so shapes are known and errors found before the model runs.

A *scan* executes the model exactly as the trace will, through the adapter's
``nnsight_execute`` with the recorded graph interleaved by a
:class:`ScanInterleaver` (a subclass of the
:class:`~nnsight_core.interleaver.Interleaver`, as torch.fx's ``ShapeProp`` is
of its ``Interpreter``), but on fake tensors
(PyTorch's ``FakeTensorMode``): every tensor has a shape, a dtype and a device
and no data, so nothing is computed and no memory is used for activations.
Operations meet fake copies of the model's parameters and buffers, never the
real ones, and a model whose weights are still on the meta device (a
``LanguageModel`` before dispatch) scans without loading them.

It is lazy. Nothing is scanned until a proxy's ``.shape``, ``.dtype``,
``.device`` or ``.ndim`` is asked for inside a trace, or until the trace exits
with an assignment of a tensor constant (``output = torch.zeros(...)``, a
value saved in an earlier trace): then the scan checks those assignments
before the real run, so a wrongly shaped one raises before the model runs,
naming the user's line. A trace that does neither never scans.
``trace(..., scan=False)`` turns both off.

What fake tensors cannot know (values: ``.item()``, ``bool(tensor)``,
data-dependent shapes such as ``h[h > 0]``) ends the scan for the nodes that
need it; their shape is then unknown, and the real run decides. Generation
stops being scannable after its first step, whose end-of-sequence check reads
values: shapes of generation step 0 are known, later steps are not.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Set, Tuple

import torch
from torch._subclasses import fake_tensor as _fake
from torch.utils import _pytree as pytree
from torch.utils.weak import WeakIdKeyDictionary

from ._tree import tree_map
from .errors import InterventionError, NNsightError, ScanError
from .graph import EMPTY, SCALAR_TYPES, Graph, Node
from .interleaver import Batch, Interleaver, StopExecution

if TYPE_CHECKING:
    from ._grad import Gradients
    from .proxy import Proxy
    from .tracer import Runner

__all__ = ["Scan", "ScanInterleaver", "run_scan", "metadata", "validate", "is_scanning"]

# Integer and boolean tensors derived only from the inputs (attention masks, position ids) keep
# their values through the scan up to this many elements, so model code may branch on them.
_CONSTANT_LIMIT = 1 << 16

# Exceptions that say "fake tensors cannot compute this", not "this is wrong".
_FAKE_LIMITS = (_fake.DataDependentOutputException, _fake.DynamicOutputShapeException,
                _fake.UnsupportedOperatorException, _fake.UnsupportedFakeTensorException,
                NotImplementedError)
_FAKE_LIMIT_MESSAGES = ("tensor subclass", "FakeTensor", "fake tensor", "data pointer",
                        "data-dependent", "data dependent")

_local = threading.local()

# Each wrapped module's fake mode, which keeps the fake copies of its weights (see _ScanMode).
_MODES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_scanning() -> bool:
    """Whether this thread is running a scan: hook wrappers of ``nnsight_execute`` can skip fake runs.

    Example:
        >>> from nnsight_core import get_plugin_manager, hookimpl
        >>> class Announce:                          # a plugin, usually found by entry point
        ...     @hookimpl(wrapper=True)
        ...     def nnsight_execute(self, model):
        ...         if not is_scanning():
        ...             print("a real execution")
        ...         return (yield)
        >>> name = get_plugin_manager().register(Announce())
        >>> with model.trace(x):
        ...     model.layer1.output = torch.zeros(model.layer1.output.shape)   # .shape scans
        a real execution
        >>> _ = get_plugin_manager().unregister(name=name)
    """
    return getattr(_local, "scanning", False)


class _Unknown:
    """The value of a node the scan could not compute, with the reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Scan:
    """The fake values one scan computed for the nodes of a trace.

    Attributes:
        values: Node index to its fake value; an iteration template's value is
            the list of its per-call values.
        recorded: The graph's nodes when the scan ran (it answers for these only).
        invokes: How many invokes the trace had when the scan ran.
        stopped: Why the fake execution ended early (a value fake tensors do not
            have, ``tracer.stop()``), or None when it ran to the end.
    """

    def __init__(self, recorded: List[Node], invokes: int) -> None:
        self.values: Dict[int, Any] = {}
        self.recorded = recorded
        self.invokes = invokes
        self.stopped: Optional[BaseException] = None

    def covers(self, node: Node, invokes: int) -> bool:
        """Whether this scan computed ``node`` as the trace now stands."""
        index = node.index
        return invokes == self.invokes and index < len(self.recorded) and self.recorded[index] is node

    def current(self, runner: Runner) -> bool:
        """Whether nothing was recorded and no invoke opened since this scan."""
        nodes = runner.graph.nodes
        return (len(runner.invokers) == self.invokes and len(nodes) == len(self.recorded)
                and (not nodes or nodes[-1] is self.recorded[-1]))

    def value(self, node: Node) -> Any:
        """The fake value of ``node``.

        Raises:
            ScanError: The scan could not compute it, or never reached it.
        """
        value = self.values.get(node.index, EMPTY)
        if node.iteration is not None and type(value) is list:
            if not value:
                raise ScanError(f"{node.describe()}{node.at()}: the scan reached no call of "
                                f"{node.iteration}, so its shape is unknown before the model runs.")
            value = value[0]  # the first call's: later calls may differ (generation steps)
        if type(value) is _Unknown:
            raise ScanError(f"the shape of {node.describe()}{node.at()} is unknown before the model runs: "
                            f"{value.reason}. Save the value and read its shape after the trace.")
        if value is EMPTY:
            stopped = self.stopped
            if stopped is None:
                why = "its module call did not happen in the scan"
            elif isinstance(stopped, StopExecution):
                why = "tracer.stop() ends the execution before it"
            elif _fake_limit(stopped):
                why = ("the model's code reads tensor values, which fake tensors do not have (as "
                       f"generate() does after its first step), before reaching it: {_describe(stopped)}")
            else:
                why = f"the model failed on fake tensors before reaching it: {_describe(stopped)}"
            raise ScanError(f"the shape of {node.describe()}{node.at()} is unknown before the model runs: "
                            f"{why}. Save the value and read its shape after the trace.")
        return value


def metadata(runner: Runner, proxy: Proxy, name: str) -> Any:
    """``proxy.<name>`` for ``shape``, ``dtype``, ``device`` or ``ndim`` while ``runner`` records it
    (what :meth:`nnsight_core.tracer.Runner.metadata` answers).

    With ``scan=True``, the attribute of its fake value, scanning first if needed; with
    ``scan=False``, a recorded ``getattr`` node as for any attribute.

    Raises:
        ScanError: The scan cannot compute the value, or it has no such attribute.
    """
    if not runner._scan:
        return proxy._record("getattr", name, (proxy,))
    node = proxy.node
    scan = runner._scan_state
    if scan is None or not scan.covers(node, len(runner.invokers)):
        scan = run_scan(runner)
    value = scan.value(node)
    try:
        return getattr(value, name)
    except AttributeError:
        # Not an AttributeError: Python would fall back to Proxy.__getattr__ and record a node.
        raise ScanError(f"{node.describe()}{node.at()} is a {type(value).__name__}, which has no "
                        f".{name}; index it first (e.g. `[0].{name}`).") from None


def validate(runner: Runner, batched: Any, batch: Batch) -> None:
    """Before the real run, check on fake tensors every assignment of a tensor constant.

    Called as the trace exits. An assignment whose new value holds a tensor
    constant (``output = torch.zeros(...)``, ``output[:, 0] = t``, a value saved
    in an earlier trace, ``.copy_(t)``) is the one thing a graph cannot know
    fits, so those are checked, unless a scan during the trace (for ``.shape``)
    already computed them. The fake execution stops once they ran. A graph
    without such assignments is not scanned.

    Raises:
        AssignmentError, BatchError, InterventionError, OutOfOrderEditError: What the real run
            would raise, found on fake tensors.
    """
    scan = runner._scan_state
    runner.__dict__["_scan_state"] = None  # not through Runner.__setattr__: a call less per trace
    invokes = len(runner.invokers)
    # Replayed persistent edits are not checked here (every later trace would pay a scan for
    # them); the real run's assignment checks still catch a misfit. A plain loop over the
    # graph's assignments only: this runs for every trace.
    targets = []
    for node in runner._graph.assignments:
        if _assigns_constant(node) \
                and node.index not in runner._replayed \
                and not (scan is not None and scan.covers(node, invokes) and node.index in scan.values):
            targets.append(node)
    if targets:
        run_scan(runner, (batched, batch), targets)
        runner.__dict__["_scan_state"] = None


def run_scan(runner: Runner, batched: Optional[Tuple[Any, Batch]] = None,
             targets: Optional[List[Node]] = None) -> Scan:
    """Run the model on fake tensors with ``runner``'s graph interleaved; keep the result on the runner.

    Args:
        runner: The trace, open or exiting.
        batched: Its batched inputs and their :class:`~nnsight_core.interleaver.Batch`, if
            already made (else they are batched here).
        targets: The nodes the scan is for (default: all); the fake execution stops once they ran.

    Raises:
        ScanError: The trace has no inputs yet.
        NNsightError: The graph fails on fake tensors as it would when the model runs.
    """
    model, graph = runner._model, runner.graph
    if not runner.invokers:
        raise ScanError("shapes are known once the trace has inputs: ask for them inside an invoke "
                        "(or a trace given inputs).")
    inputs, batch = runner._batch() if batched is None else batched
    scan = Scan(list(graph.nodes), len(runner.invokers))
    interleaver = ScanInterleaver(graph, model._model, model._attached, graph.nodes if targets is None else targets,
                                  batch)
    with model._lock, _scanning():
        with _fake_state(model) as mode, mode:
            fake_inputs = tree_map(lambda leaf: _fake_input(mode, leaf), inputs)
            scan.stopped = _execute(runner, interleaver, fake_inputs)
    scan.values = interleaver.results()
    runner._scan_state = scan
    return scan


def _execute(runner: Runner, interleaver: ScanInterleaver, inputs: Any) -> Optional[BaseException]:
    """Run the fake execution; return why it ended early (None if it did not).

    Raises:
        NNsightError: A check of the graph failed, reworded as found before the model ran.
    """
    try:
        with interleaver:
            runner._model._execute(inputs, method=runner.method, **runner._kwargs)
    except NNsightError as error:
        if error is interleaver.failure:
            raise
        raise type(error)(f"{error} (found before the model ran, by the scan on fake tensors)") \
            from error.__cause__
    except _Finished:
        return None
    except (Exception, StopExecution) as error:  # noqa: BLE001 - the real run reports real failures
        return error
    return None


class _Finished(BaseException):
    """Ends a fake execution once its target nodes have run (a BaseException: model code lets it through)."""


class ScanInterleaver(Interleaver):
    """The Interleaver on fake values: it keeps every value it computes (``keep=True``).

    A node that fake tensors cannot compute (it needs values) gets an unknown
    value instead of failing, and so does everything computed from it.
    Functions given to ``tracer.apply``/``tracer.log`` are not called (they are
    user code, with side effects), and no backward pass runs: a gradient is a
    fake tensor like its value.

    The fake execution ends as soon as the target nodes have run (after the
    module event that ran the last one, so its edits are checked too), unless
    the graph has iterations, whose copies appear while the model runs.

    Attributes:
        failure: The error of the node that failed on fake tensors, if one did.
    """

    failure: Optional[InterventionError] = None

    def __init__(self, graph: Graph, root: torch.nn.Module, attached: Dict[str, torch.nn.Module],
                 targets: List[Node], batch: Optional[Batch] = None) -> None:
        super().__init__(graph, root, attached, batch, keep=True)
        self._targets = {node.index for node in targets}
        self._left: Optional[int] = None

    def _gradients(self) -> Optional[Gradients]:
        # No backward pass runs in a scan (see grad), so no gradient hooks are set up: the
        # Interleaver would also refuse a .grad whose .backward() is not recorded yet.
        return None

    def __enter__(self) -> Interleaver:
        self._left = None if self.graph.iterations else len(self._targets)
        return super().__enter__()

    def _event(self, kind: str, path: str, value: Any) -> Any:
        result = super()._event(kind, path, value)
        if self._left == 0:
            raise _Finished
        return result

    def feed(self, node: Node, value: Any) -> None:
        super().feed(node, value)
        self._ran(node)

    def _ran(self, node: Node, checked: bool = False) -> None:
        # A skip is checked when its module's forward returns (skipped_output), not when it runs.
        if self._left is not None and node.index in self._targets and (checked or node.op != "skip"):
            self._left -= 1

    def _run(self, node: Node) -> None:
        values = self.values
        for dep in node.deps:
            if type(values[dep.index]) is _Unknown:
                self.feed(node, values[dep.index])
                return
        try:
            super()._run(node)
        except InterventionError as error:
            cause = error.__cause__
            if cause is not None and _fake_limit(cause):
                self.feed(node, _Unknown(f"it depends on tensor values ({_describe(cause)})"))
                return
            self.failure = _scan_failure(node, cause)
            raise self.failure from cause
        if self.done[node.index]:
            self._ran(node)

    def skipped_output(self, path: str, chosen: Dict[int, Tuple[Node, Any]], forward: Any,
                       args: tuple, kwargs: dict) -> Any:
        # On fake tensors the forward costs nothing: run it, so each value is checked against
        # what the module returns before the real run skips it.
        result = self._overwrite(path, chosen, forward(*args, **kwargs))
        for node, _ in chosen.values():
            self._ran(node, checked=True)
        return result

    def apply(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return _Unknown("the scan does not call functions given to tracer.apply() or tracer.log()")

    def grad(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return torch.empty_like(args[0])

    def set_grad(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return args[1]

    def backward(self, node: Node, args: tuple, kwargs: dict) -> None:
        return None


class _ScanMode(_fake.FakeTensorMode):
    """The ``FakeTensorMode`` of one wrapped module's scans, kept between them.

    * Each of the model's parameters and buffers that an operation gets is
      replaced by its fake copy first, so no operation computes on or changes a
      real weight (``FakeTensorMode`` alone runs some operations whose tensors are
      all real, e.g. a buffer's ``num_batches_tracked.add_(1)``). Copies are kept
      per real tensor (making them costs more than a small model's fake forward
      pass) and live as long as it; a tensor on the meta device gets a copy on
      the CPU, where ``dispatch_model()`` loads weights by default. Other real
      tensors (made by model code from Python or NumPy values, such as a
      scheduler's timesteps) keep ``FakeTensorMode``'s handling: their values
      stay known.
    * Integer and boolean tensors computed from constants only (the inputs'
      attention masks and position ids) keep their values, so model code that
      branches on them (``if (mask == 1).all():``) still runs.
    """

    def __init__(self) -> None:
        super().__init__(allow_non_fake_inputs=True)
        self.copies = WeakIdKeyDictionary()
        #: ``id()`` of the weights and buffers of the model being scanned (set by ``_fake_state``).
        self.weights: Set[int] = set()

    def fits(self, tensors: List[torch.Tensor]) -> bool:
        """Whether every existing copy still has its tensor's shape, dtype, device and grad flag
        (``.half()`` and ``requires_grad_`` change a weight in place)."""
        for tensor in tensors:
            copy = self.copies.get(tensor)
            if copy is not None and (copy.shape != tensor.shape or copy.dtype != tensor.dtype
                                     or copy.device != _fake_device(tensor)
                                     or copy.requires_grad != tensor.requires_grad):
                return False
        return True

    def fake(self, tensor: torch.Tensor) -> torch.Tensor:
        """The fake copy of the real ``tensor`` (made on first use)."""
        copy = self.copies.get(tensor)
        if copy is not None:
            return copy
        if tensor.device.type != "meta":
            copy = self.from_tensor(tensor)
        else:
            with self:
                copy = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype,
                                           device=_fake_device(tensor))
            if isinstance(tensor, torch.nn.Parameter):
                copy = torch.nn.Parameter(copy, requires_grad=tensor.requires_grad)
        self.copies[tensor] = copy
        return copy

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        args, kwargs = pytree.tree_map_only(torch.Tensor, self._faked, (args, kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)

    def _faked(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.fake(tensor) if id(tensor) in self.weights else tensor

    def may_turn_const(self, t: torch.Tensor) -> bool:
        if (t.dtype in (torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
                and t.layout is torch.strided and t.numel() <= _CONSTANT_LIMIT
                and t.device.type != "meta" and not self.is_our_fake(t)):
            return True
        return super().may_turn_const(t)


def _fake_input(mode: _ScanMode, leaf: Any) -> Any:
    if not isinstance(leaf, torch.Tensor) or isinstance(leaf, _fake.FakeTensor):
        return leaf
    constant = (not leaf.is_floating_point() and not leaf.is_complex() and leaf.layout is torch.strided
                and leaf.numel() <= _CONSTANT_LIMIT and leaf.device.type != "meta")
    return mode.fake_tensor_converter.from_real_tensor(mode, leaf, make_constant=constant)


def _fake_device(tensor: torch.Tensor) -> torch.device:
    return _CPU if tensor.device.type == "meta" else tensor.device


_CPU = torch.device("cpu")


@contextlib.contextmanager
def _fake_state(model: Any) -> Iterator[_ScanMode]:
    """Yield the fake mode of ``model``'s scans; callers hold the model's execution lock.

    A model whose weights are real keeps them in place (another thread may call the
    module directly meanwhile): operations meet their fake copies (see :class:`_ScanMode`).
    A lazily loaded model, whose weights are still on the meta device, has them swapped
    for their fake copies until the scan ends, so that model code that asks for the
    weights' device (to put new tensors there) gets the copies' device.
    """
    modules = list(model._model.modules())
    for extra in model._attached.values():
        modules.extend(extra.modules())
    slots = [(table, name, tensor) for module in modules
             for table in (module._parameters, module._buffers)
             for name, tensor in table.items() if tensor is not None]
    tensors = [tensor for _, _, tensor in slots]
    mode = _MODES.get(model._model)
    if mode is None or not mode.fits(tensors):
        mode = _MODES[model._model] = _ScanMode()
    lazy = any(tensor.device.type == "meta" for tensor in tensors)
    swapped = []
    try:
        mode.weights = {id(tensor) for tensor in tensors}
        if lazy:
            for table, name, tensor in slots:
                table[name] = mode.fake(tensor)
                swapped.append((table, name, tensor))
        yield mode
    finally:
        mode.weights = set()
        for table, name, tensor in reversed(swapped):
            table[name] = tensor


@contextlib.contextmanager
def _scanning() -> Iterator[None]:
    """Mark this thread as scanning, and mute the traceback PyTorch logs for each op that fails on
    fake tensors (the scan reports the failure itself)."""
    logger = logging.getLogger(_fake.__name__)
    thread = threading.get_ident()

    def mute(record: logging.LogRecord) -> bool:
        return record.thread != thread

    _local.scanning = True
    logger.addFilter(mute)
    try:
        yield
    finally:
        logger.removeFilter(mute)
        _local.scanning = False


def _fake_limit(error: BaseException) -> bool:
    """Whether ``error`` says fake tensors cannot compute something (not that it is wrong)."""
    if isinstance(error, _FAKE_LIMITS):
        return True
    name = type(error).__name__
    if name.startswith("GuardOnDataDependent"):
        return True
    text = str(error)
    return any(fragment in text for fragment in _FAKE_LIMIT_MESSAGES)


def _scan_failure(node: Node, cause: Optional[BaseException]) -> InterventionError:
    at = node.source()
    return InterventionError(
        f"{node.describe()}{' at ' + at if at else ''} fails on fake tensors, so it would fail when "
        f"the model runs (found before the model ran, by the scan): {type(cause).__name__}: {cause}"
    )


def _assigns_constant(node: Node) -> bool:
    """Whether ``node`` assigns a value holding a tensor constant (not computed by the graph)."""
    op = node.op
    if op in _ASSIGNMENTS or (op == "call_method" and node.target.endswith("_")
                              and not node.target.startswith("__")):
        stack = [node.args[1:], node.kwargs]  # walked without recursion or calls: once per edit
        while stack:
            item = stack.pop()
            kind = type(item)
            if kind in SCALAR_TYPES or kind is Node:  # indices, numbers, graph values: no constant tensor
                continue
            if kind is tuple or kind is list:
                stack.extend(item)
            elif kind is dict:
                stack.extend(item.values())
            elif kind is slice:
                if not SCALAR_TYPES.issuperset((type(item.start), type(item.stop), type(item.step))):
                    stack.extend((item.start, item.stop, item.step))
            elif isinstance(item, torch.Tensor):
                return True
    return False


_ASSIGNMENTS = frozenset({"set_output", "set_inputs", "set_input", "skip", "setitem"})


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
