"""NNsight: trace and edit any ``torch.nn.Module``."""

from __future__ import annotations

from nnsight_core import NNsightModel

__all__ = ["NNsight"]


class NNsight(NNsightModel):
    """Wraps any ``torch.nn.Module`` so its activations can be read and edited in a trace.

    Example:
        >>> model = NNsight(net)
        >>> with model.trace(torch.rand(1, 5)):
        ...     hidden = model.layer1.output.save()
        >>> hidden.value.shape
        torch.Size([1, 10])

    Inputs: the positional arguments of the module's ``forward``; each invoke's
    rows are the first dimension of its first tensor argument. Keyword
    arguments given to ``invoke`` (or ``invoker_args``) become the module's
    keyword inputs for that invoke; other keyword arguments of ``trace`` are
    passed to every call.

    Subclasses inherit this adapter's hooks: an adapter for a subclass answers
    the hooks it needs and returns ``None`` for the rest to fall back here.
    """
