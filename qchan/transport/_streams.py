"""The anyio-stream backend, used on trio: three small tasks per link.

The reader takes large chunks (:data:`READ_SIZE`) and feeds them to the Connection, which
dispatches ``on_frames`` synchronously; the writer sleeps on an event set at most once per turn
(by the first ``send`` of the turn, or the end of a read) and writes everything queued in one
call; the timer sleeps until ``Connection.next_deadline()``. The three run in a task group of
the link's own, itself a task of the :class:`~qchan.transport.Transport`'s group, so closing
the link ends them all and :meth:`~StreamLink.wait_closed` waits for that.
"""

from __future__ import annotations

from typing import Any, cast

import anyio
import anyio.abc
import sniffio
from anyio.abc import SocketAttribute

from qchan._errors import PeerLost, QchanError
from qchan.transport._address import Address
from qchan.transport._errors import (
    TRANSPORT_ERRORS,
    cannot_listen,
    describe,
    unreachable,
)
from qchan.transport._link import CLOSE_LINGER, READ_SIZE, Link, Params, logger
from qchan.transport._listener import Listener, OnLink
from qchan.transport._sockets import (
    bind_host,
    claim_unix_path,
    peer_text,
    reset_on_close,
    set_nodelay,
    sock_text,
)

__all__ = ["connect", "listen"]


class StreamLink(Link):
    __slots__ = (
        "_backlog",
        "_done",
        "_eof",
        "_raw",
        "_registry",
        "_resumed",
        "_stream",
        "_timer_scope",
        "_wake",
        "_write_scope",
        "_writing",
    )

    def __init__(
        self,
        stream: anyio.abc.SocketStream,
        params: Params,
        *,
        initiator: bool,
        registry: set[Link],
        waiter: Any,
    ) -> None:
        super().__init__(params, initiator=initiator, waiter=waiter)
        self._stream = stream
        self._registry = registry
        sock = stream.extra(SocketAttribute.raw_socket, None)
        set_nodelay(sock)
        # On trio the stream's socket is a plain non-blocking socket that only our writer
        # uses: the read path may write to it directly (see _flush_after_read). On asyncio
        # the stream has a transport with a buffer of its own, which must not be bypassed.
        self._raw = sock if sniffio.current_async_library() == "trio" else None
        self._writing = False
        self._backlog = b""
        self.local_address = sock_text(sock)
        if not initiator:
            self.remote_address = peer_text(sock)
        self._wake = anyio.Event()
        self._done = anyio.Event()
        self._eof = anyio.Event()
        self._resumed = anyio.Event()
        self._timer_scope: anyio.CancelScope | None = None
        self._write_scope: anyio.CancelScope | None = None
        self._begin(anyio.current_time())
        self._flush_scheduled = True  # the initiator's message 1 goes out first
        self._wake.set()

    async def run(self) -> None:
        """The link's life: reader, timer and writer, until closed; then the socket closes."""
        self._registry.add(self)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._read_loop)
                tasks.start_soon(self._timer_loop)
                await self._write_loop()
                tasks.cancel_scope.cancel()
        finally:
            if not self.closed:  # cancelled from outside: the Transport is going away
                self._end(PeerLost("link closed: the transport is shutting down"))
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            self._done.set()
            self._registry.discard(self)

    async def _read_loop(self) -> None:
        receive = self._stream.receive
        feed = self._feed
        clock = anyio.current_time
        try:
            while True:
                data = await receive(READ_SIZE)
                while self._paused:
                    await self._resumed.wait()
                feed(data, clock())
        except TRANSPORT_ERRORS as exc:
            self._lost(None if isinstance(exc, anyio.EndOfStream) else exc)
        finally:
            self._eof.set()

    async def _write_loop(self) -> None:
        stream = self._stream
        conn = self._conn
        with anyio.CancelScope() as scope:
            self._write_scope = scope
            if self.closed:  # closed before this task ran: _shutdown found no scope to bound
                scope.deadline = anyio.current_time() + CLOSE_LINGER
            try:
                while not self.closed:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    self._flush_scheduled = False
                    await self._write(stream, conn.data_to_send())
                await self._write(stream, conn.data_to_send())
                if self._graceful:
                    await stream.send_eof()
                    await self._eof.wait()
            except TRANSPORT_ERRORS as exc:
                self._lost(exc)

    async def _write(self, stream: anyio.abc.SocketStream, data: bytes) -> None:
        if self._backlog:
            data, self._backlog = self._backlog + data, b""
        if data:
            self._writing = True
            try:
                await stream.send(data)
            finally:
                self._writing = False

    async def _timer_loop(self) -> None:
        clock = anyio.current_time
        deadline = self._conn.next_deadline()
        while deadline is not None:
            with anyio.CancelScope() as scope:
                self._timer_scope = scope
                await anyio.sleep_until(deadline)
            self._timer_scope = None
            if scope.cancel_called:  # re-armed (the deadline moved) or closed
                deadline = None if self.closed else self._conn.next_deadline()
                continue
            deadline = self._on_deadline(max(clock(), deadline))  # None once closed
            if deadline is not None and not self._flush_scheduled:
                self._flush_scheduled = True  # a PING may be queued
                self._wake.set()

    # --- Link hooks ----------------------------------------------------------------------------

    def _now(self) -> float:
        return anyio.current_time()

    def _flush_later(self) -> None:
        self._wake.set()

    def _flush_after_read(self) -> None:
        raw = self._raw
        if raw is None or self._writing or self._backlog:
            # The writer runs after the tasks made runnable in this turn: it seals everything
            # the read produced, and whatever else is sent before it runs, into one write.
            self._wake.set()
            return
        # Write what the read produced from here, as asyncio's transport.write() does: no
        # task switch on the request/reply path. What the socket does not take now (its
        # buffer is full) goes to the writer; the reader never blocks on a write.
        self._flush_scheduled = False
        data = self._conn.data_to_send()
        if not data:
            return
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            self._backlog = data[sent:]
            self._flush_scheduled = True
            self._wake.set()

    def _shutdown(self) -> None:
        if self._timer_scope is not None:
            self._timer_scope.cancel()
        if self._write_scope is not None:
            self._write_scope.deadline = anyio.current_time() + CLOSE_LINGER
        self._wake.set()

    def _rearm_timer(self) -> None:
        if self._timer_scope is not None:
            self._timer_scope.cancel()

    def _pause_transport(self) -> None:
        self._resumed = anyio.Event()

    def _resume_transport(self) -> None:
        self._resumed.set()

    async def wait_closed(self) -> None:
        await self._done.wait()


