"""Small socket chores shared by both backends: options, names, Unix socket files."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct

import anyio

from qchan.transport._address import Address

__all__ = [
    "bind_host",
    "claim_unix_path",
    "peer_text",
    "release_unix_path",
    "reset_on_close",
    "set_nodelay",
    "sock_text",
]


def set_nodelay(sock: socket.socket | None) -> None:
    """TCP_NODELAY: a frame must not wait for Nagle (Unix sockets have nothing to set)."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def reset_on_close(sock: socket.socket | None) -> None:
    """Make the coming close() send RST: the peer learns at once that it was refused."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _name_text(name: object, family: int) -> str:
    if family == socket.AF_UNIX:
        path = name.decode(errors="replace") if isinstance(name, bytes) else str(name or "")
        return f"unix:{path}" if path else ""
    if isinstance(name, tuple) and len(name) >= 2:
        return str(Address(host=str(name[0]), port=int(name[1])))
    return ""


def sock_text(sock: socket.socket | None) -> str:
    """The local address of a socket as address text ("" if it has none)."""
    if sock is None:
        return ""
    try:
        return _name_text(sock.getsockname(), sock.family)
    except OSError:
        return ""


def peer_text(sock: socket.socket | None) -> str:
    """The remote address of a connected socket as address text ("" if it has none)."""
    if sock is None:
        return ""
    try:
        return _name_text(sock.getpeername(), sock.family)
    except OSError:
        return ""


async def bind_host(address: Address) -> str:
    """The one IP address a listener binds for ``address.host`` (names resolve to the first)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in address.host else socket.AF_INET, address.host)
    except OSError:
        infos = await anyio.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        return str(infos[0][4][0])
    return address.host


def claim_unix_path(path: str) -> None:
    """Make room for a Unix listener at ``path``: remove a stale socket file left by a dead one.

    Raises ``OSError(EADDRINUSE)`` if a live listener answers there, or if ``path`` is
    something other than a socket (we never delete a user's file).
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EADDRINUSE, "the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        code = probe.connect_ex(path)
    finally:
        probe.close()
    if code != errno.ECONNREFUSED:  # 0 or EAGAIN (a full backlog): someone listens there
        raise OSError(errno.EADDRINUSE, "another listener is using the socket")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def unix_path_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def release_unix_path(path: str, identity: tuple[int, int] | None) -> None:
    """Remove our socket file, unless someone has replaced it since we bound it."""
    if identity is not None and unix_path_identity(path) == identity:
        with contextlib.suppress(OSError):
            os.unlink(path)
