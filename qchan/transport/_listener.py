"""The part of a listener both backends share: the half-open cap and the handshake outcome."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from qchan._errors import QchanError
from qchan.transport._link import Link, Params, logger
from qchan.transport._sockets import release_unix_path, unix_path_identity

__all__ = ["Listener", "OnLink"]

OnLink = Callable[[Link], None]


class Listener:
    """A listening socket: accepts connections, handshakes, hands authenticated links over.

    ``address`` is the address really bound (port 0 resolved), e.g. ``"127.0.0.1:40123"`` or
    ``"unix:/run/qchan.sock"``. Use as an async context manager, or call :meth:`aclose`.
    Closing a listener stops accepting and aborts the handshakes in progress; links already
    handed to ``on_link`` belong to the node and stay open. ``params`` is what every accepted
    connection is made with; replacing it (say, to put the bound address into the hello)
    applies to the connections accepted from then on.
    """

    __slots__ = (
        "_closed",
        "_half_open",
        "_max_half_open",
        "_on_link",
        "_unix",
        "address",
        "params",
    )

    def __init__(self, params: Params, on_link: OnLink, max_half_open: int) -> None:
        if max_half_open < 1:
            raise ValueError("max_half_open must be at least 1")
        self.params = params
        self.address = ""
        self._on_link = on_link
        self._max_half_open = max_half_open
        self._half_open: set[Link] = set()
        self._closed = False
        self._unix: tuple[str, tuple[int, int] | None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def _bound(self, address: str, unix_path: str = "") -> None:
        self.address = address
        if unix_path:
            self._unix = (unix_path, unix_path_identity(unix_path))

    def _admit(self) -> bool:
        """May one more handshake start? (Beyond the cap, a new socket is reset at once.)"""
        return not self._closed and len(self._half_open) < self._max_half_open

    def _handshaking(self, link: Link) -> None:
        self._half_open.add(link)

    def _handshake_finished(self, link: Link, error: QchanError | None) -> None:
        """The waiter of every accepted link: ``on_link`` on success, a debug line otherwise."""
        self._half_open.discard(link)
        if error is not None:
            logger.debug("handshake from %s failed: %s", link.remote_address or "?", error)
            return
        try:
            self._on_link(link)
        except Exception:
            logger.exception("on_link raised; closing %r", link)
            link.close()

    async def aclose(self) -> None:
        """Stop listening, abort handshakes in progress, remove our Unix socket file.

        Idempotent; returns when the listening socket and the aborted links are closed.
        """
        if self._closed:
            return
        self._closed = True
        half_open = list(self._half_open)
        for link in half_open:
            link.close()
        await self._stop()
        for link in half_open:
            await link.wait_closed()
        if self._unix is not None:
            release_unix_path(*self._unix)

    async def _stop(self) -> None:
        """Backend: close the listening socket(s) and stop accepting."""
        raise NotImplementedError

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._half_open)} handshaking"
        return f"<Listener {self.address} {state}>"
