"""Threads: traces from several threads give each thread exactly its own results.

The guarantee (docs/reliability.rst): each thread records into its own trace; one module runs
one interleaved execution at a time (other threads' executions on it wait, also across
wrappers of the same module); a hooked module called from another thread runs unhooked. So
two threads tracing one model both get the results a single thread would get, and plain calls
of the model from other threads never see a trace's edits. Every expected value comes from
plain PyTorch with raw forward hooks, computed before the threads start.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List

import pytest
import torch

from nnsight_torch import NNsight

from .bad_inputs import Net
from tests.reliability.subjects import assert_clean, make_subject, snapshot

ROUNDS = 25


def _inputs(seed: int) -> torch.Tensor:
    return torch.rand(2, 5, generator=torch.Generator().manual_seed(seed))


def _traced(model: Any, x: torch.Tensor, scale: float) -> Dict[str, torch.Tensor]:
    """Scale blocks[0]'s output in a trace; return it and the model output."""
    with torch.no_grad(), model.trace(x):
        model.blocks[0].output = model.blocks[0].output * scale
        hidden = model.blocks[0].output.save()
        out = model.output.save()
    return {"hidden": hidden.value, "out": out.value}


def _expected(x: torch.Tensor, scale: float) -> Dict[str, torch.Tensor]:
    net, seen = Net(), {}

    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        seen["hidden"] = output * scale
        return seen["hidden"]

    handle = net.blocks[0].register_forward_hook(hook)
    with torch.no_grad():
        seen["out"] = net(x)
    handle.remove()
    return seen


def _run_threads(targets: List[Callable[[], None]]) -> List[BaseException]:
    """Start every target at once (behind a barrier); return the exceptions they raised."""
    barrier = threading.Barrier(len(targets))
    errors: List[BaseException] = []

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait()
                target()
            except BaseException as error:  # noqa: BLE001 - reported to the main thread
                errors.append(error)
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _assert_equal(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], who: str) -> None:
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0,
                                   msg=lambda m, key=key: f"{who} {key}: {m}")


def test_two_threads_tracing_one_model_get_their_own_results():
    model = NNsight(Net())
    before = snapshot(model)
    jobs = {name: [(_inputs(10 * k + i), 1.0 + k + i / 10) for i in range(ROUNDS)]
            for k, name in enumerate(("a", "b"))}
    expected = {name: [_expected(x, s) for x, s in job] for name, job in jobs.items()}
    results: Dict[str, list] = {"a": [], "b": []}

    def worker(name: str) -> Callable[[], None]:
        return lambda: results[name].extend(_traced(model, x, s) for x, s in jobs[name])

    assert _run_threads([worker("a"), worker("b")]) == []
    for name in jobs:
        for i, (got, want) in enumerate(zip(results[name], expected[name])):
            _assert_equal(got, want, f"thread {name} trace {i}")
    assert_clean(model, before)


def test_two_threads_tracing_two_models_get_their_own_results():
    models = {"a": NNsight(Net()), "b": NNsight(Net())}
    befores = {name: snapshot(m) for name, m in models.items()}
    jobs = {name: [(_inputs(100 * k + i), -1.0 - k - i) for i in range(ROUNDS)]
            for k, name in enumerate(models)}
    expected = {name: [_expected(x, s) for x, s in job] for name, job in jobs.items()}
    results: Dict[str, list] = {"a": [], "b": []}

    def worker(name: str) -> Callable[[], None]:
        return lambda: results[name].extend(_traced(models[name], x, s) for x, s in jobs[name])

    assert _run_threads([worker("a"), worker("b")]) == []
    for name in jobs:
        for i, (got, want) in enumerate(zip(results[name], expected[name])):
            _assert_equal(got, want, f"model {name} trace {i}")
        assert_clean(models[name], befores[name])


class Gate(torch.nn.Module):
    """Identity that lets a test hold executions open: in a thread named in ``plan``, it sets
    that entry's ``arrived`` event, then waits (at most ``timeout`` s) for its ``proceed`` event."""

    def __init__(self) -> None:
        super().__init__()
        self.plan: Dict[str, Any] = {}

    def hold(self, thread: str, proceed: threading.Event, timeout: float = 5.0) -> threading.Event:
        """Hold ``thread`` at the gate until ``proceed`` is set; return the event set on arrival."""
        arrived = threading.Event()
        self.plan[thread] = (arrived, proceed, timeout)
        return arrived

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        entry = self.plan.get(threading.current_thread().name)
        if entry is not None:
            arrived, proceed, timeout = entry
            arrived.set()
            proceed.wait(timeout)
        return x


class GatedNet(Net):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.gate(x))


def test_plain_calls_from_another_thread_during_a_trace_see_no_edit():
    """While one thread's trace is executing (hooks in place), another thread calls the module
    directly and records a trace of its own, and a third runs trace=False (which waits for the
    execution to end): none of them sees the edit."""
    net = GatedNet()
    model = NNsight(net)
    before = snapshot(model)
    x, y = _inputs(1), _inputs(2)
    with torch.no_grad():
        plain_y = Net()(y)
    traced: Dict[str, Any] = {}

    def tracer() -> None:
        with torch.no_grad(), model.trace(x):
            model.layer2.output[:] = 0           # a visible edit: any leak into y would show
            model.blocks[0].output = model.blocks[0].output * 3
            traced["out"] = model.output.save()

    release = threading.Event()
    arrived = net.gate.hold("tracer", release)
    thread = threading.Thread(target=tracer, name="tracer")
    thread.start()
    plain: Dict[str, Any] = {}
    other = threading.Thread(target=lambda: plain.update(out=model.trace(y, trace=False)))
    try:
        assert arrived.wait(5.0), "the tracing thread never reached the model"
        other.start()
        with torch.no_grad():
            direct = net(y)
            with model.trace(y):
                recorded = model.output.save()
                release.set()                     # recorded here; it runs once the other trace ends
    finally:
        release.set()
        thread.join()
        other.join()
    torch.testing.assert_close(direct, plain_y, rtol=0, atol=0)
    torch.testing.assert_close(plain["out"], plain_y, rtol=0, atol=0)
    torch.testing.assert_close(recorded.value, plain_y, rtol=0, atol=0)
    assert bool((traced["out"].value == 0).all())
    assert_clean(model, before)