class StreamListener(Listener):
    __slots__ = ("_accepting", "_scope", "_sockets", "_stopped")

    _sockets: anyio.abc.SocketListener

    async def _accept_loop(
        self,
        registry: set[Link],
        tasks: anyio.abc.TaskGroup,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self._stopped = anyio.Event()
        try:
            with anyio.CancelScope() as self._scope:
                task_status.started()
                while True:
                    try:
                        stream = await self._sockets.accept()
                    except anyio.ClosedResourceError:
                        break
                    except OSError as exc:  # EMFILE and friends: keep serving, slowly
                        logger.warning("accept on %s failed: %s", self.address, describe(exc))
                        await anyio.sleep(0.1)
                        continue
                    if not self._admit():
                        # Too many handshakes in progress: refuse at once (RST), spend nothing.
                        reset_on_close(stream.extra(SocketAttribute.raw_socket, None))
                        await anyio.aclose_forcefully(stream)
                        continue
                    link = StreamLink(
                        stream,
                        self.params,
                        initiator=False,
                        registry=registry,
                        waiter=self._handshake_finished,
                    )
                    self._handshaking(link)
                    tasks.start_soon(link.run)
        finally:
            self._stopped.set()

    async def _stop(self) -> None:
        self._scope.cancel()
        await self._stopped.wait()
        await self._sockets.aclose()


async def listen(
    address: Address,
    params: Params,
    on_link: OnLink,
    max_half_open: int,
    registry: set[Link],
    tasks: anyio.abc.TaskGroup,
) -> Listener:
    listener = StreamListener(params, on_link, max_half_open)
    try:
        if address.is_unix:
            claim_unix_path(address.path)
            sockets = await anyio.create_unix_listener(address.path)
        else:
            host = await bind_host(address)
            multi = await anyio.create_tcp_listener(local_host=host, local_port=address.port)
            sockets = cast(anyio.abc.SocketListener, multi.listeners[0])
    except OSError as exc:
        raise cannot_listen(str(address), exc) from exc
    listener._sockets = sockets
    raw = sockets.extra(SocketAttribute.raw_socket, None)
    listener._bound(sock_text(raw) or str(address), address.path)
    await tasks.start(listener._accept_loop, registry, tasks)
    return listener


async def connect(
    address: Address, params: Params, registry: set[Link], tasks: anyio.abc.TaskGroup
) -> Link:
    try:
        with anyio.fail_after(params.config.handshake_timeout):
            if address.is_unix:
                stream: anyio.abc.SocketStream = await anyio.connect_unix(address.path)
            else:
                stream = await anyio.connect_tcp(address.host, address.port)
    except TRANSPORT_ERRORS as exc:
        raise unreachable(str(address), exc) from exc
    outcome: list[QchanError | None] = []
    decided = anyio.Event()

    def waiter(link: Link, error: QchanError | None) -> None:
        outcome.append(error)
        decided.set()

    link = StreamLink(stream, params, initiator=True, registry=registry, waiter=waiter)
    link.remote_address = str(address)
    tasks.start_soon(link.run)
    try:
        await decided.wait()
    except BaseException:
        link.close()
        raise
    if outcome[0] is not None:
        raise outcome[0]
    return link
