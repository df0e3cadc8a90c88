"""mDNS discovery: real multicast on loopback, real nodes, and forged records from raw zeroconf.

Every node and Discovery here runs mDNS on the loopback interface only (nodes listen on
127.0.0.1), so tests see each other's records but each test has its own cluster key, and
records of other clusters are ignored. Forgeries are published with plain zeroconf, in its own
thread, exactly as a hostile host on the network could: right cluster tag (the forger is
assumed to know it), wrong keys, names of real nodes, garbage, and floods.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import Zeroconf
from zeroconf.asyncio import AsyncServiceInfo

import qchan
from qchan.cluster import _mdns
from qchan.cluster._mdns import (
    Announcement,
    Candidates,
    Found,
    Lost,
    advertised_addresses,
    encode_txt,
    instance_label,
    parse_announcement,
    parse_txt,
)
from qchan.cluster.discovery import SERVICE_TYPE, Discovery, cluster_tag
from qchan.node import Node
from tests.node._helpers import connected_to, make_node, wait_for

pytestmark = pytest.mark.anyio

KEY = bytes(range(32))
OWN = bytes(32)
TAG = "0123456789abcdef0123456789abcdef"


def txt_bytes(fields: Iterable[bytes]) -> bytes:
    """A TXT record's wire form: each string prefixed by its length."""
    return b"".join(bytes([len(field)]) + field for field in fields)


def good_txt(key: bytes = KEY, tag: str = TAG, name: str = "worker-1") -> bytes:
    return txt_bytes(k + b"=" + v for k, v in encode_txt(name, key, tag).items())


def parse(text: Any, port: Any = 7400, addresses: Any = ("10.0.0.7",)) -> Announcement | None:
    return parse_announcement(text, port, addresses, tag=TAG, own_key=OWN)


# --- the cluster tag -------------------------------------------------------------------------


def test_cluster_tag_is_stable_per_key_and_hides_the_key() -> None:
    ck = qchan.ClusterKey.generate()
    tag = cluster_tag(ck)
    assert tag == cluster_tag(qchan.ClusterKey.from_bytes(bytes(ck)))
    assert len(tag) == 32
    assert int(tag, 16) >= 0
    assert tag != cluster_tag(qchan.ClusterKey.generate())
    raw = bytes(ck)
    assert raw.hex() not in tag
    assert raw not in tag.encode()
    assert raw not in bytes.fromhex(tag)
    # Not a plain hash of the key either: the tag is keyed by it.
    import hashlib

    assert tag not in (hashlib.blake2b(raw).hexdigest(), hashlib.sha256(raw).hexdigest())


def test_cluster_tag_takes_only_cluster_keys() -> None:
    with pytest.raises(TypeError):
        cluster_tag(b"\x00" * 32)  # type: ignore[arg-type]


# --- what goes into a record -----------------------------------------------------------------


def test_instance_labels_are_dns_safe_and_unique_per_key() -> None:
    long_name = "ünïcode & spaces/slashes." * 10
    label = instance_label(long_name, KEY)
    assert len(label.encode()) <= 63
    assert label.replace("-", "").isalnum()
    assert label.isascii()
    assert instance_label(long_name, KEY) == label
    assert instance_label(long_name, OWN) != label
    assert instance_label("", KEY).startswith("qchan-")


def test_encoded_txt_parses_back() -> None:
    found = parse(good_txt(name="w1"))
    assert found == Announcement("w1", KEY, ("10.0.0.7:7400",))


def test_long_and_unprintable_names_are_tidied_not_refused() -> None:
    found = parse(good_txt(name="x\n" * 300))
    assert found is not None
    assert found.name.startswith("x?x?")
    assert len(found.name.encode()) <= 200


# --- reading TXT records: malformed input is ignored, never raised ---------------------------


def test_parse_txt_reads_key_value_strings() -> None:
    assert parse_txt(b"") == {}
    assert parse_txt(b"\x00") == {}
    assert parse_txt(txt_bytes([b"a=1", b"B=", b"flag"])) == {b"a": b"1", b"b": b"", b"flag": None}


