"""The exceptions qchan raises, all in one place.

The tree::

    QchanError                      base of everything qchan raises on purpose
    ├── ChannelClosed               send on a closed channel; receive on a closed, drained one
    ├── WouldBlock                  a *_nowait call would have had to wait
    ├── PeerLost                    the home of a remote channel (or the link to it) is gone;
    │   │                           a failed send's value was certainly not taken
    │   └── DeliveryUncertain       lost after the value was handed over, before the take
    │                               was confirmed: it may or may not have been received
    ├── AuthenticationError         a handshake failed: wrong cluster key, untrusted or
    │                               unexpected node key
    ├── ProtocolError               a peer sent something malformed or forbidden; the
    │                               connection is closed
    ├── NotFound                    lookup found no such channel before its timeout
    ├── PermissionDenied            the handle's rights do not allow the operation
    └── MessageTooLarge             a value encodes to more than the configured limit
                                    (also a ValueError); raised before anything is sent

Each class carries a wire ``code``: an error that crosses the network travels as its code and
is raised again on the other side as the same class (see :func:`error_for_code`).
"""

from __future__ import annotations

from typing import ClassVar, Final

__all__ = [
    "AuthenticationError",
    "ChannelClosed",
    "DeliveryUncertain",
    "MessageTooLarge",
    "NotFound",
    "PeerLost",
    "PermissionDenied",
    "ProtocolError",
    "QchanError",
    "WouldBlock",
    "error_for_code",
]


class QchanError(Exception):
    """Base class of every exception qchan raises on purpose."""

    code: ClassVar[int] = 1


class ChannelClosed(QchanError):
    """The channel is closed: no more sends, and (once drained) no more receives."""

    code: ClassVar[int] = 2


class WouldBlock(QchanError):
    """A ``*_nowait`` call would have had to wait."""

    code: ClassVar[int] = 3


class PeerLost(QchanError):
    """The node hosting a remote channel, or the connection to it, is gone.

    Raised by a send, it promises that the value was *not* taken by any receiver.
    """

    code: ClassVar[int] = 4


class DeliveryUncertain(PeerLost):
    """The connection was lost after the value was handed over and before the take was confirmed.

    The value may have been received once, or not at all; it is never received twice.
    """

    code: ClassVar[int] = 5


class AuthenticationError(QchanError):
    """A handshake failed: wrong cluster key, untrusted or unexpected node key."""

    code: ClassVar[int] = 6


class ProtocolError(QchanError):
    """A peer sent something malformed or forbidden; the connection is closed."""

    code: ClassVar[int] = 7


class NotFound(QchanError):
    """``lookup`` found no channel of that name before its timeout."""

    code: ClassVar[int] = 8


class PermissionDenied(QchanError):
    """The handle's rights do not allow this operation (say, receive on a send-only handle)."""

    code: ClassVar[int] = 9


class MessageTooLarge(QchanError, ValueError):
    """A value encodes to more bytes than the configured limit; nothing was sent."""

    code: ClassVar[int] = 10


_BY_CODE: Final[dict[int, type[QchanError]]] = {
    cls.code: cls
    for cls in (
        QchanError,
        ChannelClosed,
        WouldBlock,
        PeerLost,
        DeliveryUncertain,
        AuthenticationError,
        ProtocolError,
        NotFound,
        PermissionDenied,
        MessageTooLarge,
    )
}


def error_for_code(code: int) -> type[QchanError]:
    """The exception class for a wire error code; unknown codes map to :class:`QchanError`."""
    return _BY_CODE.get(code, QchanError)
