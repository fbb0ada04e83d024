"""call_hook reuses the implementation that answered for a wrapper, without changing what pluggy would do."""

import torch
from nnsight_torch import NNsight

from nnsight_core import get_plugin_manager, hookimpl
from nnsight_core.plugins import enable_hook_tracing


class Doubling:
    """An adapter plugin for one wrapper instance: it runs the module on twice the inputs."""

    def __init__(self, owner):
        self.owner = owner
        self.calls = 0

    @hookimpl
    def nnsight_execute(self, model, batched, kwargs, method):
        if model is not self.owner:
            return None
        self.calls += 1
        args, invoke_kwargs = batched
        return model._model(*(a * 2 for a in args), **invoke_kwargs)


class Timing:
    """A hook wrapper around execution, as a plugin that times it would be."""

    def __init__(self):
        self.seen = 0

    @hookimpl(wrapper=True)
    def nnsight_execute(self, model, batched, kwargs, method):
        self.seen += 1
        return (yield)


def run(model, x):
    with torch.no_grad(), model.trace(x) as tracer:
        pass
    return tracer.output


def test_answers_follow_registration_wrappers_and_monitors(capsys):
    net = torch.nn.Linear(3, 2)
    x = torch.rand(1, 3)
    model = NNsight(net)
    manager = get_plugin_manager()
    with torch.no_grad():
        plain, doubled = net(x), net(x * 2)
    torch.testing.assert_close(run(model, x), plain)
    torch.testing.assert_close(run(model, x), plain)            # the remembered answer

    adapter = Doubling(model)
    manager.register(adapter)
    try:
        torch.testing.assert_close(run(model, x), doubled)      # a new plugin is asked first
        torch.testing.assert_close(run(model, x), doubled)
        assert adapter.calls == 2
        other = NNsight(torch.nn.Linear(3, 2))
        torch.testing.assert_close(run(other, x), other._model(x).detach())  # not its wrapper

        timing = Timing()
        manager.register(timing)
        try:
            run(model, x)
            run(model, x)
            assert timing.seen == 2 and adapter.calls == 4      # wrappers always run
        finally:
            manager.unregister(timing)

        stop = enable_hook_tracing(stream=None)
        try:
            run(model, x)
        finally:
            stop()
        assert "nnsight_execute returned" in capsys.readouterr().err   # monitors see every call
    finally:
        manager.unregister(adapter)
    torch.testing.assert_close(run(model, x), plain)            # back to the torch adapter
