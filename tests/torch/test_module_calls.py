"""Ad-hoc module calls inside a trace (``model.layer2(h)``): recorded as ``call_module`` nodes,
run on the values given, never hooked and never counted as a call of the module.

Expected values come from calling the same modules directly.
"""

import pytest
import torch

from nnsight_core import InterventionError, MissedCallError
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

X = torch.rand(3, 5, generator=torch.Generator().manual_seed(1))
Y = torch.rand(2, 5, generator=torch.Generator().manual_seed(2))


def test_a_module_call_is_recorded_and_equals_a_direct_call(net):
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        skipped = model.layer2(model.layer1.output).save()     # layer2 without sigma1
        twice = model.sigma2(model.sigma2(model.layer2.output)).save()
    calls = [n for n in tracer.graph.nodes if n.op == "call_module"]
    assert [n.target for n in calls] == ["layer2", "sigma2", "sigma2"]
    with torch.no_grad():
        torch.testing.assert_close(skipped.value, net.layer2(net.layer1(X)))
        torch.testing.assert_close(twice.value, torch.sigmoid(torch.sigmoid(net.layer2(net.sigma1(net.layer1(X))))))


def test_a_module_call_is_not_a_call_of_the_hooked_module(net):
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        lens = model.layer2(model.layer1.output).save()
        own = model.layer2.output.save()                       # still the model's own call 0
        model.layer2.output = model.layer2.output * 0          # edits the model's call only
        out = model.output.save()
    with torch.no_grad():
        torch.testing.assert_close(own.value, net.layer2(net.sigma1(net.layer1(X))))
        torch.testing.assert_close(lens.value, net.layer2(net.layer1(X)))
        torch.testing.assert_close(out.value, torch.full((3, 2), 0.5))
    assert tracer.output is not None
    with pytest.raises(MissedCallError, match=r"model\.layer2\.output \(call 1, invoke 0\).*ran 1 time"):
        with torch.no_grad(), model.trace(X):
            model.layer2(model.layer1.output).save()
            model.layer2.next().output.save()                  # the ad-hoc call is not call 1
    assert hook_count(net) == 0


def test_an_edit_of_a_module_does_not_reach_its_ad_hoc_calls(net):
    model = NNsight(net)
    with torch.no_grad(), model.trace(X):
        model.layer1.output = torch.zeros(3, 10)
        direct = model.layer1(model.input).save()               # the unedited module
    with torch.no_grad():
        torch.testing.assert_close(direct.value, net.layer1(X))


def test_keyword_arguments_and_constants_pass_through(net):
    model = NNsight(net)
    constant = torch.ones(4, 10)
    with torch.no_grad(), model.trace(X):
        by_keyword = model.layer2(input=model.sigma1.output).save()
        on_constant = model.layer2(constant).save()
    with torch.no_grad():
        torch.testing.assert_close(by_keyword.value, net.layer2(net.sigma1(net.layer1(X))))
        torch.testing.assert_close(on_constant.value, net.layer2(constant))


def test_each_invoke_calls_the_module_on_its_own_rows(net):
    model = NNsight(net)
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(X):
            first = model.layer2(model.layer1.output).save()
        with tracer.invoke(Y):
            second = model.layer2(model.layer1.output).save()
    with torch.no_grad():
        torch.testing.assert_close(first.value, net.layer2(net.layer1(X)))
        torch.testing.assert_close(second.value, net.layer2(net.layer1(Y)))


def test_outside_a_trace_an_envoy_call_runs_the_module(net):
    model = NNsight(net)
    with torch.no_grad():
        torch.testing.assert_close(model.layer1(X), net.layer1(X))


def test_an_ad_hoc_call_that_fails_names_the_module_and_the_line(net):
    model = NNsight(net)
    with pytest.raises(InterventionError, match=r"call_module\[layer2\].*test_module_calls\.py.*shapes"):
        with torch.no_grad(), model.trace(X):
            model.layer2(model.input).save()                  # 5 features where layer2 takes 10
    assert hook_count(net) == 0
    with torch.no_grad(), model.trace(X) as tracer:
        pass
    with torch.no_grad():
        torch.testing.assert_close(tracer.output, net(X))


def test_gradients_flow_through_an_ad_hoc_call(net):
    model = NNsight(net)
    with model.trace(X):
        h = model.layer1.output
        grad = h.grad.save()
        model.layer2(h).sum().backward()
    reference = torch.nn.Linear(10, 2)
    reference.load_state_dict(net.layer2.state_dict())
    hr = net.layer1(X).detach().requires_grad_()
    reference(hr).sum().backward()
    torch.testing.assert_close(grad.value, hr.grad)
