"""Setting what a module receives: ``.input = value`` and ``.inputs = (args, kwargs)``.

Expected values come from the same modules run directly, or with raw forward pre-hooks
that replace the arguments.
"""

import pytest
import torch

from nnsight_core import AssignmentError, BatchError
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

X = torch.rand(3, 5, generator=torch.Generator().manual_seed(1))
Y = torch.rand(2, 5, generator=torch.Generator().manual_seed(2))


class Head(torch.nn.Module):
    """Takes keyword arguments, as many real modules do."""

    def forward(self, h, scale=1.0, shift=None):
        return h * scale + (0 if shift is None else shift)


class WithKeywords(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(5, 4)
        self.head = Head()
        self.tail = torch.nn.Linear(4, 2)

    def forward(self, x):
        h = self.head(self.layer(x), scale=2.0, shift=torch.full((4,), 0.5))
        return self.tail(h)


def with_pre_hook(module, root, x, replace):
    """``root(x)`` with ``module``'s (args, kwargs) replaced by ``replace(args, kwargs)``."""
    handle = module.register_forward_pre_hook(lambda m, args, kwargs: replace(args, kwargs), with_kwargs=True)
    try:
        with torch.no_grad():
            return root(x)
    finally:
        handle.remove()


def test_input_is_the_first_positional_argument_and_inputs_the_pair(net):
    model = NNsight(net)
    with torch.no_grad(), model.trace(X):
        first = model.layer2.input.save()
        both = model.layer2.inputs.save()
    with torch.no_grad():
        expected = net.sigma1(net.layer1(X))
    torch.testing.assert_close(first.value, expected)
    args, kwargs = both.value
    assert len(args) == 1 and kwargs == {}
    torch.testing.assert_close(args[0], expected)


def test_input_and_inputs_stay_consistent_after_an_assignment(net):
    model = NNsight(net)
    new = torch.rand(3, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), model.trace(X):
        model.layer2.input = new
        pair = model.layer2.inputs.save()
        model.sigma1.inputs = ((model.sigma1.input * 0,), {})
        first = model.sigma1.input.save()
    torch.testing.assert_close(pair.value[0][0], new)
    assert pair.value[1] == {}
    torch.testing.assert_close(first.value, torch.zeros(3, 10))


def test_an_input_edited_in_place(net):
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        model.layer2.input[:, 0] = 0

    def zero_first_feature(args, kwargs):
        x = args[0].clone()
        x[:, 0] = 0
        return (x,), kwargs

    expected = with_pre_hook(net.layer2, net, X, zero_first_feature)
    torch.testing.assert_close(tracer.output, expected)


def test_an_input_computed_from_other_values(net):
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        model.layer2.input = model.layer1.output * 0.5     # skip sigma1, halve
    expected = with_pre_hook(net.layer2, net, X, lambda args, kwargs: ((net.layer1(X) * 0.5,), kwargs))
    torch.testing.assert_close(tracer.output, expected)


def test_assigning_inputs_replaces_args_and_kwargs():
    net = WithKeywords()
    model = NNsight(net)
    with torch.no_grad(), model.trace(X):
        received = model.head.inputs.save()
    args, kwargs = received.value
    assert len(args) == 1 and set(kwargs) == {"scale", "shift"} and kwargs["scale"] == 2.0
    with torch.no_grad(), model.trace(X) as tracer:
        model.head.inputs = ((model.layer.output + 1,), {"scale": -1.0})     # shift dropped
    expected = with_pre_hook(net.head, net, X, lambda a, k: ((a[0] + 1,), {"scale": -1.0}))
    torch.testing.assert_close(tracer.output, expected)
    with torch.no_grad():
        assert not torch.allclose(expected, net(X))


def test_inputs_accepts_lists_for_the_pair():
    net = WithKeywords()
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        model.head.inputs = [[model.layer.output], {"scale": 3.0}]
    expected = with_pre_hook(net.head, net, X, lambda a, k: ((a[0],), {"scale": 3.0}))
    torch.testing.assert_close(tracer.output, expected)


def test_the_root_modules_input_can_be_replaced(net):
    model = NNsight(net)
    with torch.no_grad(), model.trace(X) as tracer:
        model.input = model.input.flip(0)
    with torch.no_grad():
        torch.testing.assert_close(tracer.output, net(X.flip(0)))


def test_several_invokes_each_replace_only_their_rows(net):
    model = NNsight(net)
    new = torch.zeros(3, 10)
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(X):
            model.layer2.input = new
            first = model.output.save()
        with tracer.invoke(Y):
            second = model.output.save()
        with tracer.invoke(X):
            model.layer2.inputs = ((model.layer2.input * 2,), {})
            third = model.output.save()
    with torch.no_grad():
        torch.testing.assert_close(first.value, net.sigma2(net.layer2(new)))
        torch.testing.assert_close(second.value, net(Y))
        torch.testing.assert_close(third.value, net.sigma2(net.layer2(net.sigma1(net.layer1(X)) * 2)))


def test_an_invoke_can_receive_another_invokes_input(net):
    model = NNsight(net)
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(X[:2]):
            source = model.layer2.input
        with tracer.invoke(Y):
            model.layer2.input = source
            patched = model.output.save()
    with torch.no_grad():
        torch.testing.assert_close(patched.value, net(X[:2]))


# -- errors -------------------------------------------------------------------------------------


def clean(net, model):
    """No hook is left and the next trace works."""
    assert hook_count(net) == 0
    with torch.no_grad(), model.trace(X) as tracer:
        pass
    with torch.no_grad():
        torch.testing.assert_close(tracer.output, net(X))


def test_inputs_must_be_an_args_kwargs_pair(net):
    model = NNsight(net)
    for wrong in (X, (X,), ((X,),), ((X,), [1]), (X, {})):
        with pytest.raises(BatchError, match=r"model\.layer1\.inputs.*must be assigned an \(args, kwargs\) pair"):
            with torch.no_grad(), model.trace(X):
                model.layer1.inputs = wrong
    clean(net, model)


@pytest.mark.parametrize("wrong, error, message", [
    (torch.zeros(3, 7), AssignmentError, r"shape \(3, 7\).*give it shape \(3, 10\)"),
    (torch.zeros(2, 10), BatchError, r"invoke 0 owns 3 row\(s\)"),
    (torch.zeros(3, 10, dtype=torch.long), AssignmentError, r"dtype torch\.int64.*\.to\(torch\.float32\)"),
    ("text", AssignmentError, r"a value of type str was assigned"),
], ids=["shape", "rows", "dtype", "type"])
def test_a_wrong_input_names_the_module_and_the_fix(net, wrong, error, message):
    model = NNsight(net)
    with pytest.raises(error, match=r"model\.layer2\.input.*" + message):
        with torch.no_grad(), model.trace(X):
            model.layer2.input = wrong
    clean(net, model)


def test_input_of_a_module_called_with_keywords_only_names_inputs():
    class KeywordsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(5, 4)

        def forward(self, x):
            return self.layer(input=x)

    net = KeywordsOnly()
    model = NNsight(net)
    with pytest.raises(BatchError, match=r"model\.layer.*no positional argument.*\.inputs = \(args, kwargs\)"):
        with torch.no_grad(), model.trace(X):
            model.layer.input = torch.zeros(3, 5)
    with torch.no_grad(), model.trace(X) as tracer:
        model.layer.inputs = ((), {"input": torch.zeros(3, 5)})
    with torch.no_grad():
        torch.testing.assert_close(tracer.output, net.layer(torch.zeros(3, 5)))
    assert hook_count(net) == 0


def test_an_invoke_may_not_change_a_value_all_invokes_share():
    net = WithKeywords()
    model = NNsight(net)
    with pytest.raises(BatchError, match=r"model\.head\.inputs.*invoke 0 changed a value that all 2 invokes share"):
        with torch.no_grad(), model.trace() as tracer:
            with tracer.invoke(X):
                model.head.inputs = ((model.layer.output,), {"scale": 5.0, "shift": torch.zeros(4)})
            with tracer.invoke(Y):
                pass
    with pytest.raises(BatchError, match=r"structure differs"):
        with torch.no_grad(), model.trace() as tracer:
            with tracer.invoke(X):
                model.head.inputs = ((model.layer.output,), {})
            with tracer.invoke(Y):
                pass
    assert hook_count(net) == 0
    with torch.no_grad(), model.trace(X) as tracer:
        model.head.inputs = ((model.layer.output,), {})     # alone, any structure is fine
    with torch.no_grad():
        torch.testing.assert_close(tracer.output, net.tail(net.layer(X)))
