"""Iteration over calls: envoy.all(), envoy.iter[...], tracer.iter[...] and tracer.all() on a module called repeatedly."""

import pytest
import torch
from nnsight_torch import NNsight

from nnsight_core import InvokeError, MissedCallError
from nnsight_core.testing import hook_count

CALLS = 4


class Repeated(torch.nn.Module):
    """Applies ``layer`` (and ``gate`` after it) four times, like a decoding loop."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 3)
        self.gate = torch.nn.Tanh()
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        for _ in range(CALLS):
            x = self.gate(self.layer(x))
        return self.head(x)


X = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))


def raw(net, x, edit_calls=(), edit=None, module="layer"):
    """Outputs of ``module`` at every call (after ``edit`` at ``edit_calls``) and the final output."""
    seen = []

    def hook(mod, args, out):
        if len(seen) in edit_calls:
            out = edit(out.clone())
        seen.append(out.clone())
        return out

    handle = getattr(net, module).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return seen, net(x)
    finally:
        handle.remove()


@pytest.fixture
def model():
    return NNsight(Repeated())


def test_all_saves_one_value_per_call(model):
    with torch.no_grad(), model.trace(X):
        outs = model.layer.all().output.save()
    seen, _ = raw(model._model, X)
    assert isinstance(outs.value, list) and len(outs.value) == CALLS
    for got, want in zip(outs.value, seen):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_all_edits_every_call(model):
    with torch.no_grad(), model.trace(X) as tracer:
        model.layer.all().output[:, 0] = 0
    _, expected = raw(model._model, X, range(CALLS), lambda t: t.index_fill(1, torch.tensor([0]), 0))
    torch.testing.assert_close(tracer.output, expected, rtol=0, atol=0)


def test_envoy_iter_addresses_a_range_of_calls(model):
    with torch.no_grad(), model.trace(X) as tracer:
        model.layer.iter[1:3].output = model.layer.iter[1:3].output * 2
        doubled = model.layer.iter[1:3].output.save()
    seen, expected = raw(model._model, X, (1, 2), lambda t: t * 2)
    torch.testing.assert_close(tracer.output, expected, rtol=0, atol=0)
    assert len(doubled.value) == 2
    torch.testing.assert_close(doubled.value[0], seen[1], rtol=0, atol=0)


def test_a_tracer_block_binds_every_module_to_the_same_call(model):
    """Inside the block, layer and gate are both at call k: read one, edit the other."""
    with torch.no_grad(), model.trace(X) as tracer:
        with tracer.iter[0:4:2]:
            before = model.layer.output.save()
            model.gate.output = model.layer.output * 0.5    # skip the tanh at calls 0 and 2
    net = model._model
    layer_outs = []
    hooks = [net.layer.register_forward_hook(lambda m, a, o: layer_outs.append(o)),
             net.gate.register_forward_hook(
                 lambda m, a, o: layer_outs[-1] * 0.5 if len(layer_outs) in (1, 3) else o)]
    try:
        with torch.no_grad():
            expected = net(X)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(tracer.output, expected, rtol=0, atol=0)
    torch.testing.assert_close(before.value[1], layer_outs[2], rtol=0, atol=0)


def test_tracer_all_and_values_from_outside_the_block(model):
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(X):
            scale = model.head.weight.sum() * 0 + 3        # a value computed once
            with tracer.all():
                model.layer.output[:] = model.layer.output * scale
                norms = model.layer.output.norm().save()
    seen, expected = raw(model._model, X, range(CALLS), lambda t: t * 3)
    torch.testing.assert_close(tracer.output, expected, rtol=0, atol=0)
    assert [round(float(n), 4) for n in norms.value] == [round(float(s.norm()), 4) for s in seen]


def test_iteration_rows_belong_to_each_invoke(model):
    other = torch.randn(1, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(X):
            mine = model.layer.all().output.save()
        with tracer.invoke(other):
            model.layer.all().output[:] = 0
    seen, _ = raw(model._model, X)
    for got, want in zip(mine.value, seen, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    _, alone = raw(model._model, other, range(CALLS), lambda t: t * 0)
    torch.testing.assert_close(tracer.output[2:], alone, rtol=0, atol=1e-6)


def test_the_graph_runs_again_with_the_same_result(model):
    with torch.no_grad(), model.trace(X) as tracer:
        outs = model.layer.all().output.save()
    seen, _ = raw(model._model, X)
    assert len(tracer.graph) == 1          # copies made during the run are gone
    for run in range(2):
        if run:
            with torch.no_grad():
                model.interleave(model._model, tracer.graph, X)
        for got, want in zip(outs.value, seen, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_call_beyond_the_last_raises_naming_module_and_call(model):
    with pytest.raises(MissedCallError, match=r"model\.layer\.output \(calls 2, 3, 4\) never reached call 4: "
                                              r"model\.layer ran 4 time"):
        with torch.no_grad(), model.trace(X) as tracer:
            with tracer.iter[2:5]:
                model.layer.output.save()
    assert hook_count(model._model) == 0


def test_an_all_of_a_module_that_never_runs_raises(model):
    model._model.unused = torch.nn.Linear(3, 3)
    with pytest.raises(MissedCallError, match=r"model\.unused\.output \(every call\) never reached call 0"):
        with torch.no_grad(), model.trace(X):
            model.unused.all().output.save()


@pytest.mark.parametrize("calls", [-1, slice(-2, None), slice(0, 4, 0), "1", 1.5])
def test_bad_call_ranges(model, calls):
    with pytest.raises(InvokeError, match="tracer.iter|model.layer.iter"):
        with model.trace(X) as tracer:
            with tracer.iter[calls]:
                pass
    with pytest.raises(InvokeError):
        with model.trace(X):
            model.layer.iter[calls]


def test_misuse_of_blocks(model):
    with pytest.raises(InvokeError, match="cannot be nested"):
        with model.trace(X) as tracer:
            with tracer.all():
                with tracer.iter[1]:
                    pass
    with pytest.raises(InvokeError, match="next\\(\\) inside an iteration block"):
        with model.trace(X) as tracer:
            with tracer.all():
                model.layer.next()
    with pytest.raises(InvokeError, match="inside an invoke"):
        with model.trace() as tracer:
            with tracer.all():
                pass
    with pytest.raises(InvokeError, match="two iterations"):
        with model.trace(X):
            model.gate.iter[1].output = model.layer.all().output
    assert hook_count(model._model) == 0