@pytest.mark.parametrize(
    "text",
    [
        b"\x05a=1",  # the string runs past the end
        txt_bytes([b"=1"]),  # empty key
        txt_bytes([b"k=1", b"K=2"]),  # a repeated key (keys are case-insensitive)
    ],
)
def test_parse_txt_refuses_malformed_records(text: bytes) -> None:
    assert parse_txt(text) is None


def _fields(**changes: bytes | None) -> bytes:
    fields = dict(encode_txt("w", KEY, TAG))
    for key, value in changes.items():
        if value is None:
            fields.pop(key.encode())
        else:
            fields[key.encode()] = value
    return txt_bytes(k + b"=" + v for k, v in fields.items())


@pytest.mark.parametrize(
    "text",
    [
        _fields(v=b"2"),  # another protocol version
        _fields(v=None),
        _fields(c=b"f" * 32),  # another cluster
        _fields(c=None),
        _fields(k=KEY.hex()[:-2].encode()),  # 31 bytes
        _fields(k=KEY.hex().encode() + b"00"),  # 33 bytes
        _fields(k=KEY.hex().upper().encode()),
        _fields(k=b"z" * 64),
        _fields(k=None),
        _fields(k=OWN.hex().encode()),  # our own record
        _fields(n=None),
        _fields(n=b""),
        _fields(n=b"\xff\xfe"),  # not UTF-8
        _fields(n=b"bell\x07"),
        _fields(n=b"x" * 201),
        txt_bytes([b"v=1", b"c=" + TAG.encode(), b"k=" + KEY.hex().encode(), b"n=a", b"n=b"]),
        b"\x40truncated",
        b"",
    ],
)
def test_records_with_bad_txt_are_ignored(text: bytes) -> None:
    assert parse(text) is None


@pytest.mark.parametrize("port", [0, -1, 65536, None, True, "7400", 7400.0])
def test_records_with_bad_ports_are_ignored(port: object) -> None:
    assert parse(good_txt(), port=port) is None


def test_unusable_addresses_are_dropped_and_the_rest_capped() -> None:
    garbage = [
        "not an ip",
        "224.0.0.251",
        "0.0.0.0",
        "::",
        "255.255.255.255",
        "fe80::1",
        "ff02::fb",
    ]
    assert parse(good_txt(), addresses=garbage) is None
    assert parse(good_txt(), addresses=[]) is None
    found = parse(good_txt(), addresses=[*garbage, "10.0.0.7", "10.0.0.7", "2001:db8::1"])
    assert found is not None
    assert found.addresses == ("10.0.0.7:7400", "[2001:db8::1]:7400")
    many = parse(good_txt(), addresses=[f"10.0.0.{i}" for i in range(1, 50)])
    assert many is not None
    assert len(many.addresses) == _mdns.MAX_ADDRESSES


def test_non_bytes_records_are_ignored() -> None:
    assert parse(None) is None
    assert parse("v=1") is None
    assert parse(good_txt(), addresses=[None, 3, b"\x7f\x00\x00\x01"]) is None


@given(st.binary(max_size=600), st.one_of(st.none(), st.integers()), st.lists(st.text()))
def test_no_record_makes_the_parser_raise(text: bytes, port: int | None, addrs: list[str]) -> None:
    parse(text, port, addrs)
    parse(good_txt() + text, port, addrs)


# --- the table of candidates -----------------------------------------------------------------


def ann(key: bytes, *addresses: str, name: str = "n") -> Announcement:
    return Announcement(name, key, addresses)


def test_candidates_report_changes_only() -> None:
    table = Candidates()
    a, b = b"a" * 32, b"b" * 32
    assert table.update("x", ann(a, "1.1.1.1:1")) == [Found("n", a, ("1.1.1.1:1",))]
    assert table.update("x", ann(a, "1.1.1.1:1")) == []
    assert table.update("x", ann(a, "2.2.2.2:2")) == [Found("n", a, ("2.2.2.2:2",))]
    # The record now claims another key: the old one is lost, the new one found.
    assert table.update("x", ann(b, "2.2.2.2:2")) == [Lost(a), Found("n", b, ("2.2.2.2:2",))]
    assert table.update("x", None) == [Lost(b)]
    assert table.update("x", None) == []
    assert len(table) == 0


