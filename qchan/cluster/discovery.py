"""mDNS discovery: advertise this node, and find the other nodes of its cluster.

The only module of qchan that imports zeroconf. What goes into a record, and how a record is
checked, lives in :mod:`qchan.cluster._mdns`; this module runs zeroconf and carries what it
hears to the node. A record is a hint, never trust: the node dials a discovered peer with the
announced key as the expected key, and the handshake decides.

Threads
-------
zeroconf runs in a thread of its own with its own asyncio loop, on asyncio and trio alike:
one code path for both backends, and the node's loop never parses a packet nor runs a
zeroconf timer, so a flood of announcements slows discovery, not the node. Methods named
``_zc_*`` run on zeroconf's loop, the rest on the node's. They meet in three places:

- :meth:`Discovery.start` and :meth:`Discovery.stop` run coroutines on zeroconf's loop and
  wait for them in a worker thread, so the node's loop keeps running meanwhile;
- the browser's events are handled on zeroconf's loop: the record is read from zeroconf's
  cache, checked, and folded into a bounded table of candidates, which says what changed;
- each change is posted to the node's loop (``call_soon_threadsafe``, or trio's
  ``run_sync_soon``), where ``on_found`` and ``on_lost`` run.

Expiry
------
zeroconf's browser reports a service gone on a goodbye record (at once), or when its PTR record
expires; but it keeps PTR records at least 1125 s whatever their TTL. So we also watch each
candidate's SRV record: once half its TTL is gone we ask for it again (a live node answers and
the record is renewed), and when it expires the candidate is lost.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar, final

import anyio
import anyio.to_thread
import ifaddr
import sniffio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf._dns import DNSQuestion  # (not re-exported by zeroconf/__init__ for mypy)
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_SRV, _TYPE_TXT

from qchan.cluster._mdns import (
    SERVICE_TYPE,
    Announcement,
    Candidates,
    Found,
    Lost,
    advertised_addresses,
    cluster_tag,
    encode_txt,
    instance_label,
    parse_announcement,
)
from qchan.crypto.keys import ClusterKey
from qchan.transport import parse_address

__all__ = ["RECORD_TTL", "SERVICE_TYPE", "Discovery", "cluster_tag"]

log = logging.getLogger("qchan.discovery")

T = TypeVar("T")
OnFound = Callable[[str, bytes, list[str]], None]
OnLost = Callable[[bytes], None]

RECORD_TTL: Final = 120  # s: RFC 6762's TTL for host records; a silent node is dropped after it
_WATCH_PERIOD: Final = 0.5  # s between checks of the candidates' records
_RESOLVE_TIMEOUT: Final = 3000  # ms to wait for the rest of an incomplete record
_MAX_RESOLVING: Final = 16  # incomplete records asked after at once; more are left alone
_MAX_ASKING: Final = 64  # instances asked after per check: our own queries stay bounded
_MISSING_GRACE: Final = 3000  # ms a candidate's record may be missing from the cache
_RECHECK_FOR: Final = 2500  # ms to keep reading a changed record (old copies expire in 1 s)
_CALL_TIMEOUT: Final = 10.0  # s for one step of start() on zeroconf's loop
_STOP_TIMEOUT: Final = 5.0  # s: stop() gives up on zeroconf after this (its thread is a daemon)


@final
class Discovery:
    """Advertise one node over mDNS and report the other nodes of its cluster.

    ``on_found(name, public_key, ["HOST:PORT", ...])`` is called for each node announced with
    our cluster tag and protocol version (again when its addresses change), and
    ``on_lost(public_key)`` when no record announces it any more (goodbye, or expiry after
    ``ttl`` seconds of silence). Both run in the event loop that called :meth:`start`.
    ``interfaces`` (IP addresses) overrides where mDNS runs, which by default follows
    ``address``: loopback for a loopback listener, that interface for a specific address,
    all interfaces for a wildcard. A Unix socket address is not advertised (only browsed).
    """

    def __init__(
        self,
        *,
        name: str,
        public_key: bytes,
        cluster_key: ClusterKey,
        address: str,
        on_found: OnFound,
        on_lost: OnLost,
        interfaces: Sequence[str] | None = None,
        ttl: int = RECORD_TTL,
    ) -> None:
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise ValueError("public_key must be 32 bytes")
        if not isinstance(ttl, int) or not 1 <= ttl <= 4500:
            raise ValueError("ttl must be 1..4500 seconds")
        if isinstance(interfaces, str):
            raise TypeError("interfaces must be a list of IP addresses, not a single string")
        self.name = name
        self.public_key = public_key
        self.tag = cluster_tag(cluster_key)
        self.instance = f"{instance_label(name, public_key)}.{SERVICE_TYPE}"
        self.addresses: list[str] = []  # what our record advertises, once started
        self._listen_at = parse_address(address)
        self._on_found = on_found
        self._on_lost = on_lost
        self._interfaces = None if interfaces is None else list(interfaces)
        self._ttl = ttl
        self._started = False
        self._stopped = False
        self._post: Callable[..., object] | None = None
        # Owned by zeroconf's loop once started:
        self._zc: Zeroconf | None = None
        self._candidates = Candidates()
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._resolving: set[str] = set()
        self._asked: dict[str, float] = {}  # instance -> when we may ask for it again (ms)
        self._missing: dict[str, float] = {}  # instance -> when we give up on it (ms)
        self._recheck: dict[str, float] = {}  # instance -> until when to read it again (ms)

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running" if self._started else "new"
        return f"<Discovery {self.instance} {state}>"

    @property
    def candidates(self) -> int:
        """How many records of our cluster are being tracked (at most 1024)."""
        return len(self._candidates)

    # --- the node's loop -----------------------------------------------------------------

    async def start(self) -> None:
        """Start zeroconf, browse, and advertise; return once our record is registered.

        Raises ``OSError`` if mDNS cannot be set up (say, port 5353 taken exclusively), and
        ``RuntimeError`` if called twice.
        """
        if self._started:
            raise RuntimeError("a Discovery can be started once")
        self._started = True
        self._post = _poster()
        try:
            hosts = await anyio.to_thread.run_sync(self._open)
            port = self._listen_at.port
            self.addresses = [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts]
            await self._call(self._zc_start(hosts))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Say goodbye (peers forget us at once), stop browsing, close zeroconf.

        Idempotent; never raises for zeroconf's troubles, and gives up on zeroconf after a few
        seconds rather than hang. Shielded from cancellation, so zeroconf is not left half-shut.
        """
        if self._stopped:
            return
        self._stopped = True  # from here on nothing is delivered to the node
        zc = self._zc
        if zc is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(_STOP_TIMEOUT) as scope:
            try:
                await self._call(self._zc_stop())
            except Exception as exc:
                log.debug("stopping mDNS discovery: %r", exc)
            try:
                # Blocking: joins zeroconf's thread. abandon_on_cancel: never hang here.
                await anyio.to_thread.run_sync(zc.close, abandon_on_cancel=True)
            except Exception as exc:
                log.debug("closing zeroconf: %r", exc)
        if scope.cancelled_caught:
            log.warning(
                "zeroconf did not stop within %s s; its thread is left to exit", _STOP_TIMEOUT
            )

    def _open(self) -> list[str]:
        """(A worker thread.) Start zeroconf's thread; return the IPs to advertise.

        Sets ``self._zc`` itself, so that a start() cancelled meanwhile still closes it.
        """
        if self._listen_at.is_unix:
            log.info("not advertising %s over mDNS: a Unix socket", self._listen_at)
            interfaces: list[str] | None = None
            addresses: list[str] = []
        else:
            local = [
                ip.ip if isinstance(ip.ip, str) else ip.ip[0]
                for adapter in ifaddr.get_adapters()
                for ip in adapter.ips
            ]
            interfaces, addresses = advertised_addresses(self._listen_at.host, local)
        if self._interfaces is not None:
            interfaces = self._interfaces
        # From a worker thread zeroconf finds no running asyncio loop, so it starts its own
        # thread and loop (what we want on asyncio as on trio). IPv4 multicast carries the
        # records (AAAA records included) unless IPv6 interfaces are asked for explicitly.
        if interfaces is None:
            self._zc = Zeroconf(InterfaceChoice.All, ip_version=IPVersion.V4Only)
        else:
            self._zc = Zeroconf(list(interfaces))
        return addresses

    async def _call(self, coro: Coroutine[Any, Any, T], limit: float = _CALL_TIMEOUT) -> T:
        """Run ``coro`` on zeroconf's loop; wait for it in a worker thread."""
        assert self._zc is not None
        assert self._zc.loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._zc.loop)
        try:
            return await anyio.to_thread.run_sync(future.result, limit, abandon_on_cancel=True)
        finally:
            future.cancel()  # (no-op once done) a cancelled or timed-out call stops there too

    def _deliver(self, change: Found | Lost) -> None:
        """(The node's loop.) Tell the node; its mistakes must not reach the event loop."""
        if self._stopped:
            return
        try:
            if isinstance(change, Found):
                self._on_found(change.name, change.key, list(change.addresses))
            else:
                self._on_lost(change.key)
        except Exception:
            log.exception("discovery callback failed for %s", change)

    # --- zeroconf's loop -----------------------------------------------------------------

    async def _zc_start(self, hosts: list[str]) -> None:
        zc = self._zc
        assert zc is not None
        self._browser = AsyncServiceBrowser(zc, SERVICE_TYPE, handlers=[self._zc_on_change])
        self._spawn(self._zc_watch())
        if not hosts:
            return
        label = self.instance[: -len(SERVICE_TYPE) - 1]
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            self.instance,
            port=self._listen_at.port,
            properties=encode_txt(self.name, self.public_key, self.tag),
            server=f"{label}.local.",
            parsed_addresses=hosts,
            host_ttl=self._ttl,
            other_ttl=self._ttl,
        )
        # cooperating_responders skips probing for a name conflict (about 1.2 s): our instance
        # name carries our key's fingerprint, so no honest node shares it, and a forger who
        # answered our probes could otherwise keep us from registering at all.
        announcing = await zc.async_register_service(info, cooperating_responders=True)
        self._spawn(announcing)

    async def _zc_stop(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert self._zc is not None
        await self._zc.async_unregister_all_services()  # goodbye records

    def _spawn(self, awaitable: Any) -> None:
        # asyncio keeps only weak references to tasks: hold them until they finish.
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _zc_on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """The browser's handler: nothing a record holds may raise into zeroconf."""
        try:
            if state_change is ServiceStateChange.Removed:
                self._zc_apply(name, None)
                return
            self._zc_lookup(name)
            if name in self._candidates:
                # A changed record replaces the old one a second later (RFC 6762 10.2), and
                # no event says so: read it again for a little while.
                self._recheck[name] = current_time_millis() + _RECHECK_FOR
        except Exception:
            log.debug("mDNS record %r", name, exc_info=True)

    def _zc_lookup(self, instance: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(SERVICE_TYPE, instance)
        if info.load_from_cache(self._zc):
            self._zc_apply(instance, self._read(info))
        elif instance not in self._resolving and len(self._resolving) < _MAX_RESOLVING:
            # Announcements carry every record, so this is rare: a record split across packets.
            self._resolving.add(instance)
            self._spawn(self._zc_resolve(instance, info))

    async def _zc_resolve(self, instance: str, info: AsyncServiceInfo) -> None:
        assert self._zc is not None
        try:
            if await info.async_request(self._zc, _RESOLVE_TIMEOUT):
                self._zc_apply(instance, self._read(info))
        except Exception:
            log.debug("resolving mDNS record %r", instance, exc_info=True)
        finally:
            self._resolving.discard(instance)

    def _read(self, info: AsyncServiceInfo) -> Announcement | None:
        return parse_announcement(
            info.text,
            info.port,
            info.parsed_addresses(),
            tag=self.tag,
            own_key=self.public_key,
        )

    def _zc_apply(self, instance: str, announcement: Announcement | None) -> None:
        post = self._post
        assert post is not None
        for change in self._candidates.update(instance, announcement):
            try:
                post(self._deliver, change)
            except RuntimeError:
                pass  # the node's event loop has ended: nobody is left to tell
        if instance not in self._candidates:
            self._asked.pop(instance, None)
            self._missing.pop(instance, None)
            self._recheck.pop(instance, None)

    async def _zc_watch(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_PERIOD)
            try:
                self._zc_expire()
            except Exception:
                log.debug("checking mDNS records", exc_info=True)

    def _zc_expire(self) -> None:
        """Drop candidates whose SRV record expired; ask again for those half-way there.

        Records that changed lately are read again (see ``_zc_on_change``). A record missing
        from zeroconf's cache (bounded at 10,000 records, so a flood can evict real ones) is
        asked for too, and dropped only if still missing a while later.
        """
        zc = self._zc
        assert zc is not None
        now = current_time_millis()
        for instance, until in list(self._recheck.items()):
            if now >= until or instance not in self._candidates:
                del self._recheck[instance]
            if instance in self._candidates:
                self._zc_lookup(instance)
        query = DNSOutgoing(_FLAGS_QR_QUERY)
        asking = 0
        for instance in self._candidates.instances():
            records = zc.cache.get_all_by_details(instance, _TYPE_SRV, _CLASS_IN)
            live = [record for record in records if not record.is_expired(now)]
            if live:
                self._missing.pop(instance, None)
                freshest = max(live, key=lambda record: record.get_expiration_time(100))
                due = freshest.is_stale(now)
                again = max(1000.0, freshest.ttl * 1000 / 8)
            elif records or now >= self._missing.setdefault(instance, now + _MISSING_GRACE):
                self._zc_apply(instance, None)  # expired: not renewed, its node is silent
                continue
            else:
                due, again = True, 1000.0
            if due and now >= self._asked.get(instance, 0.0) and asking < _MAX_ASKING:
                query.add_question(DNSQuestion(instance, _TYPE_SRV, _CLASS_IN))
                query.add_question(DNSQuestion(instance, _TYPE_TXT, _CLASS_IN))
                self._asked[instance] = now + again
                asking += 1
        if query.questions:
            zc.async_send(query)


def _poster() -> Callable[..., object]:
    """A thread-safe, non-blocking way to run a callback in the current event loop."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    loop = asyncio.get_running_loop()

    def call_soon(callback: Callable[..., object], *args: object) -> None:
        # As anyio's own run_sync_soon does: a loop callback runs outside any task, where
        # anyio (the node starting a task group task, say) needs telling which library runs.
        context = contextvars.Context()
        context.run(sniffio.current_async_library_cvar.set, "asyncio")
        loop.call_soon_threadsafe(context.run, callback, *args)

    return call_soon
