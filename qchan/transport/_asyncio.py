"""The asyncio (and uvloop) backend: each link is an ``asyncio.Protocol``; no tasks at all.

``data_received`` feeds the Connection and dispatches ``on_frames`` synchronously; sends made
during a turn are written by one ``loop.call_soon`` flush; the heartbeat is one ``call_at``
handle, re-armed from ``Connection.next_deadline()`` only when it fires. (DESIGN.md: a raw
protocol does ~47k round trips/s where an anyio stream does 6-8k.)

A :class:`BusyPoller` keeps the loop polling, rather than sleeping, while messages flow (see
there).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, Final, cast

from qchan._errors import QchanError
from qchan.transport._address import Address
from qchan.transport._errors import TRANSPORT_ERRORS, cannot_listen, unreachable
from qchan.transport._link import CLOSE_LINGER, Link, Params
from qchan.transport._listener import Listener, OnLink
from qchan.transport._sockets import (
    bind_host,
    claim_unix_path,
    peer_text,
    reset_on_close,
    set_nodelay,
    sock_text,
)

__all__ = ["BusyPoller", "connect", "listen"]

_BACKLOG: Final = 256
# Flush coalescing (see ProtocolLink._flush_when_quiet).
_BUSY: Final = 20e-6  # a link flushed this recently, with nothing read since, is streaming
_MAX_DEFERRALS: Final = 32
_COALESCE_BYTES: Final = 32 * 1024
# The clock for those 20 us and for busy polling. Not loop.time(): uvloop's ticks in whole
# milliseconds, which made almost every flush look "recent" (each request then waited two turns).
_clock: Final = time.perf_counter
# (sched_yield is POSIX; elsewhere a zero sleep is the way to offer the CPU.)
_yield_cpu: Final[Callable[[], None]] = getattr(os, "sched_yield", lambda: time.sleep(0))
# Busy polling backs off for _BACK_OFF when yielding the CPU took longer than _CONTENDED: a
# yield nobody takes returns in about a microsecond; one that lets another process run, after
# that process's turn.
_CONTENDED: Final = 20e-6
_BACK_OFF: Final = 0.01


class BusyPoller:
    """Keeps an event loop polling its sockets, instead of sleeping, while messages flow.

    On a request/response exchange each side would otherwise put its process to sleep after
    every write and be woken by the answer. That wake-up (an interrupt to another CPU, on a
    virtual machine an exit to the hypervisor, then caches gone cold) cost more than all of
    qchan's own work per round trip: ~40% of a remote rendezvous on the machine the figures
    in docs/benchmarks.md come from. Go's runtime does the same, spinning briefly before it
    parks a thread.

    Polling starts only when a read comes within ``window`` of the previous read or write of
    any link of the loop (messages are flowing: the next one is likely as close), and lasts
    ``window`` past the last of them. A lone request therefore costs no polling at all, and
    nor does it make the kernel queue the woken peer behind a polling process (a local TCP
    write hints that the writer is about to sleep, so the reader is woken on the writer's CPU).

    Each turn of the poll yields the CPU to any other runnable process. If that yield takes
    long, the CPU was wanted (more busy processes than CPUs, where polling only takes time
    from the processes doing the work): polling then stops and does not start again for
    :data:`_BACK_OFF`. The cost is CPU, bounded: at most ``window`` of polling after each
    message, on a CPU nobody else wants; an idle node sleeps as before.
    """

    __slots__ = ("_last_io", "_loop", "_polling", "_quiet_until", "_until", "window")

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        self._loop = loop
        self.window = window
        self._last_io = 0.0
        self._until = 0.0
        self._quiet_until = 0.0  # (backing off: the CPU is wanted elsewhere)
        self._polling = False

    def read(self) -> None:
        """A link read: poll for ``window`` more if messages are flowing."""
        now = _clock()
        if now - self._last_io < self.window and now >= self._quiet_until:
            self._until = now + self.window
            if not self._polling:
                self._polling = True
                self._loop.call_soon(self._poll)
        self._last_io = now

    def wrote(self) -> None:
        """A link wrote: an answer may follow (polling, if on, goes on for it)."""
        now = self._last_io = _clock()
        if self._polling:
            self._until = now + self.window

    def _poll(self) -> None:
        # A callback that is always ready makes the loop poll its selector with no timeout;
        # what arrives meanwhile is handled at once, by the loop's ordinary turn.
        now = _clock()
        if now < self._until:
            _yield_cpu()
            if _clock() - now < _CONTENDED:
                self._loop.call_soon(self._poll)
                return
            self._quiet_until = now + _BACK_OFF  # another process ran: it needs this CPU
        self._polling = False


class ProtocolLink(Link, asyncio.Protocol):
    __slots__ = (
        "_deferrals",
        "_done",
        "_last_flush",
        "_linger",
        "_listener",
        "_loop",
        "_poller",
        "_queued_seen",
        "_read_since_flush",
        "_registry",
        "_timer",
        "_timer_when",
        "_transport",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        params: Params,
        *,
        registry: set[Link],
        poller: BusyPoller | None,
        listener: ProtocolListener | None = None,
        waiter: Any,
    ) -> None:
        super().__init__(params, initiator=listener is None, waiter=waiter)
        self._loop = loop
        self._registry = registry
        self._poller = poller
        self._read_since_flush = False
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._last_flush = 0.0
        self._deferrals = 0
        self._queued_seen = 0
        self._linger: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] = loop.create_future()

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        sock = transport.get_extra_info("socket")
        self.local_address = sock_text(sock)
        listener = self._listener
        if listener is not None:
            self.remote_address = peer_text(sock)
            if not listener._admit():
                # Too many handshakes in progress: refuse at once, loudly (RST), spend nothing.
                self.closed = True
                self._handshake_waiter = None
                reset_on_close(sock)
                transport.abort()
                return
            listener._handshaking(self)
        set_nodelay(sock)
        self._registry.add(self)
        self._begin(self._loop.time())
        self._flush()
        self._rearm_timer()

    def data_received(self, data: bytes) -> None:
        self._read_since_flush = True
        if self._poller is not None:
            self._poller.read()  # (first: what this read makes us write is not a message flow)
        self._feed(data, self._loop.time())

    def eof_received(self) -> bool:
        self._lost(None)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._lost(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._done.done():
            self._done.set_result(None)
        self._registry.discard(self)

    # --- Link hooks ----------------------------------------------------------------------------

    def _now(self) -> float:
        return self._loop.time()

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._conn.data_to_send()
        transport = self._transport
        # (Closing: a write failed and connection_lost is on its way. Writing on would only
        # make asyncio log "socket.send() raised exception." for each write.)
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
            self._last_flush = _clock()
            self._read_since_flush = False
            if self._poller is not None:
                self._poller.wrote()

    def _flush_later(self) -> None:
        if self._read_since_flush or _clock() - self._last_flush >= _BUSY:
            # A request: the first frame after an answer came in, or on a quiet link. Write
            # now, saving the latency of a turn; frames queued later in this turn follow in
            # the next flush.
            self._flush()
            return
        self._deferrals = 0
        self._queued_seen = self._conn.queued_bytes()
        self._loop.call_soon(self._flush_when_quiet)

    def _flush_when_quiet(self) -> None:
        # Coalescing: a producer that queues a frame every turn (a stream of credited sends)
        # would otherwise cost one encryption and one write per frame. While the link is
        # busy (it was flushed a moment ago) and frames keep coming, wait a turn more, up to
        # a limit; a lone frame on a quiet link goes out at once.
        if not self._flush_scheduled:
            return  # the read path flushed meanwhile
        queued = self._conn.queued_bytes()
        if (
            self._deferrals < _MAX_DEFERRALS
            and queued < _COALESCE_BYTES
            and (self._deferrals == 0 or queued > self._queued_seen)
        ):
            self._deferrals += 1
            self._queued_seen = queued
            self._loop.call_soon(self._flush_when_quiet)
            return
        self._flush()

    _flush_after_read = _flush

    def _shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        if transport is None:
            return
        if hasattr(self, "_conn"):
            data = self._conn.data_to_send()
            if data:
                transport.write(data)
        try:
            if self._graceful and transport.can_write_eof():
                transport.write_eof()  # the peer's EOF (eof_received) closes the transport
            else:
                transport.close()
        except TRANSPORT_ERRORS:  # ENOTCONN: the peer is already gone
            transport.abort()
            return
        self._linger = self._loop.call_later(CLOSE_LINGER, transport.abort)

    def _rearm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = None if self.closed else self._conn.next_deadline()
        if deadline is not None:
            self._timer_when = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        # call_at may fire up to one clock resolution early: act as of the planned time.
        deadline = self._on_deadline(max(self._loop.time(), self._timer_when))
        if deadline is not None:  # None once closed
            self._flush()  # a PING may be queued
            self._timer_when = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _pause_transport(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def _resume_transport(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._done)


class ProtocolListener(Listener):
    __slots__ = ("_server",)

    _server: asyncio.Server

    async def _stop(self) -> None:
        self._server.close()  # closes the listening sockets now; accepted links stay open
        await asyncio.sleep(0)


async def listen(
    address: Address,
    params: Params,
    on_link: OnLink,
    max_half_open: int,
    registry: set[Link],
    poller: BusyPoller | None,
) -> Listener:
    loop = asyncio.get_running_loop()
    listener = ProtocolListener(params, on_link, max_half_open)

    def factory() -> ProtocolLink:
        return ProtocolLink(
            loop,
            listener.params,  # (the node may update the hello once the address is known)
            registry=registry,
            poller=poller,
            listener=listener,
            waiter=listener._handshake_finished,
        )

    try:
        if address.is_unix:
            claim_unix_path(address.path)
            server = await loop.create_unix_server(factory, address.path, backlog=_BACKLOG)
        else:
            host = await bind_host(address)
            server = await loop.create_server(
                factory, host, address.port, reuse_address=True, backlog=_BACKLOG
            )
    except OSError as exc:
        raise cannot_listen(str(address), exc) from exc
    listener._server = server
    listener._bound(sock_text(server.sockets[0]) or str(address), address.path)
    return listener


async def connect(
    address: Address, params: Params, registry: set[Link], poller: BusyPoller | None
) -> Link:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[QchanError | None] = loop.create_future()

    def waiter(link: Link, error: QchanError | None) -> None:
        if not outcome.done():
            outcome.set_result(error)

    link = ProtocolLink(loop, params, registry=registry, poller=poller, waiter=waiter)
    link.remote_address = str(address)
    try:
        async with asyncio.timeout(params.config.handshake_timeout):
            if address.is_unix:
                await loop.create_unix_connection(lambda: link, address.path)
            else:
                await loop.create_connection(lambda: link, address.host, address.port)
    except TRANSPORT_ERRORS as exc:
        raise unreachable(str(address), exc) from exc
    try:
        error = await outcome
    except BaseException:
        link.close()
        raise
    if error is not None:
        raise error
    return link