def test_a_key_claimed_twice_keeps_the_first_addresses_and_goes_with_the_last_record() -> None:
    table = Candidates()
    a = b"a" * 32
    table.update("real", ann(a, "10.0.0.1:1"))
    # A forger repeats the real node's key with its own address: both are dialled (with the
    # real key expected, so only the real node can answer), the real address first.
    assert table.update("forged", ann(a, "6.6.6.6:6")) == [
        Found("n", a, ("10.0.0.1:1", "6.6.6.6:6"))
    ]
    assert table.update("forged", None) == [Found("n", a, ("10.0.0.1:1",))]
    table.update("forged", ann(a, "6.6.6.6:6"))
    assert table.update("real", None) == [Found("n", a, ("6.6.6.6:6",))]
    assert table.update("forged", None) == [Lost(a)]


def test_candidates_are_bounded() -> None:
    table = Candidates(limit=1024)
    reported = [table.update(f"i{n}", ann(os.urandom(32), "1.1.1.1:1")) for n in range(2000)]
    assert len(table) == 1024
    assert sum(map(len, reported)) == 1024
    assert table.update("late", ann(KEY, "1.1.1.1:1")) == []  # full: ignored
    table.update("i0", None)
    assert table.update("late", ann(KEY, "1.1.1.1:1")) == [Found("n", KEY, ("1.1.1.1:1",))]


# --- where mDNS runs and what is advertised ---------------------------------------------------


def test_advertised_addresses_follow_the_listener() -> None:
    local = ["127.0.0.1", "192.0.2.2", "fe80::1", "2001:db8::2", "::1", "10.1.1.1"]
    assert advertised_addresses("127.0.0.1", local) == (["127.0.0.1"], ["127.0.0.1"])
    assert advertised_addresses("::1", local) == (["127.0.0.1"], ["::1"])
    assert advertised_addresses("10.1.1.1", local) == (["10.1.1.1"], ["10.1.1.1"])
    assert advertised_addresses("2001:db8::2", local) == (None, ["2001:db8::2"])
    assert advertised_addresses("0.0.0.0", local) == (None, ["192.0.2.2", "10.1.1.1"])
    assert advertised_addresses("::", local) == (None, ["192.0.2.2", "2001:db8::2", "10.1.1.1"])
    assert advertised_addresses("0.0.0.0", ["127.0.0.1"]) == (None, ["127.0.0.1"])


# --- helpers for the tests on the network ----------------------------------------------------