def _hold_a_scan(net: GatedNet, model: Any, x: torch.Tensor) -> Any:
    """Start a thread whose trace asks for a ``.shape``, so it scans on fake tensors; return it
    (held in the scan, at the gate), the event that releases it, and its results."""
    release, results = threading.Event(), {}
    arrived = net.gate.hold("scanner", release)

    def scanner() -> None:
        with torch.no_grad(), model.trace(x):
            model.layer2.output = model.layer2.output + 1
            results["shape"] = model.layer2.output.shape
            results["out"] = model.output.save()

    thread = threading.Thread(target=scanner, name="scanner")
    thread.start()
    assert arrived.wait(5.0), "the scanning thread never reached the model"
    return thread, release, results


def test_trace_false_from_another_thread_waits_for_a_scan():
    """A scan swaps the model's weights for fake ones while it runs: trace=False from another
    thread waits for it (the model's execution lock) and computes on the real weights."""
    net = GatedNet()
    model = NNsight(net)
    before = snapshot(model)
    x, y = _inputs(4), _inputs(5)
    with torch.no_grad():
        plain_x, plain_y = Net()(x), Net()(y)
    thread, release, results = _hold_a_scan(net, model, x)
    plain: Dict[str, Any] = {}
    other = threading.Thread(target=lambda: plain.update(out=model.trace(y, trace=False)))
    try:
        other.start()
        other.join(0.5)            # it waits on the lock while the scan is held
    finally:
        release.set()
        thread.join()
        other.join()
    assert type(plain["out"]) is torch.Tensor
    torch.testing.assert_close(plain["out"], plain_y, rtol=0, atol=0)
    torch.testing.assert_close(results["out"].value, plain_x + 1, rtol=0, atol=0)
    assert_clean(model, before)


def test_direct_call_from_another_thread_during_a_scan_sees_real_weights():
    net = GatedNet()
    model = NNsight(net)
    x, y = _inputs(6), _inputs(7)
    with torch.no_grad():
        plain_y = Net()(y)
    thread, release, _ = _hold_a_scan(net, model, x)
    try:
        with torch.no_grad():
            direct = net(y)
    finally:
        release.set()
        thread.join()
    assert type(direct) is torch.Tensor, f"a direct call during a scan returned a {type(direct).__name__}"
    torch.testing.assert_close(direct, plain_y, rtol=0, atol=0)


def test_two_wrappers_of_one_module_in_two_threads_do_not_undo_each_others_hooks():
    """Thread A's trace holds the module until thread B's trace of another wrapper of the same
    module is executing too (or 1 s passed), and B's holds it until A has finished. If both could
    hook the module at once, A's clean-up would remove B's hooks (B's value would never arrive)
    and B's would put A's stale hook back on the module for good."""
    net = GatedNet()
    first, second = NNsight(net), NNsight(net)
    before = snapshot(first)
    x = _inputs(3)
    expected = _expected(x, 2.0)
    results: Dict[str, Any] = {}
    a_done, b_arrived_proceed = threading.Event(), threading.Event()
    a_arrived = net.gate.hold("A", b_arrived_proceed, timeout=1.0)
    b_arrived = net.gate.hold("B", a_done)

    def trace_with(model: Any, name: str) -> None:
        try:
            results[name] = _traced(model, x, 2.0)
        except Exception as error:  # noqa: BLE001 - checked below
            results[name] = error
        finally:
            if name == "A":
                a_done.set()

    threads = [threading.Thread(target=trace_with, args=(m, n), name=n)
               for m, n in ((first, "A"), (second, "B"))]
    threads[0].start()
    assert a_arrived.wait(5.0)
    threads[1].start()
    if b_arrived.wait(1.0):                       # only without the per-module lock
        b_arrived_proceed.set()
    for thread in threads:
        thread.join()
    for name in ("A", "B"):
        assert not isinstance(results[name], Exception), f"wrapper {name}: {results[name]!r}"
        _assert_equal(results[name], expected, f"wrapper {name}")
    assert_clean(first, before)
    assert_clean(second, before)


def test_two_threads_tracing_one_language_model(checkpoints):
    subject = make_subject("llama", checkpoints)
    model = subject.make()
    prompts = {"a": "The Eiffel Tower is in the city of", "b": "The Colosseum is in"}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.model_key)
    fresh = subject.fresh()
    with torch.no_grad():
        expected = {name: fresh(**tok(p, return_tensors="pt")).logits[:, -1] for name, p in prompts.items()}
    results: Dict[str, list] = {"a": [], "b": []}

    def worker(name: str) -> Callable[[], None]:
        def run() -> None:
            for _ in range(10):
                with torch.no_grad(), model.trace() as tracer:
                    with tracer.invoke(prompts[name]):
                        mine = model.lm_head.output.t[-1].save()
                    with tracer.invoke(prompts["b" if name == "a" else "a"]):
                        model.lm_head.output[:] = 0      # the other invoke's edit must not leak
                results[name].append(mine.value)
        return run

    assert _run_threads([worker("a"), worker("b")]) == []   # also loads the lazy weights once
    before = snapshot(model)
    for name, values in results.items():
        assert len(values) == 10
        for value in values:
            torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-5)
    assert_clean(model, before)
