"""LanguageModelProxy and TokenIndexer: index activations by an invoke's own tokens."""

from __future__ import annotations

from typing import Any, Union

from nnsight_core import InterventionProxy, TokenIndexError, TraceStateError
from nnsight_core.tracer import current_runner

__all__ = ["LanguageModelProxy", "TokenIndexer"]


class TokenIndexer:
    """Indexes dimension 1 of a proxy by the tokens of the invoke that recorded it.

    Example:
        >>> with model.trace() as tracer:
        ...     with tracer.invoke("Paris"):                  # fewer tokens, left-padded
        ...         first = model.model.layers[0].output.t[0].save()
        ...     with tracer.invoke("The Eiffel Tower is in the city of"):
        ...         last = model.lm_head.output.t[-1].save()
        >>> first.value.shape, last.value.shape       # one token of each invoke
        (torch.Size([1, 32]), torch.Size([1, 300]))

    Invokes are left-padded to the longest one, so an invoke's tokens are the
    last ``n`` positions of dimension 1: ``t[0]`` is its first real token
    whatever padding the batch added, negative indices count from its end,
    and a slice selects what it selects of a tensor of the invoke's tokens alone
    (bounds beyond either end are clipped, a slice past the end is empty; steps
    must be positive, as for tensors). For an invoke of several prompts, ``n``
    is its longest prompt. Indices refer to the prompt's forward pass; in
    later generation steps (one new token each) use ``t[-1]``.
    """

    def __init__(self, proxy: InterventionProxy) -> None:
        self.proxy = proxy

    def __getitem__(self, key: Union[int, slice]) -> Any:
        return self.proxy[:, self._position(key)]

    def __setitem__(self, key: Union[int, slice], value: Any) -> None:
        self.proxy[:, self._position(key)] = value

    def __call__(self, *args: Any) -> Any:
        # `.t` names the indexer, but `proxy.t()` still means Tensor.t() (transpose).
        return self.proxy._record("call_method", "t", (self.proxy, *args))

    def _position(self, key: Union[int, slice]) -> Union[int, slice]:
        node = self.proxy.node
        runner = current_runner()
        if runner is None or runner.graph is not node.graph or node.invoke is None:
            raise TraceStateError(".t[...] / .token[...] index by an invoke's tokens: use them inside "
                                  "the invoke that recorded the value.")
        invoker = runner.invokers[node.invoke]
        length = invoker.prepared["input_ids"].shape[1]
        if isinstance(key, slice):
            # The positions become offsets from the end: right for prompts of this length only.
            node.graph.require(node.invoke, "tokens", length)
            return self._slice(key, length, invoker.index)
        index = int(key)
        if index >= 0:
            node.graph.require(node.invoke, "tokens", length)  # negative indices hold for any length
        if not -length <= index < length:
            raise TokenIndexError(
                f"token index {index} is outside invoke {invoker.index}, which has {length} "
                f"token(s): use 0 to {length - 1}, or -{length} to -1 from its end."
            )
        return index - length if index >= 0 else index

    @staticmethod
    def _slice(key: slice, length: int, invoke: int) -> slice:
        """``key`` over the invoke's ``length`` tokens as a slice of the padded dimension 1.

        The tokens ``key`` selects are those Python selects from ``range(length)``
        (bounds beyond either end are clipped, so a slice past the end is empty);
        they become offsets from the end, where the invoke's tokens are.
        """
        if key.step is not None and int(key.step) <= 0:
            raise TokenIndexError(
                f"token slice {key} of invoke {invoke} has step {key.step}: like tensors, .t[...] "
                "takes only positive steps; slice forwards and reverse with .flip(1)."
            )
        positions = range(length)[key]
        if not positions:
            return slice(0, 0)  # empty, as the same slice of the invoke's own tokens
        stop = positions[-1] + 1 - length
        return slice(positions.start - length, stop if stop < 0 else None, positions.step)


class LanguageModelProxy(InterventionProxy):
    """The ``proxy_class`` of :class:`~nnsight_transformers.LanguageModel`: adds ``.token`` / ``.t``.

    Example:
        >>> with model.trace("The Eiffel Tower is in the city of"):
        ...     logits = model.lm_head.output.t[-1].save()
        >>> logits.value.shape                                # the last token's logits
        torch.Size([1, 300])
    """

    __slots__ = ()

    @property
    def token(self) -> TokenIndexer:
        """Index dimension 1 by this invoke's tokens (see :class:`TokenIndexer`)."""
        return TokenIndexer(self)

    t = token
