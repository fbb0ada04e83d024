"""tracer.cache(): every chosen module's output (and inputs) in one call, and its memory estimate.

Expected values come from the plain module with raw forward (pre-)hooks; expected
bytes from the real cached tensors' ``numel() * element_size()``.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils import _pytree as pytree

from nnsight_core import (Cache, CacheError, CacheKeyError, EnvoyAttributeError, MissedCallError,
                          TraceStateError)
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

NAMES = ("", "layer1", "sigma1", "layer2", "sigma2")


def raw_outputs(net, x):
    """Every module's output (key: module path) and inputs, from raw hooks on one plain call."""
    outputs, inputs = {}, {}
    handles = []
    for name, module in net.named_modules():
        handles.append(module.register_forward_hook(
            lambda m, args, out, name=name: outputs.__setitem__(name, out)))
        handles.append(module.register_forward_pre_hook(
            lambda m, args, name=name: inputs.__setitem__(name, args)))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, inputs


def nbytes(value):
    return sum(t.numel() * t.element_size() for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor))


@pytest.fixture
def model(net):
    return NNsight(net)


def test_the_default_caches_every_module_like_raw_hooks(model, net):
    x = torch.rand(3, 5)
    with torch.no_grad(), model.trace(x) as tracer:
        cache = tracer.cache()
    outputs, _ = raw_outputs(net, x)
    assert isinstance(cache, Cache)
    assert list(cache) == ["model" + ("." + n if n else "") for n in NAMES]
    for name in NAMES:
        key = "model." + name if name else "model"
        torch.testing.assert_close(cache[key].output, outputs[name])
        assert isinstance(cache[key].output, torch.Tensor)
    torch.testing.assert_close(tracer.output, outputs[""])
    assert hook_count(net) == 0


def test_every_spelling_of_a_module_finds_its_entry(model, net):
    x = torch.rand(2, 5)
    with model.trace(x) as tracer:
        cache = tracer.cache(modules=[model.layer1, "layer2", "model.sigma2"])
    outputs, _ = raw_outputs(net, x)
    assert list(cache) == ["model.layer1", "model.layer2", "model.sigma2"]
    for key in ("model.layer1", "layer1", model.layer1):
        torch.testing.assert_close(cache[key].output, outputs["layer1"])
    torch.testing.assert_close(cache.model.layer2.output, outputs["layer2"])
    assert "layer2" in cache and "sigma1" not in cache and cache.get("sigma1") is None


def test_a_module_list_is_addressed_by_index():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model = NNsight(net)
    x = torch.rand(2, 4)
    with model.trace(x) as tracer:
        cache = tracer.cache(modules=[model[0], "2"])
    with torch.no_grad():
        first = net[0](x)
        last = net[2](net[1](first))
    torch.testing.assert_close(cache["model.0"].output, first)
    torch.testing.assert_close(cache["model[0]"].output, first)
    torch.testing.assert_close(cache.model[2].output, last)


def test_dtype_casts_floating_tensors_and_device_moves_them(model, net):
    x = torch.rand(2, 5)
    with model.trace(x) as tracer:
        half = tracer.cache(modules=["layer1"], dtype=torch.float16)
    outputs, _ = raw_outputs(net, x)
    assert half["layer1"].output.dtype == torch.float16
    torch.testing.assert_close(half["layer1"].output, outputs["layer1"].to(torch.float16))
    with model.trace(x) as tracer:
        meta = tracer.cache(modules=["layer1"], device="meta")
    assert meta["layer1"].output.device.type == "meta"
    assert meta["layer1"].output.shape == (2, 10)


def test_integer_tensors_are_not_cast():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(7, 3), torch.nn.Linear(3, 2))
    model = NNsight(net)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with model.trace(ids) as tracer:
        cache = tracer.cache(modules=["0"], dtype=torch.float16, include_inputs=True)
    assert torch.equal(cache["0"].input, ids) and cache["0"].input.dtype == torch.long
    with torch.no_grad():
        torch.testing.assert_close(cache["0"].output, net[0](ids).half())


def test_include_inputs_caches_what_each_module_received(model, net):
    x = torch.rand(2, 5)
    with model.trace(x) as tracer:
        cache = tracer.cache(include_inputs=True)
    _, inputs = raw_outputs(net, x)
    for name in NAMES:
        entry = cache["model." + name if name else "model"]
        args, kwargs = entry.inputs
        assert kwargs == {}
        torch.testing.assert_close(args[0], inputs[name][0])
        torch.testing.assert_close(entry.input, inputs[name][0])


def test_each_invoke_caches_its_own_rows(model, net):
    a, b = torch.rand(1, 5), torch.rand(2, 5)
    with model.trace() as tracer:
        with tracer.invoke(a):
            cache_a = tracer.cache()
        with tracer.invoke(b):
            cache_b = tracer.cache(modules=["layer2"])
    outputs, _ = raw_outputs(net, torch.cat([a, b]))
    assert cache_a.invoke == 0 and cache_b.invoke == 1
    torch.testing.assert_close(cache_a["layer1"].output, outputs["layer1"][:1])
    torch.testing.assert_close(cache_b["layer2"].output, outputs["layer2"][1:])


def test_outside_an_invoke_it_caches_every_invoke(model, net):
    a, b = torch.rand(1, 5), torch.rand(2, 5)
    with model.trace() as tracer:
        caches = tracer.cache(modules=["layer1"])
        with tracer.invoke(a):
            pass
        with tracer.invoke(b):
            model.layer1.output[:, 0] = 0              # recorded before the invoke closes: cached
    assert sorted(caches) == [0, 1]
    outputs, _ = raw_outputs(net, torch.cat([a, b]))
    torch.testing.assert_close(caches[0]["layer1"].output, outputs["layer1"][:1])
    edited = outputs["layer1"][1:].clone()
    edited[:, 0] = 0
    torch.testing.assert_close(caches[1]["layer1"].output, edited)