class Recorder:
    """on_found / on_lost for a bare Discovery: what was said, and in which thread."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.found: list[tuple[str, bytes, list[str]]] = []
        self.lost: list[bytes] = []
        self.threads: set[int] = set()
        self._fail_first = fail_first

    def on_found(self, name: str, key: bytes, addresses: list[str]) -> None:
        self.threads.add(threading.get_ident())
        self.found.append((name, key, addresses))
        if self._fail_first:
            self._fail_first = False
            raise RuntimeError("a buggy callback")

    def on_lost(self, key: bytes) -> None:
        self.threads.add(threading.get_ident())
        self.lost.append(key)

    def found_keys(self) -> set[bytes]:
        return {key for _, key, _ in self.found}


def discovery(
    ck: qchan.ClusterKey, name: str, recorder: Recorder, port: int = 7400, **kwargs: Any
) -> Discovery:
    return Discovery(
        name=name,
        public_key=os.urandom(32),
        cluster_key=ck,
        address=f"127.0.0.1:{port}",
        on_found=recorder.on_found,
        on_lost=recorder.on_lost,
        **kwargs,
    )


@asynccontextmanager
async def running(*discoveries: Discovery) -> AsyncIterator[None]:
    try:
        for d in discoveries:
            await d.start()
        yield
    finally:
        for d in discoveries:
            await d.stop()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def forged(
    instance: str,
    *,
    key: bytes,
    tag: str,
    address: str,
    name: str = "forged",
    ttl: int = 120,
    text: bytes | dict[bytes, bytes] | None = None,
) -> AsyncServiceInfo:
    host, _, port = address.rpartition(":")
    return AsyncServiceInfo(
        SERVICE_TYPE,
        instance if instance.endswith(SERVICE_TYPE) else f"{instance}.{SERVICE_TYPE}",
        port=int(port),
        properties=text if text is not None else encode_txt(name, key, tag),
        server=f"{instance.partition('.')[0]}.local.",
        parsed_addresses=[host],
        host_ttl=ttl,
        other_ttl=ttl,
    )


class Forger:
    """Plain zeroconf on loopback, in its own thread, announcing whatever a test makes up."""

    def __init__(self) -> None:
        self.zc: Zeroconf | None = None

    async def __aenter__(self) -> Forger:
        self.zc = await anyio.to_thread.run_sync(lambda: Zeroconf(["127.0.0.1"]))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.zc is not None
        await anyio.to_thread.run_sync(self.zc.close)  # goodbye records for everything

    async def _run(self, coro: Any) -> Any:
        assert self.zc is not None
        assert self.zc.loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self.zc.loop)
        return await anyio.to_thread.run_sync(future.result, 30)

    async def publish(self, infos: list[AsyncServiceInfo]) -> None:
        async def publish() -> None:
            assert self.zc is not None
            for n, info in enumerate(infos, 1):
                await self.zc.async_register_service(info, cooperating_responders=True)
                if n % 100 == 0:
                    await asyncio.sleep(0.02)  # in bursts, as a flooder would

        await self._run(publish())

    async def update(self, info: AsyncServiceInfo) -> None:
        async def update() -> None:
            assert self.zc is not None
            await self.zc.async_update_service(info)

        await self._run(update())


# --- real nodes on loopback ------------------------------------------------------------------


async def test_three_nodes_find_each_other_on_loopback() -> None:
    ck = qchan.ClusterKey.generate()
    async with (
        make_node(ck, "d-one", discovery=True) as one,
        make_node(ck, "d-two", discovery=True) as two,
        make_node(ck, "d-three", discovery=True) as three,
    ):
        nodes = [one, two, three]
        start = time.monotonic()
        await wait_for(
            lambda: all(sum(p.connected for p in n.peers()) == 2 for n in nodes), within=5.0
        )
        took = time.monotonic() - start
        for node in nodes:
            names = {p.name for p in node.peers() if p.connected}
            assert names == {n.name for n in nodes} - {node.name}, (node.name, took)
        jobs: qchan.Channel[str] = qchan.Channel(1)
        one.register("jobs", jobs)
        handle = await three.lookup("jobs", timeout=5.0)
        await handle.send("found you")
        assert await jobs.receive() == "found you"


async def test_other_clusters_are_never_dialled_and_untrusted_nodes_never_admitted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    announced: dict[str, set[bytes]] = defaultdict(set)  # node -> keys discovery gave it
    original = Node._discovered

    def spy(self: Node, name: str, key: bytes, addresses: list[str]) -> None:
        announced[self.name].add(key)
        original(self, name, key, addresses)

    monkeypatch.setattr(Node, "_discovered", spy)
    ck, other = qchan.ClusterKey.generate(), qchan.ClusterKey.generate()
    b_key = qchan.NodeKey.generate()
    async with (
        make_node(ck, "t-a", discovery=True, trusted=[b_key.public]) as a,
        make_node(ck, "t-b", key=b_key, discovery=True) as b,
        make_node(ck, "t-c", discovery=True) as c,  # our cluster, but a does not trust it
        make_node(other, "t-e", discovery=True) as e,  # another cluster
    ):
        await wait_for(lambda: connected_to(a, b) and connected_to(b, c), within=5.0)
        await anyio.sleep(0.5)  # time for any wrong dial to happen
        assert {p.name for p in a.peers() if p.connected} == {"t-b"}
        assert not connected_to(c, a)
        assert c.public_key in announced["t-a"]  # c was announced to a, and not admitted
        for node in (a, b, c):
            assert e.public_key not in announced[node.name]
            assert not connected_to(node, e)
        assert announced["t-e"] == set()
        assert e.peers() == []


# --- goodbye and expiry ----------------------------------------------------------------------


async def test_a_stopped_node_is_lost_at_once_and_callbacks_run_in_the_loop_thread() -> None:
    ck = qchan.ClusterKey.generate()
    seen, gone = Recorder(fail_first=True), Recorder()
    watcher, leaver = discovery(ck, "watcher", seen), discovery(ck, "leaver", gone, port=7002)
    async with running(watcher):
        await leaver.start()
        try:
            await wait_for(lambda: leaver.public_key in seen.found_keys(), within=5.0)
            await wait_for(lambda: watcher.public_key in gone.found_keys(), within=5.0)
        finally:
            await leaver.stop()
        await leaver.stop()  # idempotent
        stopped = time.monotonic()
        await wait_for(lambda: leaver.public_key in seen.lost, within=2.0)
        assert time.monotonic() - stopped < 1.5
        assert seen.found[0] == ("leaver", leaver.public_key, ["127.0.0.1:7002"])
        assert leaver.addresses == ["127.0.0.1:7002"]
        assert seen.threads == gone.threads == {threading.get_ident()}


ADVERTISER = """
import sys, anyio
from qchan import ClusterKey
from qchan.cluster.discovery import Discovery

