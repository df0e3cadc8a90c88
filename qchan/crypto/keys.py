"""Node keys (X25519 identities) and cluster keys (the Noise pre-shared key).

Neither ``repr()`` nor ``str()`` ever shows secret bytes: a node key shows its fingerprint, a
cluster key shows nothing of itself. The file format is described in ``_keyfile.py``.
"""

from __future__ import annotations

import base64
import hmac
import os
from typing import Final, final

from qchan.crypto._keyfile import read_key_file, write_key_file
from qchan.crypto.noise import DHLEN, Buffer, KeyPair

__all__ = ["ClusterKey", "NodeKey", "fingerprint"]

KEY_SIZE: Final = DHLEN
"""Every qchan key, private, public or cluster, is 32 bytes."""


def fingerprint(public: bytes) -> str:
    """A short printable form of a 32-byte public key, for logs and command lines.

    The first 16 characters (80 bits) of the key's lowercase RFC 4648 base32, in groups of
    four: ``"mzxw-6ytb-oi4d-ambq"``. It is a prefix of the key, not a hash, so the same
    fingerprint always names the same key in every version. Enough to tell nodes apart at a
    glance; to trust a key, compare all 32 bytes. Raises ``ValueError`` for a wrong length.
    """
    if len(public) != KEY_SIZE:
        raise ValueError(f"a public key is {KEY_SIZE} bytes, got {len(public)}")
    text = base64.b32encode(public).decode("ascii").lower()[:16]
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


def _key_bytes(what: str, key: Buffer) -> bytes:
    # memoryview() takes any bytes-like object and refuses everything else (ints included).
    data = bytes(memoryview(key))
    if len(data) != KEY_SIZE:
        raise ValueError(f"{what} is {KEY_SIZE} bytes, got {len(data)}")
    return data


@final
class NodeKey:
    """A node's identity: an X25519 key pair. Its public key is what peers see and trust.

    Make one with :meth:`generate`, :meth:`load` or :meth:`from_bytes`. Equal when the private
    keys are equal; hashable.
    """

    __slots__ = ("_pair",)

    def __init__(self, private: Buffer) -> None:
        """Wrap 32 raw private key bytes. Raises ``ValueError`` for any other length."""
        self._pair = KeyPair.from_private(_key_bytes("a node's private key", private))

    @classmethod
    def generate(cls) -> NodeKey:
        """A new random node key."""
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_bytes(cls, private: Buffer) -> NodeKey:
        """The node key of 32 raw private key bytes. Raises ``ValueError`` otherwise."""
        return cls(private)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NodeKey:
        """Read a node key file written by :meth:`save`.

        Raises ``FileNotFoundError`` if missing; ``PermissionError`` if its group or others
        may access it (the message says to ``chmod 600`` it); ``ValueError`` if it holds a
        cluster key or is corrupt.
        """
        return cls(read_key_file(path, "node key", KEY_SIZE))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write this key to ``path``, created with mode 0600, atomically.

        Raises ``FileExistsError`` if ``path`` exists unless ``overwrite`` is true (losing a
        node key loses the node's identity), ``OSError`` if it cannot be written.
        """
        write_key_file(path, "node key", self._pair.private, overwrite=overwrite)

    @property
    def public(self) -> bytes:
        """The 32-byte X25519 public key: the node's identity in the cluster."""
        return self._pair.public

    @property
    def fingerprint(self) -> str:
        """:func:`fingerprint` of :attr:`public`."""
        return fingerprint(self._pair.public)

    def private_bytes(self) -> bytes:
        """The 32 raw private key bytes: a secret, for the handshake only."""
        return self._pair.private

    @property
    def key_pair(self) -> KeyPair:
        """The X25519 key pair, as the Noise engine takes it."""
        return self._pair

    def __repr__(self) -> str:
        return f"NodeKey(fingerprint={self.fingerprint!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeKey):
            return NotImplemented
        return hmac.compare_digest(self._pair.private, other._pair.private)

    def __hash__(self) -> int:
        return hash(self._pair.public)


@final
class ClusterKey:
    """The secret every node of a cluster holds: the Noise pre-shared key.

    Make one with :meth:`generate`, :meth:`load` or :meth:`from_bytes`; ``bytes(key)`` gives
    its 32 raw bytes back. Equal when the bytes are equal; hashable.
    """

    __slots__ = ("_key",)

    def __init__(self, key: Buffer) -> None:
        """Wrap 32 raw key bytes. Raises ``ValueError`` for any other length."""
        self._key = _key_bytes("a cluster key", key)

    @classmethod
    def generate(cls) -> ClusterKey:
        """A new random cluster key."""
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_bytes(cls, key: Buffer) -> ClusterKey:
        """The cluster key of 32 raw bytes (the inverse of ``bytes(key)``).

        Raises ``ValueError`` for any other length, ``TypeError`` if not bytes-like.
        """
        return cls(key)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClusterKey:
        """Read a cluster key file written by :meth:`save`.

        Raises ``FileNotFoundError`` if missing; ``PermissionError`` if its group or others
        may access it (the message says to ``chmod 600`` it); ``ValueError`` if it holds a
        node key or is corrupt.
        """
        return cls(read_key_file(path, "cluster key", KEY_SIZE))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write this key to ``path``, created with mode 0600, atomically.

        Raises ``FileExistsError`` if ``path`` exists unless ``overwrite`` is true, ``OSError``
        if it cannot be written.
        """
        write_key_file(path, "cluster key", self._key, overwrite=overwrite)

    def __bytes__(self) -> bytes:
        return self._key

    def __repr__(self) -> str:
        return "ClusterKey(<secret>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterKey):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self._key)