def test_the_cache_holds_values_as_the_code_before_it_left_them(model, net):
    x = torch.rand(2, 5)
    with model.trace(x) as tracer:
        model.layer1.output = model.layer1.output * 2      # before: cached value is the new one
        cache = tracer.cache(modules=["layer1", "layer2"])
        model.layer2.output[:] = 1                         # in place after: shows in the same tensor
    with torch.no_grad():
        doubled = net.layer1(x) * 2
    torch.testing.assert_close(cache["layer1"].output, doubled)
    assert bool((cache["layer2"].output == 1).all())


def test_a_module_that_never_runs_is_left_out_by_default_and_refused_when_named():
    class WithSpare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = torch.nn.Linear(3, 3)
            self.spare = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    net = WithSpare()
    model = NNsight(net)
    x = torch.rand(2, 3)
    with model.trace(x) as tracer:
        cache = tracer.cache()
        assert "spare" in cache                            # chosen while recording
    assert list(cache) == ["model", "model.used"]
    with pytest.raises(CacheKeyError, match="'spare'.*did not run"):
        cache["spare"]
    with pytest.raises(MissedCallError, match=r"model\.spare\.output"):
        with model.trace(x) as tracer:
            tracer.cache(modules=["spare"])
    assert hook_count(net) == 0


def test_estimate_equals_the_bytes_of_the_cached_tensors(model, net):
    a, b = torch.rand(1, 5), torch.rand(3, 5)
    with model.trace() as tracer:
        with tracer.invoke(a):
            plain = tracer.cache()
        with tracer.invoke(b):
            rich = tracer.cache(dtype=torch.float64, include_inputs=True)
            estimates = (plain.estimate(), rich.estimate())
    real_plain = sum(nbytes(entry.output) for entry in plain.values())
    real_rich = sum(nbytes(entry.output) + nbytes(entry.inputs) for entry in rich.values())
    assert estimates == (real_plain, real_rich)
    assert real_plain == 4 * (2 + 10 + 10 + 2 + 2)      # 1 row of model, layer1, sigma1, layer2, sigma2


def test_estimate_runs_no_real_forward_pass(model, net):
    calls = []
    handle = net.layer1.register_forward_hook(lambda m, args, out: calls.append(type(out)))
    try:
        with model.trace(torch.rand(2, 5)) as tracer:
            cache = tracer.cache()
            estimate = cache.estimate()
            assert calls == [FakeTensor]                   # only the fake run so far
    finally:
        handle.remove()
    assert calls == [FakeTensor, torch.Tensor]             # then the trace's one real run
    assert estimate == sum(nbytes(entry.output) for entry in cache.values())
    assert hook_count(net) == 0


def test_cache_errors_name_the_problem_and_leave_no_hook(model, net):
    x = torch.rand(1, 5)
    with pytest.raises(EnvoyAttributeError, match="no child module 'layer9'"):
        with model.trace(x) as tracer:
            tracer.cache(modules=["layer9"])
    with pytest.raises(CacheError, match="not int"):
        with model.trace(x) as tracer:
            tracer.cache(modules=3)
    with pytest.raises(CacheError, match="torch.dtype"):
        with model.trace(x) as tracer:
            tracer.cache(dtype="half")
    with pytest.raises(CacheError, match="not a device"):
        with model.trace(x) as tracer:
            tracer.cache(device="gpu7")
    with pytest.raises(CacheError, match="another model"):
        other = NNsight(torch.nn.Linear(5, 5))
        with model.trace(x) as tracer:
            tracer.cache(modules=[other])
    with model.trace(x) as tracer:
        cache = tracer.cache(modules=["layer1"])
    with pytest.raises(CacheError, match="include_inputs=True"):
        cache["layer1"].inputs
    with pytest.raises(CacheKeyError, match="was not among the modules cached"):
        cache["layer2"]
    with pytest.raises(CacheError, match="before the model runs, inside the trace"):
        cache.estimate()
    assert isinstance(CacheKeyError("x"), KeyError)
    with pytest.raises(TraceStateError, match="inside the `with model.trace"):
        tracer.cache()
    assert hook_count(net) == 0


def test_estimate_reports_a_model_that_cannot_run_on_fake_tensors():
    class ReadsValues(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.layer(x) if x.sum().item() > 0 else x

    model = NNsight(ReadsValues())
    with pytest.raises(CacheError, match="cannot know the size of model: the scan on fake tensors stopped early"):
        with model.trace(torch.rand(1, 2)) as tracer:
            tracer.cache().estimate()
    assert hook_count(model._model) == 0


def test_cache_with_a_persistent_edit_and_in_a_session(model, net):
    x = torch.rand(2, 5)
    with model.edit() as edited:
        model.layer1.output[:, 0] = 0
    with edited.session():
        with edited.trace(x) as tracer:
            cache = tracer.cache(modules=["layer1"])
            hidden = edited.layer2.output
        with edited.trace(x):
            edited.layer2.output = hidden * 2
            out = edited.output.save()
    with torch.no_grad():
        h = net.layer1(x)
        h[:, 0] = 0
        expected = net.sigma2(net.layer2(net.sigma1(h)) * 2)
    torch.testing.assert_close(cache["layer1"].output, h)
    torch.testing.assert_close(out.value, expected)
