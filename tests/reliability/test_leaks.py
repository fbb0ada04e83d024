"""Leaks: 1000 traces (saves, edits, several invokes, generation, failing traces) leave behind
exactly the values the user saved: no other live tensor, no hook, no resident memory beyond noise.

A saved value that is a view (an invoke's rows of the batch, ``.t[-1]``) keeps the tensor it
views alive, as any PyTorch view does; those bases are the only other survivors. The traces run
under ``torch.no_grad()``, so no autograd history is kept either.

The figures are printed (run with ``-s`` to see them): live tensors, hooks and RSS before and
after the 1000 traces.
"""

from __future__ import annotations

import gc
from typing import Any, Callable, List

import psutil
import pytest
import torch

from nnsight_core import Graph, MissedCallError, Node, Proxy, Runner, TokenIndexError
from nnsight_torch import NNsight

from .bad_inputs import Net, X
from tests.reliability.subjects import PROMPT, assert_clean, hooks_left, make_subject, snapshot

TRACES = 1000
#: Resident memory the 1000 traces may add (allocator noise; the saved values take well under 1 MiB).
RSS_NOISE = 24 * 2**20


def live_tensors() -> List[torch.Tensor]:
    """Python tensor objects alive after a full collection (parameters included)."""
    gc.collect()
    return [obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor)]


def live(kind: type) -> int:
    """How many objects of exactly this class are alive after a full collection."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


def _workload(net: Any, lm: Any) -> List[Callable[[List[Any]], None]]:
    """Ten kinds of trace; each appends the proxies it saved to ``kept``. Only scalars are
    recorded as constants, so the saved values are the only tensors a kept proxy can reach."""
    other = X.flip(0)

    def nnsight_save(kept):
        with net.trace(X):
            kept.append(net.blocks[0].output.save())
            kept.append(net.output.save())

    def nnsight_edit(kept):
        with net.trace(X):
            net.blocks[1].output[:, 0] = 0
            net.layer2.output = net.layer2.output * 2
            kept.append(net.output.save())

    def nnsight_three_invokes(kept):
        with net.trace() as tracer:
            with tracer.invoke(X):
                clean = net.layer1.output
            with tracer.invoke(other):
                net.layer1.output = clean
                kept.append(net.output.save())
            with tracer.invoke(X[:1]):
                kept.append(net.blocks[1].input.save())

    def nnsight_inputs(kept):
        with net.trace(X):
            kept.append(net.blocks[0].inputs[0][0].save())
            net.layer2.input = net.layer2.input * 0.5
            kept.append(net.output.save())

    def nnsight_failing(kept):
        with pytest.raises(MissedCallError), net.trace(X):
            net.blocks[0].output[:] = 0
            net.spare.output.save()

    def nnsight_no_trace(kept):
        kept.append(net.trace(X, trace=False))

    def lm_two_invokes(kept):
        with lm.trace() as tracer:
            with tracer.invoke(PROMPT):
                hidden = lm.model.layers[0].output.t[-1]
            with tracer.invoke("Paris"):
                lm.model.layers[0].output.t[-1] = hidden
                kept.append(lm.lm_head.output.t[-1].save())

    def lm_edit(kept):
        with lm.trace(PROMPT):
            lm.model.layers[1].mlp.output[:] = lm.model.layers[1].mlp.output * 0.5
            kept.append(lm.model.norm.output.save())

    def lm_generate(kept):
        with lm.generate(PROMPT, max_new_tokens=2):
            kept.append(lm.lm_head.output.save())
            lm.lm_head.next().output[:] = 0
            kept.append(lm.generator.output.save())

    def lm_failing(kept):
        with pytest.raises(TokenIndexError), lm.trace(PROMPT):
            lm.lm_head.output.t[99].save()

    return [nnsight_save, nnsight_edit, nnsight_three_invokes, nnsight_inputs, nnsight_failing,
            nnsight_no_trace, lm_two_invokes, lm_edit, lm_generate, lm_failing]


def test_a_thousand_traces_leave_only_the_saved_values(checkpoints):
    net = NNsight(Net())
    lm = make_subject("llama", checkpoints).make()
    lm.dispatch_model()
    kinds = _workload(net, lm)
    with torch.no_grad():
        for _ in range(3):                    # warm-up: lazy imports, caches, allocator pools
            for kind in kinds:
                kind([])
    before_state = [snapshot(net), snapshot(lm)]
    process = psutil.Process()
    baseline = live_tensors()                 # held, so no id below is reused by a new tensor
    structures = {kind: live(kind) for kind in (Graph, Node, Runner)}
    rss_before = process.memory_info().rss

    kept: List[Any] = []
    with torch.no_grad():
        for i in range(TRACES):
            kinds[i % len(kinds)](kept)

    after = live_tensors()
    rss_after = process.memory_info().rss
    old = {id(t) for t in baseline}
    new = {id(t) for t in after} - old
    values = [getattr(proxy, "value", proxy) for proxy in kept]
    assert all(isinstance(v, torch.Tensor) for v in values)
    saved = {id(v) for v in values}
    bases = {id(v._base) for v in values if v._base is not None} - saved
    hooks = len(hooks_left(net)) + len(hooks_left(lm))
    print(f"\n{TRACES} traces: live tensors {len(baseline)} -> {len(after)} ({len(saved)} saved values "
          f"kept, {len(bases)} tensors they are views of); hooks {hooks}; "
          f"RSS {rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB")

    assert saved <= new
    assert new - saved - bases == set(), f"{len(new - saved - bases)} tensors outlived their traces"
    # A saved proxy keeps its trace's graph (printable, values freed); nothing else keeps one.
    graphs = {id(p.node.graph): p.node.graph for p in kept if isinstance(p, Proxy)}
    assert live(Graph) - structures[Graph] == len(graphs)
    assert live(Node) - structures[Node] == sum(len(g.nodes) for g in graphs.values())
    assert live(Runner) == structures[Runner]
    del graphs
    assert_clean(net, before_state[0])
    assert_clean(lm, before_state[1])
    assert rss_after - rss_before < RSS_NOISE, f"RSS grew by {(rss_after - rss_before) / 2**20:.1f} MiB"

    del kept, values, after
    assert len(live_tensors()) == len(baseline)
    assert {kind: live(kind) for kind in structures} == structures


def test_a_saved_proxy_keeps_no_unsaved_value():
    """After a trace, every node of its graph except the saved ones holds no value."""
    net = NNsight(Net())
    with net.trace(X) as tracer:
        hidden = net.blocks[0].output * 2
        net.blocks[1].output[:] = hidden[:, :8]
        out = net.output.save()
    held = [index for index in tracer.values if not tracer.graph.nodes[index].saved]
    assert held == [] and out.node.index in tracer.values
    assert isinstance(out.value, torch.Tensor)
