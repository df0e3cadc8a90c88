"""The one place where socket and stream exceptions become qchan errors.

Every ``except`` in :mod:`qchan.transport` that catches an OS, anyio or trio exception passes it
to :func:`describe` (via :func:`lost` or :func:`unreachable`); nothing above this package ever
sees a raw socket error. (httpcore does the same in ``_backends/anyio.py``: one map, ``raise ...
from exc``.)
"""

from __future__ import annotations

import errno
import socket
from typing import Final

import anyio

from qchan._errors import AuthenticationError, PeerLost

__all__ = ["TRANSPORT_ERRORS", "cannot_listen", "describe", "lost", "unreachable"]

TRANSPORT_ERRORS: Final = (
    OSError,  # ConnectionError, TimeoutError, socket.gaierror, anyio.ConnectFailed...
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)
"""What a socket, an anyio stream or trio (through anyio) may raise for a failed transfer."""

_REASONS: Final[dict[type[BaseException], str]] = {
    ConnectionRefusedError: "connection refused",
    ConnectionResetError: "connection reset by the peer",
    BrokenPipeError: "connection reset by the peer (broken pipe)",
    ConnectionAbortedError: "connection aborted",
    TimeoutError: "timed out",
    FileNotFoundError: "no such socket file",
    anyio.EndOfStream: "connection closed by the peer",
    anyio.ClosedResourceError: "connection closed locally",
}
_ERRNO_REASONS: Final[dict[int, str]] = {
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timed out",
}


def describe(exc: BaseException | None) -> str:
    """A short reason for a log or an error message (``None``: the peer closed the stream)."""
    if exc is None:
        return "connection closed by the peer"
    # anyio wraps the OS error (BrokenResourceError from OSError); happy eyeballs groups them.
    if isinstance(exc, anyio.BrokenResourceError | OSError) and (
        isinstance(exc.__cause__, OSError | BaseExceptionGroup)
    ):
        cause: BaseException = exc.__cause__
        while isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        return describe(cause)
    if isinstance(exc, TimeoutError) and exc.errno is None and exc.args:
        return str(exc.args[0])  # our own deadlines say what timed out
    for kind in type(exc).__mro__:
        reason = _REASONS.get(kind)
        if reason is not None:
            return reason
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[exc.errno]
        return (exc.strerror or str(exc) or type(exc).__name__).lower()
    if isinstance(exc, anyio.BrokenResourceError):
        return "connection broken"
    return str(exc) or type(exc).__name__


def lost(exc: BaseException | None) -> PeerLost:
    """The error for an established link that a transport failure ended (cause attached)."""
    error = PeerLost(describe(exc))
    error.__cause__ = exc
    return error


def unreachable(address: str, exc: BaseException | None, handshaking: bool = False) -> Exception:
    """The error for a ``connect`` that failed in the transport: refused, reset, timed out...

    A listener that closes the socket *cleanly* during the handshake is the only thing that
    says "no" without words: the responder sends nothing back to a dialler whose cluster key is
    wrong, or that it does not trust. That is an :class:`AuthenticationError`; anything else is
    :class:`PeerLost`.
    """
    if handshaking and (exc is None or isinstance(exc, anyio.EndOfStream)):
        error: Exception = AuthenticationError(
            f"cannot authenticate with {address}: peer closed during the handshake: "
            "wrong cluster key or not trusted"
        )
    else:
        error = PeerLost(f"cannot reach {address}: {describe(exc)}")
    error.__cause__ = exc
    return error


def cannot_listen(address: str, exc: OSError) -> OSError:
    """The error for a listener that cannot bind: still an ``OSError`` (a local resource
    problem, like a missing key file), with the address in its message and the errno kept."""
    error = OSError(exc.errno, f"cannot listen on {address}: {describe(exc)}")
    error.__cause__ = exc
    return error
