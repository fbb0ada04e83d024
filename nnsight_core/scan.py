"""Scan: run a trace's graph on fake tensors, so shapes are known and errors found before the model runs.

A *scan* executes the model exactly as the trace will, through the adapter's
``nnsight_execute`` with the recorded graph interleaved by an
:class:`~nnsight_core.interleaver.Interleaver`, but on fake tensors
(PyTorch's ``FakeTensorMode``): every tensor has a shape, a dtype and a device
and no data, so nothing is computed and no memory is used for activations.
The model's parameters and buffers are swapped for fake copies for the
duration (restored afterwards), so a model whose weights are still on the
meta device (a ``LanguageModel`` before dispatch) scans without loading them.

It is lazy. Nothing is scanned until a proxy's ``.shape``, ``.dtype``,
``.device`` or ``.ndim`` is asked for inside a trace, or until the trace exits
with a graph that holds a tensor constant (an assigned tensor, a saved value
of an earlier trace): then the scan checks the graph before the real run, so
a wrongly shaped assignment raises before the model runs, naming the user's
line. A trace that does neither never scans. ``trace(..., scan=False)``
turns both off.

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
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

import torch
from torch._subclasses import fake_tensor as _fake

from ._tree import tree_map
from .errors import InterventionError, NNsightError, ScanError
from .graph import EMPTY, Node
from .interleaver import Interleaver, StopExecution

if TYPE_CHECKING:
    from .proxy import Proxy
    from .tracer import Runner

__all__ = ["Scan", "run_scan", "metadata", "validate", "is_scanning", "METADATA"]

#: Attributes of a proxy answered from the scan inside a trace (methods such as ``.size()`` are recorded).
METADATA = ("shape", "dtype", "device", "ndim")

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


def is_scanning() -> bool:
    """Whether this thread is running a scan: hook wrappers of ``nnsight_execute`` can skip fake runs.

    Example:
        >>> @hookimpl(wrapper=True)
        ... def nnsight_execute(model):
        ...     if not is_scanning():
        ...         print("a real execution")
        ...     return (yield)
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
        nodes = runner._graph.nodes
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
                raise ScanError(f"{node.describe()}{_at(node)}: the scan reached no call of "
                                f"{node.iteration}, so its shape is unknown before the model runs.")
            value = value[0]  # the first call's: later calls may differ (generation steps)
        if type(value) is _Unknown:
            raise ScanError(f"the shape of {node.describe()}{_at(node)} is unknown before the model runs: "
                            f"{value.reason}. Save the value and read it after the trace.")
        if value is EMPTY:
            why = (f"the scan on fake tensors stopped early ({_describe(self.stopped)})"
                   if self.stopped is not None else "its module call did not happen in the scan")
            raise ScanError(f"the shape of {node.describe()}{_at(node)} is unknown before the model runs: "
                            f"{why}. Save the value and read its shape after the trace.")
        return value


def metadata(proxy: Proxy, name: str) -> Any:
    """``proxy.<name>`` for a name of :data:`METADATA`.

    Inside the trace that records ``proxy`` (with ``scan=True``), the attribute
    of its fake value, scanning first if needed; with ``scan=False``, a recorded
    ``getattr`` node as for any attribute. After the trace, the attribute of the
    saved value.

    Raises:
        ScanError: The scan cannot compute the value, or it has no such attribute.
        ValueNotSetError: After the trace, for a value that was not saved.
    """
    node = proxy.node
    if not node.graph.recording:
        return getattr(proxy.value, name)
    from . import _state  # noqa: PLC0415 - keep this module import-light for proxy.py

    runner = _state.current_runner()
    if runner is None or runner._graph is not node.graph or not runner._scan:
        return proxy._record("getattr", name, (proxy,))
    scan = runner._scan_state
    if scan is None or not scan.covers(node, len(runner.invokers)):
        scan = run_scan(runner)
    value = scan.value(node)
    try:
        return getattr(value, name)
    except AttributeError:
        # Not an AttributeError: Python would fall back to Proxy.__getattr__ and record a node.
        raise ScanError(f"{node.describe()}{_at(node)} is a {type(value).__name__}, which has no "
                        f".{name}; index it first (e.g. `[0].{name}`).") from None


def validate(runner: Runner, batched: Any) -> None:
    """Check the graph on fake tensors before the real run, if it needs checking.

    Called as the trace exits. It scans (unless the last scan is current) when the user asked
    for a shape during the trace or the graph holds a tensor constant, which could have the wrong shape.

    Raises:
        AssignmentError, BatchError, InterventionError, OutOfOrderEditError: What the real run
            would raise, found on fake tensors.
    """
    scan = runner._scan_state
    runner._scan_state = None
    if scan is None and not _has_tensor_constant(runner._graph.nodes):
        return
    if scan is None or not scan.current(runner):
        run_scan(runner, batched)
        runner._scan_state = None


