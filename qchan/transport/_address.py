"""Addresses: ``"HOST:PORT"``, ``"[IPv6]:PORT"`` and ``"unix:/path"``, parsed and printed."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, final

__all__ = ["Address", "parse_address"]

_HOSTNAME: Final = re.compile(
    r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?"
)
_PORT: Final = re.compile(r"[0-9]{1,5}")
_MAX_UNIX_PATH: Final = 107  # sun_path holds 108 bytes on Linux, one for the NUL


@final
@dataclass(frozen=True, slots=True)
class Address:
    """Where a node listens or is dialled: a TCP ``host`` and ``port``, or a Unix socket ``path``.

    Build one with :func:`parse_address`; ``str(address)`` is the canonical text, which
    :func:`parse_address` takes back. ``host`` is an IP literal (IPv6 without brackets) or a
    host name.
    """

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _bad(text: str, why: str = "expected HOST:PORT or unix:/path") -> ValueError:
    return ValueError(f"bad address {text!r}: {why}")


def parse_address(text: str) -> Address:
    """Parse ``"HOST:PORT"``, ``"[v6addr]:PORT"`` or ``"unix:/path"`` (port 0..65535).

    IP literals are normalised (``"[::0001]:80"`` becomes ``"[::1]:80"``) and host names
    lowercased. Raises ``ValueError`` naming the text for anything else.
    """
    if not isinstance(text, str):
        raise TypeError(f"an address is a str, got {type(text).__name__}")
    if text.startswith("unix:"):
        path = text[5:]
        if not path or "\0" in path:
            raise _bad(text, "expected unix:/path with a non-empty path")
        if len(path.encode()) > _MAX_UNIX_PATH:
            raise _bad(text, f"a Unix socket path is at most {_MAX_UNIX_PATH} bytes")
        return Address(path=path)
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not _PORT.fullmatch(port_text):
        raise _bad(text)
    port = int(port_text)
    if port > 65535:
        raise _bad(text, "port must be 0..65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            host = ipaddress.IPv6Address(host[1:-1]).compressed
        except ValueError:
            raise _bad(text, "expected an IPv6 address inside [ ]") from None
    elif ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(text) from None
        raise _bad(text, "write an IPv6 address in brackets: [v6addr]:PORT")
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            host = ipaddress.IPv4Address(host).compressed
        except ValueError:
            raise _bad(text, "not an IPv4 address") from None
    elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise _bad(text, "not a host name")
    else:
        host = host.lower()
    return Address(host=host, port=port)
