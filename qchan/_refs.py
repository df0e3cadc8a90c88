"""Channel references: how a channel is named on the wire, and the capabilities that guard it.

A reference carries everything a node needs to use a channel hosted elsewhere: the home node's
public key (checked in the handshake when dialling it), the home's incarnation (references
from an earlier run of the same node are stale), an address to dial, the channel's id and
capacity, and one token per right. A token is ``BLAKE2b-128(key=home secret, chan id, right)``:
unforgeable without the home's secret, so holding it *is* the right (a capability), and a
send-only view is simply a reference without the receive token. A peer presents its tokens in
an ``OPEN`` frame before operating on the channel; a peer that never saw a reference cannot
guess one.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from dataclasses import dataclass
from typing import Final, final

import msgpack

from qchan._errors import ProtocolError
from qchan.protocol.frames import Rights

__all__ = ["TOKEN_SIZE", "ChannelRef", "TokenMinter"]

TOKEN_SIZE: Final = 16
_ID: Final = struct.Struct(">QB")
_MAX_CAPACITY: Final = 2**63 - 1


@final
@dataclass(frozen=True, slots=True)
class ChannelRef:
    """A channel as another node sees it (see the module docstring)."""

    home: bytes
    incarnation: bytes
    address: str
    chan: int
    capacity: float
    send_token: bytes | None
    receive_token: bytes | None

    @property
    def rights(self) -> int:
        return (Rights.SEND if self.send_token else 0) | (
            Rights.RECEIVE if self.receive_token else 0
        )

    def tokens(self, rights: int) -> bytes:
        """The token bytes an ``OPEN`` for ``rights`` carries: send token, then receive token."""
        send = self.send_token if rights & Rights.SEND else b""
        receive = self.receive_token if rights & Rights.RECEIVE else b""
        return (send or b"") + (receive or b"")

    def restricted(self, rights: int) -> ChannelRef:
        """The same reference with at most ``rights`` (a view's reference)."""
        return ChannelRef(
            self.home,
            self.incarnation,
            self.address,
            self.chan,
            self.capacity,
            self.send_token if rights & Rights.SEND else None,
            self.receive_token if rights & Rights.RECEIVE else None,
        )

    def encode(self) -> bytes:
        capacity = -1 if self.capacity == math.inf else int(self.capacity)
        return msgpack.packb(  # type: ignore[no-any-return]
            [
                self.home,
                self.incarnation,
                self.address,
                self.chan,
                capacity,
                self.send_token,
                self.receive_token,
            ],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> ChannelRef:
        """Parse a reference; raises :class:`ProtocolError` if it is malformed."""
        try:
            fields = msgpack.unpackb(
                data, raw=False, max_array_len=7, max_map_len=0, max_str_len=1024, max_bin_len=64
            )
        except Exception as exc:
            raise ProtocolError(f"malformed channel reference: {exc}") from exc
        if type(fields) is not list or len(fields) != 7:
            raise ProtocolError("malformed channel reference")
        home, incarnation, address, chan, capacity, send, receive = fields
        if (
            type(home) is not bytes
            or len(home) != 32
            or type(incarnation) is not bytes
            or type(address) is not str
            or type(chan) is not int
            or not 0 < chan < 2**64
            or type(capacity) is not int
            or not -1 <= capacity <= _MAX_CAPACITY
            or not all(
                t is None or (type(t) is bytes and len(t) == TOKEN_SIZE) for t in (send, receive)
            )
            or (send is None and receive is None)
        ):
            raise ProtocolError("malformed channel reference")
        return cls(
            home,
            incarnation,
            address,
            chan,
            math.inf if capacity == -1 else capacity,
            send,
            receive,
        )


@final
class TokenMinter:
    """Mints and checks the tokens of one node's channels (its secret never leaves it)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the token secret must be at least 32 bytes")
        self._secret = secret

    def token(self, chan: int, right: Rights) -> bytes:
        return hashlib.blake2b(
            _ID.pack(chan, right), key=self._secret, digest_size=TOKEN_SIZE
        ).digest()

    def tokens(self, chan: int, rights: int) -> tuple[bytes | None, bytes | None]:
        """(send token, receive token) for ``rights`` on ``chan``; None where not granted."""
        send = self.token(chan, Rights.SEND) if rights & Rights.SEND else None
        receive = self.token(chan, Rights.RECEIVE) if rights & Rights.RECEIVE else None
        return send, receive

    def check(self, chan: int, rights: int, presented: bytes) -> bool:
        """True if ``presented`` holds the tokens for exactly ``rights`` on ``chan``."""
        if rights not in (Rights.SEND, Rights.RECEIVE, Rights.BOTH):
            return False
        send, receive = self.tokens(chan, rights)
        return hmac.compare_digest((send or b"") + (receive or b""), presented)
