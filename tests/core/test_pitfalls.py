"""One test per pitfall in shared/PITFALLS.md that applies to the core (see also tests/torch)."""

import threading

import pytest
import torch

import nnsight_core
from nnsight_core import NNsightModel, hookimpl
from nnsight_core.plugins import get_plugin_manager
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

from tests.helpers import make_net


class Deep(torch.nn.Module):
    """Hundreds of modules; one of them reports how many hooks exist while it runs."""

    def __init__(self, n=300):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(n))
        self.seen_hooks = []

    def forward(self, x):
        self.seen_hooks.append(hook_count(self))
        for block in self.blocks:
            x = block(x)
        return x


def test_permanent_hooks_none_outside_a_trace_and_only_touched_modules_inside():
    torch.manual_seed(0)
    net = Deep()
    model = NNsight(net)
    x = torch.rand(2, 4)
    with model.trace(x):
        pass
    with model.trace(x):
        model.blocks[10].output.save()
        model.blocks[20].input.save()
    assert net.seen_hooks == [0, 2]
    assert hook_count(net) == 0


class MaskUser(torch.nn.Module):
    """Receives a batch-first tensor, a broadcast mask (batch 1) and a token-flattened tensor."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Identity()
        self.flat = torch.nn.Identity()

    def forward(self, x, mask):
        y = self.inner(x, mask)
        tokens = self.flat(y.reshape(-1, y.shape[-1]))   # (B*T, D): not batch-first
        return tokens.reshape(y.shape)


class Identity2(torch.nn.Module):
    def forward(self, x, mask):
        return x * mask


def test_batch_narrowing_only_touches_batch_first_tensors():
    net = MaskUser()
    net.inner = Identity2()
    x1, x2 = torch.rand(1, 3, 2), torch.rand(2, 3, 2)
    mask = torch.tensor([[1.0, 0.0, 1.0]]).unsqueeze(-1)   # (1, 3, 1): broadcast over the batch
    model = NNsight(net)
    with model.trace(mask=mask) as tracer:
        with tracer.invoke(x1):
            in1 = model.inner.inputs.save()
            flat1 = model.flat.output.save()
        with tracer.invoke(x2):
            in2 = model.inner.inputs.save()
            model.inner.output[:] = 7
            out2 = model.output.save()
    args1, _ = in1.value
    assert torch.equal(args1[0], x1)
    assert torch.equal(in2.value[0][0], x2)
    # The broadcast mask is shared, not sliced to rows.
    assert torch.equal(args1[1], mask) and torch.equal(in2.value[0][1], mask)
    # A (B*T, D) tensor is not batch-first: each invoke sees all of it.
    assert flat1.value.shape == (9, 2)
    assert torch.equal(out2.value, torch.full((2, 3, 2), 7.0))
    torch.testing.assert_close(flat1.value[:3], (x1 * mask).reshape(3, 2))


class TwoStep(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 3)
        self.b = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.b(self.a(x))


def test_two_threads_tracing_one_model_get_their_own_results():
    torch.manual_seed(0)
    net = TwoStep()
    model = NNsight(net)
    inputs = [torch.rand(2, 3) for _ in range(8)]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(20):
                with model.trace(inputs[i]):
                    model.a.output[:] = i
                    out = model.output.save()
                results[i] = out.value
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(8):
        assert torch.equal(results[i], net.b(torch.full((2, 3), float(i))))
    assert hook_count(net) == 0


class LazyNet(NNsightModel):
    """A wrapper whose module is built from a key by a test adapter (no real weights until dispatch)."""


class LazyAdapter:
    def __init__(self):
        self.loads = []

    @hookimpl
    def nnsight_load(self, model, model_key, args, kwargs, meta):
        if not isinstance(model, LazyNet):
            return None
        self.loads.append(meta)
        width = int(model_key.split(":")[1])
        if meta:
            with torch.device("meta"):
                return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU())
        torch.manual_seed(kwargs.get("seed", 0))
        return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU())

    @hookimpl
    def nnsight_prepare_inputs(self, model, inputs, kwargs):
        return ((inputs[0],), inputs[0].shape[0]) if isinstance(model, LazyNet) else None

    @hookimpl
    def nnsight_batch_inputs(self, model, prepared, batch_sizes):
        return (torch.cat([p[0] for p in prepared]),) if isinstance(model, LazyNet) else None

    @hookimpl
    def nnsight_execute(self, model, batched, kwargs):
        return model._model(*batched) if isinstance(model, LazyNet) else None


@pytest.fixture
def lazy_adapter():
    adapter = LazyAdapter()
    manager = get_plugin_manager()
    manager.register(adapter)
    yield adapter
    manager.unregister(adapter)


def test_lazy_loading_through_hooks_dispatches_on_first_trace(lazy_adapter):
    model = LazyNet("width:4", seed=3)
    assert not model.dispatched and lazy_adapter.loads == [True]
    assert next(model._model.parameters()).is_meta
    assert "Linear(in_features=4, out_features=4" in repr(model)
    layer = model[0]
    x = torch.rand(2, 4)
    with model.trace(x):
        h = layer.output.save()
    assert model.dispatched and lazy_adapter.loads == [True, False]
    torch.manual_seed(3)
    expected = torch.nn.Linear(4, 4)
    torch.testing.assert_close(h.value, expected(x))
    # The envoy taken before dispatch now points at the real module.
    assert layer._module is model._model[0] and not layer._module.weight.is_meta


def test_dispatch_true_loads_at_once(lazy_adapter):
    model = LazyNet("width:2", dispatch=True)
    assert model.dispatched and lazy_adapter.loads == [True, False]
    assert not next(model._model.parameters()).is_meta


def test_the_error_classes_subclass_builtins():
    assert issubclass(nnsight_core.ValueNotSetError, ValueError)
    assert issubclass(nnsight_core.EnvoyAttributeError, AttributeError)
    assert issubclass(nnsight_core.ModuleIndexError, IndexError)
    for name in nnsight_core.errors.__all__:
        cls = getattr(nnsight_core.errors, name)
        assert issubclass(cls, nnsight_core.NNsightError)
        assert cls.__doc__.startswith("Raised "), name


# -- Inside modules: source rewriting -------------------------------------------------------------


def test_source_rewriting_keeps_lines_caches_per_function_and_leaves_other_modules_alone():
    from nnsight_core.source import rewrite

    net = make_net()
    forward = type(net.layer1).forward
    rewritten = rewrite(net.layer1.forward)
    assert rewritten is rewrite(net.layer2.forward) is rewrite(forward)   # per function, not instance
    assert rewritten.code.co_filename == forward.__code__.co_filename
    original_lines = {line for _, _, line in forward.__code__.co_lines() if line}
    assert {line for _, _, line in rewritten.code.co_lines() if line} <= original_lines | {forward.__code__.co_firstlineno}
    model = NNsight(net)
    x = torch.rand(2, 5)
    with model.trace(x):
        pre = model.layer1.source.linear_0.output.save()
        seen = model.layer2.output.save()
    assert torch.equal(pre.value, net.layer1(x)) and torch.equal(seen.value, net.layer2(torch.sigmoid(net.layer1(x))))
    assert hook_count(net) == 0 and all(m.forward.__func__.__code__ is type(m).forward.__code__
                                        for m in net if hasattr(type(m), "forward"))
