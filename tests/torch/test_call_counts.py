"""The cost of the hot path in function calls (``nnsight_core.testing.call_counts``), pinned.

Call counts do not depend on the machine, so these tests guard the interleaving hot path
in CI where timings cannot: each pins how many Python calls a trace adds over the raw
forward pass, and how many each additional intervention adds. A raw
``register_forward_hook`` that stores a module output costs 11 Python calls; the targets
are an empty trace within 25 Python calls of the raw forward pass and every further
``.save()``, in-place edit or ``.next()`` step within 12.

A failure means a change made the hot path dearer: find the new calls with a
``sys.setprofile`` function that prints each call (or ``benchmarks/overhead.py --profile``)
and remove them, or, if the cost is deliberate, raise the bound here and say why in the commit.
The counts are for CPython 3.11 (comprehensions are calls there) and torch 2.13.
"""

from __future__ import annotations

import torch

from nnsight_core.testing import call_counts
from nnsight_torch import NNsight
from tests.helpers import Shared, make_net

#: Python calls an empty trace may add to the raw forward pass.
EMPTY_TRACE = 25
#: Python calls each additional intervention (a module value's .save(), an in-place edit,
#: a .next() step with its save) may add: the target, what a raw hook costs.
PER_INTERVENTION = 12
#: What each costs now (pinned below the target; raise only with a reason in the commit):
#: a save records one node and marks it saved (Graph.create_module_value and Graph.save: 2
#: calls + the property and .save(); its proxy is made without an __init__ call) and runs in
#: the hook's short event path (2 calls); an edit also runs its setitem node and copies the rows.
PER_SAVE = 6
PER_EDIT = 10
PER_NEXT_SAVE = 5
#: What one raw forward hook storing a module output costs (register, call, remove), for reference.
RAW_HOOK = 11

MODULES = ("layer1", "sigma1", "layer2", "sigma2")


def _tiny():
    net = make_net()
    return net, NNsight(net), torch.rand(1, 5)


def _trace(model, x, body):
    def run():
        with model.trace(x):
            body()
    return run


def _per_extra(counts):
    """Per-step growth of a list of counts for 1, 2, ... interventions."""
    return [b - a for a, b in zip(counts, counts[1:])]


def test_a_raw_hook_costs_what_the_targets_are_based_on():
    net, _, x = _tiny()
    saved = []

    def hooked():
        handle = net.layer1.register_forward_hook(lambda module, args, output: saved.append(output))
        try:
            net(x)
        finally:
            handle.remove()

    with torch.no_grad():
        extra = call_counts(hooked) - call_counts(lambda: net(x))
    assert extra.python == RAW_HOOK, extra


def test_an_empty_trace_adds_few_calls_to_the_raw_forward_pass():
    net, model, x = _tiny()
    with torch.no_grad():
        def empty():
            with model.trace(x):
                pass

        extra = call_counts(empty) - call_counts(lambda: net(x))
    assert extra.python <= EMPTY_TRACE, (
        f"an empty trace now adds {extra.python} Python calls to the raw forward pass "
        f"(bound {EMPTY_TRACE}): the fixed cost of every trace grew.")


def test_each_additional_save_costs_at_most_a_raw_hook():
    net, model, x = _tiny()

    def saves(n):
        return lambda: [getattr(model, name).output.save() for name in MODULES[:n]]

    with torch.no_grad():
        counts = [call_counts(_trace(model, x, saves(n))) for n in range(1, 5)]
    steps = _per_extra(counts)
    for step in steps:
        assert step.python <= PER_SAVE <= PER_INTERVENTION, (
            f"one more `.output.save()` now costs {step.python} Python calls (bound "
            f"{PER_SAVE}, a raw hook costs {RAW_HOOK}): the per-intervention hot path grew.")


def test_each_additional_in_place_edit_costs_at_most_a_raw_hook():
    net, model, x = _tiny()

    def edits(n):
        def body():
            for name in MODULES[:n]:
                getattr(model, name).output[:, 0] = 0
        return body

    with torch.no_grad():
        counts = [call_counts(_trace(model, x, edits(n))) for n in range(1, 5)]
    steps = _per_extra(counts)
    for step in steps:
        assert step.python <= PER_EDIT <= PER_INTERVENTION, (
            f"one more in-place edit (`.output[:, 0] = 0`) now costs {step.python} Python calls "
            f"(bound {PER_EDIT}): the per-intervention hot path grew.")


def test_each_next_step_costs_at_most_a_raw_hook():
    class Loop(torch.nn.Module):
        """Calls one block 6 times, like 6 generation steps."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.block = torch.nn.Linear(4, 4)

        def forward(self, x):
            for _ in range(6):
                x = self.block(x)
            return x

    model, x = NNsight(Loop()), torch.rand(1, 4)

    def steps(n):
        def body():
            envoy = model.block
            envoy.output.save()
            for _ in range(n):
                envoy.next().output.save()
        return body

    with torch.no_grad():
        counts = [call_counts(_trace(model, x, steps(n))) for n in range(1, 5)]
    per_step = _per_extra(counts)
    for step in per_step:
        assert step.python <= PER_NEXT_SAVE <= PER_INTERVENTION, (
            f"one more `.next().output.save()` step now costs {step.python} Python calls "
            f"(bound {PER_NEXT_SAVE}): the per-call hot path grew.")
