"""nnsight-remote: run nnsight_core traces on a shared server (Ray Serve), with no pickle on the wire.

Client side, a trace opened with ``remote=True`` (URL and key from
``NNSIGHT_REMOTE_URL`` / ``NNSIGHT_API_KEY``) or ``backend=RemoteBackend(url,
api_key=...)`` records and scans locally on the model's meta skeleton, then sends
the graph as JSON and its inputs as safetensors; the saved values come back the same
way. Server side, ``python -m nnsight_remote serve MODEL ... --replicas N`` runs a
Ray Serve application with one deployment per model (:mod:`nnsight_remote.serve`).

Example:
    >>> from nnsight_remote import RemoteBackend
    >>> RemoteBackend("http://127.0.0.1:8000", progress=False).url
    'http://127.0.0.1:8000'

Modules: :mod:`~nnsight_remote.client` (RemoteBackend), :mod:`~nnsight_remote.wire`
(the envelope and value format), :mod:`~nnsight_remote.server` (validation, limits,
running one request), :mod:`~nnsight_remote.auth` (API keys),
:mod:`~nnsight_remote.serve` (the Ray Serve application and CLI).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .client import RemoteBackend  # noqa: E402 - after __version__, which the client sends
from .server import ModelServer, ServerLimits  # noqa: E402

__all__ = ["RemoteBackend", "ModelServer", "ServerLimits", "__version__"]
