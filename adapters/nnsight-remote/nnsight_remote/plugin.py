"""The ``nnsight_backend`` hookimpl: ``remote=True`` gets a :class:`~nnsight_remote.RemoteBackend`
configured from ``NNSIGHT_REMOTE_URL`` and ``NNSIGHT_API_KEY``.

Example:
    >>> nnsight_backend(model=model, name="elsewhere") is None      # only "remote" is served here
    True
"""

from __future__ import annotations

from typing import Any, Optional

from nnsight_core import hookimpl

from .client import RemoteBackend

__all__ = ["nnsight_backend"]


@hookimpl
def nnsight_backend(model: Any, name: str) -> Optional[RemoteBackend]:
    if name != "remote":
        return None
    return RemoteBackend()