def run_scan(runner: Runner, batched: Any = None) -> Scan:
    """Run the model on fake tensors with ``runner``'s graph interleaved; keep the result on the runner.

    Args:
        runner: The trace, open or exiting.
        batched: Its batched inputs, if already made (else they are batched here).

    Raises:
        ScanError: The trace has no inputs yet.
        NNsightError: The graph fails on fake tensors as it would when the model runs.
    """
    model, graph = runner._model, runner._graph
    if not runner.invokers:
        raise ScanError("shapes are known once the trace has inputs: ask for them inside an invoke "
                        "(or a trace given inputs).")
    if batched is None:
        batched = model._batch_inputs([i.prepared for i in runner.invokers],
                                      [i.batch_size for i in runner.invokers])
    if len(runner.invokers) > 1:
        graph.layouts = model.batch_layout(graph.batch_size, runner._kwargs, runner.method)
    scan = Scan(list(graph.nodes), len(runner.invokers))
    saved = [node.saved for node in graph.nodes]
    try:
        for node in graph.nodes:
            node.saved = True  # keep every value: the scan answers for all of them
        with model._lock, _scanning():
            mode = _ScanMode(allow_non_fake_inputs=True)
            with _fake_state(model, mode), mode:
                fake_inputs = tree_map(lambda leaf: _fake_input(mode, leaf), batched)
                scan.stopped = _execute(runner, fake_inputs)
        for node in graph.nodes:
            if node.value is not EMPTY:
                scan.values[node.index] = node.value
    finally:
        for node, flag in zip(graph.nodes, saved):
            node.saved = flag
            node.value = EMPTY
            node.done = False
    runner._scan_state = scan
    return scan


def _execute(runner: Runner, inputs: Any) -> Optional[BaseException]:
    """Run the fake execution; return why it ended early (None if it did not).

    Raises:
        NNsightError: A check of the graph failed, reworded as found before the model ran.
    """
    model = runner._model
    interleaver = _ScanInterleaver(runner._graph, model._model, model._attached)
    try:
        with interleaver:
            model._execute(inputs, method=runner.method, **runner._kwargs)
    except NNsightError as error:
        if error is interleaver.failure:
            raise
        raise type(error)(f"{error} (found before the model ran, by the scan on fake tensors)") \
            from error.__cause__
    except (Exception, StopExecution) as error:  # noqa: BLE001 - the real run reports real failures
        return error
    return None


class _ScanInterleaver(Interleaver):
    """The Interleaver on fake values.

    A node that fake tensors cannot compute (it needs values) gets an unknown
    value instead of failing, and so does everything computed from it.
    Functions given to ``tracer.apply``/``tracer.log`` are not called (they are
    user code, with side effects), and no backward pass runs: a gradient is a
    fake tensor like its value.

    Attributes:
        failure: The error of the node that failed on fake tensors, if one did.
    """

    failure: Optional[InterventionError] = None

    def _run(self, node: Node) -> None:
        for dep in node.deps:
            if type(dep.value) is _Unknown:
                self._feed(node, dep.value)
                return
        try:
            super()._run(node)
        except InterventionError as error:
            cause = error.__cause__
            if cause is not None and _fake_limit(cause):
                self._feed(node, _Unknown(f"it depends on tensor values ({_describe(cause)})"))
                return
            self.failure = _scan_failure(node, cause)
            raise self.failure from cause

    def apply(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return _Unknown("the scan does not call functions given to tracer.apply() or tracer.log()")

    def grad(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return torch.empty_like(args[0])

    def set_grad(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return args[1]

    def backward(self, node: Node, args: tuple, kwargs: dict) -> None:
        return None


class _ScanMode(_fake.FakeTensorMode):
    """``FakeTensorMode`` that keeps the values of small integer and boolean tensors computed from
    constants only (the inputs' attention masks and position ids), so model code that branches on
    them (``if (mask == 1).all():``) still runs. Model weights never take part: they are fake.
    """

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


@contextlib.contextmanager
def _fake_state(model: Any, mode: _ScanMode) -> Iterator[None]:
    """Swap every parameter and buffer of the model (and its attached modules) for a fake copy.

    Fake copies keep in-place updates (``num_batches_tracked += 1``) and computations on
    weights alone (``weight.float()``) off the real tensors; tied weights stay tied.
    """
    modules = list(model._model.modules())
    for extra in model._attached.values():
        modules.extend(extra.modules())
    swapped = []
    try:
        for module in modules:
            for table in (module._parameters, module._buffers):
                for name, tensor in table.items():
                    if tensor is not None and not isinstance(tensor, _fake.FakeTensor):
                        swapped.append((table, name, tensor))
                        table[name] = mode.from_tensor(tensor)
        yield
    finally:
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


def _has_tensor_constant(nodes: List[Node]) -> bool:
    for node in nodes:
        if _holds_tensor(node.args) or (node.kwargs and _holds_tensor(node.kwargs)):
            return True
    return False


def _holds_tensor(value: Any) -> bool:
    kind = type(value)
    if kind is tuple or kind is list:
        return any(_holds_tensor(v) for v in value)
    if kind is dict:
        return any(_holds_tensor(v) for v in value.values())
    return isinstance(value, torch.Tensor)


def _describe(error: Optional[BaseException]) -> str:
    if isinstance(error, StopExecution):
        return "tracer.stop() ends the execution before it"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _at(node: Node) -> str:
    where = node.source()
    return f" (recorded at {where})" if where else ""
