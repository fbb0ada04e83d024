"""API keys: a file of SHA-256 hashes, so the server never stores a key itself.

The file has one key per line, ``NAME sha256:HEX`` (``#`` starts a comment).
``python -m nnsight_remote keygen --api-keys FILE --name alice`` makes a random key,
appends its hash and prints the key once. Keys are 32 random bytes, so a plain
SHA-256 is enough (no slow password hash is needed), and they are compared in
constant time.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "keys")
    >>> key = add_key(path, "alice")
    >>> KeyStore.load(path).check(key)
    'alice'
    >>> KeyStore.load(path).check("wrong") is None
    True
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import Dict, Optional

from nnsight_core.errors import InputError

__all__ = ["KeyStore", "add_key", "hash_key"]


def hash_key(key: str) -> str:
    """``sha256:HEX`` of a key."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """The API keys a server accepts, by hash, each with its owner's name.

    Example:
        >>> store = KeyStore({hash_key("k1"): "alice"})
        >>> store.check("k1"), store.check("k2")
        ('alice', None)
    """

    def __init__(self, hashes: Dict[str, str]) -> None:
        self.hashes = dict(hashes)

    @classmethod
    def load(cls, path: str) -> KeyStore:
        """Read a key file.

        Raises:
            InputError: The file is missing, or a line is not ``NAME sha256:HEX``.
        """
        if not os.path.exists(path):
            raise InputError(f"the API key file {path} does not exist: create it with "
                             "`python -m nnsight_remote keygen --api-keys FILE --name NAME`.")
        hashes = {}
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) != 2 or not parts[1].startswith("sha256:") or len(parts[1]) != 71:
                    raise InputError(f"{path}:{number}: expected `NAME sha256:HEX` (64 hex digits), "
                                     "got something else; regenerate it with `nnsight_remote keygen`.")
                hashes[parts[1]] = parts[0]
        return cls(hashes)

    def check(self, key: Optional[str]) -> Optional[str]:
        """The owner of ``key``, or None if it is not one of the keys."""
        if not key:
            return None
        digest = hash_key(key)
        owner = None
        for known, name in self.hashes.items():  # compare with every hash, in constant time each
            if hmac.compare_digest(known, digest):
                owner = name
        return owner


def add_key(path: str, name: str) -> str:
    """Make a random key for ``name``, append its hash to the file at ``path``, return the key."""
    if not name or any(c.isspace() for c in name):
        raise InputError(f"a key's name is one word without spaces, got {name!r}.")
    key = "nns_" + secrets.token_urlsafe(32)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{name} {hash_key(key)}\n")
    os.chmod(path, 0o600)
    return key
