"""Batch layouts: an execution that enlarges the batch still gives each invoke exactly its own rows."""

import pytest
import torch
from nnsight_torch import NNsight

from nnsight_core import BatchError


class Guided(torch.nn.Module):
    """Runs ``inner`` on [x; x + 1] (two blocks) and on x repeated twice per row, like CFG and n samples."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = torch.nn.Linear(3, 3)
        self.repeat = torch.nn.Linear(3, 3)

    def forward(self, x):
        doubled = self.inner(torch.cat([x, x + 1]))
        first, second = doubled.chunk(2)
        repeated = self.repeat(x.repeat_interleave(2, dim=0))
        return first - second + repeated.view(x.shape[0], 2, 3).sum(1)


class GuidedModel(NNsight):
    def batch_layout(self, batch_size, kwargs, method):
        return {2 * batch_size: (2, 1)}


def raw(net, x, module, edit=None):
    seen = []

    def hook(mod, args, out):
        out = out.clone()
        if edit is not None:
            edit(out)
        seen.append(out)
        return out

    handle = getattr(net, module).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return seen, net(x)
    finally:
        handle.remove()


X = [torch.randn(1, 3, generator=torch.Generator().manual_seed(1)),
     torch.randn(2, 3, generator=torch.Generator().manual_seed(2))]


def traced(model, module, edit_second=False):
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(X[0]):
            first = getattr(model, module).output.save()
        with tracer.invoke(X[1]):
            if edit_second:
                getattr(model, module).output[:] = 0
            second = getattr(model, module).output.save()
    return first.value, second.value, tracer.output


def test_two_blocks_give_each_invoke_its_rows_of_both():
    net = Guided()
    (seen,), _ = raw(net, torch.cat(X), "inner")            # rows [a, b, b, a+1, b+1, b+1]
    first, second, _ = traced(GuidedModel(net), "inner")
    torch.testing.assert_close(first, seen[[0, 3]], rtol=0, atol=0)
    torch.testing.assert_close(second, seen[[1, 2, 4, 5]], rtol=0, atol=0)


def test_an_edit_writes_back_into_every_block():
    net = Guided()
    _, expected = raw(net, torch.cat(X), "inner", edit=lambda t: t.__setitem__([1, 2, 4, 5], 0))
    _, second, output = traced(GuidedModel(net), "inner", edit_second=True)
    assert bool((second == 0).all())
    torch.testing.assert_close(output, expected, rtol=0, atol=0)


def test_repeated_rows_stay_with_their_invoke():
    net = Guided()
    (seen,), _ = raw(net, torch.cat(X), "repeat")            # rows [a, a, b, b, b', b']
    calls = []

    class Repeated(NNsight):
        def batch_layout(self, batch_size, kwargs, method):
            calls.append((batch_size, dict(kwargs), method))
            return {2 * batch_size: (1, 2)}

    model = Repeated(net)
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(X[0]):
            first = model.repeat.output.save()
        with tracer.invoke(X[1]):
            second = model.repeat.output.save()
    torch.testing.assert_close(first.value, seen[[0, 1]], rtol=0, atol=0)
    torch.testing.assert_close(second.value, seen[2:], rtol=0, atol=0)
    assert calls == [(3, {}, None)]


def test_a_wrong_sized_edit_names_the_rows_the_invoke_owns():
    model = GuidedModel(Guided())
    with pytest.raises(BatchError, match=r"invoke 1 owns 4 row\(s\)"):
        with torch.no_grad(), model.trace() as tracer:
            with tracer.invoke(X[0]):
                model.inner.output.save()
            with tracer.invoke(X[1]):
                model.inner.output = torch.zeros(2, 3)


def test_an_inconsistent_layout_is_refused():
    class Broken(NNsight):
        def batch_layout(self, batch_size, kwargs, method):
            return {5: (2, 1)}

    model = Broken(Guided())
    with pytest.raises(BatchError, match="inconsistent with a batch of 3 rows"):
        with torch.no_grad(), model.trace() as tracer:
            with tracer.invoke(X[0]):
                model.inner.output.save()
            with tracer.invoke(X[1]):
                pass


def test_a_mapping_pytree_does_not_know_is_narrowed_per_invoke():
    """transformers' BatchEncoding (a UserDict) is no pytree node; its tensors are still split."""
    from transformers import BatchEncoding

    class Encodes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Identity()

        def forward(self, x):
            return self.inner(BatchEncoding({"h": x * 2}))

    model = NNsight(Encodes())
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(X[0]):
            first = model.inner.output["h"].save()
        with tracer.invoke(X[1]):
            second = model.inner.output["h"].save()
    torch.testing.assert_close(first.value, X[0] * 2, rtol=0, atol=0)
    torch.testing.assert_close(second.value, X[1] * 2, rtol=0, atol=0)