async def main():
    discovery = Discovery(
        name="doomed", public_key=bytes.fromhex(sys.argv[2]), address="127.0.0.1:7003",
        cluster_key=ClusterKey.from_bytes(bytes.fromhex(sys.argv[1])),
        on_found=lambda *args: None, on_lost=lambda key: None, ttl=2,
    )
    await discovery.start()
    await anyio.sleep_forever()

anyio.run(main)
"""


async def test_a_silent_node_expires_and_a_live_one_does_not() -> None:
    ck, key = qchan.ClusterKey.generate(), os.urandom(32)
    seen = Recorder()
    argv = [sys.executable, "-c", ADVERTISER, bytes(ck).hex(), key.hex()]
    async with await anyio.open_process(argv, stdout=None, stderr=None) as advertiser:
        try:
            async with running(discovery(ck, "watcher", seen)):
                await wait_for(lambda: key in seen.found_keys(), within=5.0)
                await anyio.sleep(2.2)  # past its 2 s TTL: it answers our refresh queries
                assert seen.lost == []
                advertiser.kill()  # no goodbye
                killed = time.monotonic()
                await wait_for(lambda: key in seen.lost, within=5.0)
                assert time.monotonic() - killed <= 3.5
        finally:
            if advertiser.returncode is None:
                advertiser.kill()


async def test_changed_addresses_are_reported_again() -> None:
    ck = qchan.ClusterKey.generate()
    seen, key = Recorder(), os.urandom(32)
    record = forged("mover", key=key, tag=cluster_tag(ck), address="127.0.0.7:7400", name="m")
    async with running(discovery(ck, "watcher", seen)), Forger() as forger:
        await forger.publish([record])
        await wait_for(lambda: key in seen.found_keys(), within=5.0)
        await anyio.sleep(1.1)  # older than a second: the new record replaces it (RFC 6762 10.2)
        record.addresses = [socket.inet_aton("127.0.0.8")]
        record.port = 7500
        await forger.update(record)
        await wait_for(lambda: seen.found[-1][2] == ["127.0.0.8:7500"], within=5.0)
        assert seen.lost == []


async def test_start_and_stop_are_well_behaved() -> None:
    ck = qchan.ClusterKey.generate()
    d = discovery(ck, "solo", Recorder())
    await d.stop()  # before start: nothing to do
    d = Discovery(
        name="unix",
        public_key=os.urandom(32),
        cluster_key=ck,
        address="unix:/tmp/qchan-discovery-test.sock",  # browsed from, not advertised
        on_found=lambda *args: None,
        on_lost=lambda key: None,
    )
    await d.start()
    with pytest.raises(RuntimeError):
        await d.start()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await d.stop()  # shielded: completes although cancelled
    assert d._zc is not None
    assert d._zc.loop is not None
    assert d._zc.loop.is_closed()
    with pytest.raises(ValueError, match="32 bytes"):
        Discovery(
            name="x",
            public_key=b"short",
            cluster_key=ck,
            address="127.0.0.1:1",
            on_found=lambda *args: None,
            on_lost=lambda key: None,
        )


# --- discovery poisoning ---------------------------------------------------------------------


async def test_forged_records_admit_nobody_and_disturb_nothing() -> None:
    ck = qchan.ClusterKey.generate()
    tag = cluster_tag(ck)
    async with (
        make_node(ck, "p-a", discovery=True) as a,
        make_node(ck, "p-b", discovery=True) as b,
    ):
        await wait_for(lambda: connected_to(a, b) and connected_to(b, a), within=5.0)
        inbox: qchan.Channel[int] = qchan.Channel(0)
        b.register("inbox", inbox)
        handle = await a.lookup("inbox@p-b")
        real = {a.public_key, b.public_key}
        delivered: list[float] = []
        admitted: set[bytes] = set()  # every key ever connected to a or b
        peak = {"candidates": 0, "peers": 0}
        assert a._discovery is not None

        def watch() -> None:
            for node in (a, b):
                admitted.update(p.public_key for p in node.peers() if p.connected)
            peak["candidates"] = max(peak["candidates"], a._discovery.candidates)
            peak["peers"] = max(peak["peers"], len(a._peers))

        async def traffic() -> None:
            n = 0
            while True:
                await handle.send(n)
                watch()
                await anyio.sleep(0.01)
                n += 1

        async def receive() -> None:
            async for _ in inbox:
                delivered.append(time.monotonic())

        def progressing(since: float) -> bool:
            return any(t > since for t in delivered)

        async with anyio.create_task_group() as traffic_tasks:
            traffic_tasks.start_soon(traffic)
            traffic_tasks.start_soon(receive)
            async with Forger() as forger:
                b_address = b.address
                junk = closed_port()
                b_instance = b._discovery.instance
                await forger.publish(
                    [
                        # a real node's address, another key
                        forged("p1", key=os.urandom(32), tag=tag, address=b_address),
                        # a real node's instance name and node name, another key
                        forged(b_instance, key=os.urandom(32), tag=tag, address=b_address,
                               name="p-b"),
                        # a real node's name, another key, a closed port
                        forged("p3", key=os.urandom(32), tag=tag, address=f"127.0.0.1:{junk}",
                               name="p-b"),
                        # garbage
                        forged("g1", key=KEY, tag=tag, address=b_address, text=b"\x05k="),
                        forged("g2", key=KEY, tag=tag, address=b_address,
                               text={b"v": b"1", b"c": tag.encode(), b"k": b"00" * 31, b"n": b"x"}),
                        forged("g3", key=KEY, tag=tag, address="127.0.0.1:0"),
                        forged("g4", key=KEY, tag=tag, address="224.0.0.251:7400"),
                        forged("g5", key=KEY, tag="f" * 32, address=b_address),
                    ]
                )  # fmt: skip
                since = time.monotonic()
                await anyio.sleep(0.5)
                assert progressing(since)
                # A flood: 2,000 records with random keys, at closed ports and at b.
                flood = [
                    forged(
                        f"flood{n}",
                        key=os.urandom(32),
                        tag=tag,
                        address=f"127.0.0.1:{junk}" if n % 2 else b_address,
                        ttl=2,
                    )
                    for n in range(2000)
                ]
                await forger.publish(flood)
                for _ in range(2):
                    since = time.monotonic()
                    await anyio.sleep(0.5)
                    assert progressing(since), "values stopped flowing during the flood"
                    assert connected_to(a, b)
                    assert connected_to(b, a)
            # The forger is gone (goodbyes, and 2 s TTLs for what missed them): the table
            # empties, and a new node is found as usual.
            await wait_for(lambda: a._discovery.candidates == 1, within=8.0)
            async with make_node(ck, "p-c", discovery=True) as c:
                await wait_for(lambda: connected_to(a, c) and connected_to(b, c), within=5.0)
                real.add(c.public_key)
                since = time.monotonic()
                await anyio.sleep(0.2)
                assert progressing(since)
            traffic_tasks.cancel_scope.cancel()
        watch()
        assert admitted <= real
        assert 500 <= peak["candidates"] <= _mdns.MAX_CANDIDATES
        assert peak["peers"] <= 1024 + 2
        assert connected_to(a, b)
        assert connected_to(b, a)
