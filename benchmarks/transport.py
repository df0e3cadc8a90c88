"""Encrypted qchan links against plain anyio TCP, between two processes over loopback.

    .venv/bin/python benchmarks/transport.py [--backends asyncio,uvloop,trio]
        [--frames N] [--trips N] [--connects N] [--rounds R]

For each event loop, a child process serves both a qchan listener and a plain anyio TCP
listener; this process dials both and measures, alternately, the same exchanges:

- pipelined: 100-byte frames one way (PUSH), the receiver acknowledging every 1024 frames and
  the sender keeping at most 16384 unacknowledged: frames/s;
- round trips: a 100-byte request frame (SEND) answered by an ACK frame, 1 and 64 in flight:
  requests/s;
- connect: a full TCP connect plus Noise handshake (qchan) or a bare TCP connect (plain), in
  ms, median of N.

"plain" is what a small unencrypted anyio program would do: the same 2-byte length framing
and msgpack frames (no encryption, no frame validation, no heartbeats), one task reading
256 KiB at a time and writing its replies once per read. Each figure is the best of R rounds.
Targets (the transport issue): encrypted pipelined >= 150k frames/s and >= 0.7x plain; a full
handshake <= 2 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import anyio.abc
import msgpack

from qchan.crypto import ClusterKey, NodeKey
from qchan.protocol import Frame, Hello, Kind
from qchan.transport import Link, Transport

ACK_EVERY: Final = 1024
WINDOW: Final = 16 * ACK_EVERY
VALUE: Final = b"v" * 90  # a PUSH or SEND frame of about 100 bytes
READ_SIZE: Final = 256 * 1024
HELLO: Final = Hello(name="bench", incarnation=b"bench-01")
# Plain ints: an IntEnum member lookup and comparison per frame would cost more than the
# plain side's whole decoding, and this loop runs on both sides alike.
SEND: Final = int(Kind.SEND)
PUSH: Final = int(Kind.PUSH)
ACK: Final = int(Kind.ACK)


# --- the serving side (child process) ------------------------------------------------------


def serve_frames(send: Callable[[Frame], None]) -> Callable[[list[Frame]], None]:
    """What the server does with the frames of one read: ACK requests, count PUSHes."""
    received = 0

    def on_frames(frames: list[Frame]) -> None:
        nonlocal received
        pushed = 0
        for frame in frames:
            kind = frame[0]
            if kind == PUSH:
                pushed += 1
            elif kind == SEND:
                send([ACK, frame[1]])
        if pushed:
            before, received = received, received + pushed
            if received // ACK_EVERY != before // ACK_EVERY:
                send([ACK, received])

    return on_frames


class PlainPeer:
    """Unencrypted frames over an anyio stream: 2-byte length, msgpack frames, no checks."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self._inbox = bytearray()
        self._out = bytearray()
        self._message = bytearray()
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    def send(self, frame: Frame) -> None:
        encoded = self._packer.pack(frame)
        if len(self._message) + len(encoded) > 65535:
            self._seal()
        self._message += encoded

    def _seal(self) -> None:
        self._out += len(self._message).to_bytes(2, "big")
        self._out += self._message
        self._message.clear()

    async def flush(self) -> None:
        if self._message:
            self._seal()
        if self._out:
            data = bytes(self._out)
            self._out.clear()
            await self.stream.send(data)

    async def run(self, on_frames: Callable[[list[Frame]], None]) -> None:
        """Read until EOF: decode every whole message, hand its frames over, flush replies."""
        inbox = self._inbox
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=2**20)
        try:
            while True:
                inbox += await self.stream.receive(READ_SIZE)
                offset = 0
                while len(inbox) - offset >= 2:
                    end = offset + 2 + int.from_bytes(inbox[offset : offset + 2], "big")
                    if end > len(inbox):
                        break
                    unpacker.feed(inbox[offset + 2 : end])
                    offset = end
                del inbox[:offset]
                frames: list[Frame] = list(unpacker)
                if frames:
                    on_frames(frames)
                await self.flush()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


async def serve(cluster_key: ClusterKey) -> None:
    async with Transport() as transport, anyio.create_task_group() as tasks:

        def on_link(link: Link) -> None:
            link.start(serve_frames(link.send), lambda error: None)

        listener = await transport.listen(
            "127.0.0.1:0", key=NodeKey.generate(), cluster_key=cluster_key, hello=HELLO,
            on_link=on_link,
        )  # fmt: skip
        plain = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = plain.extra(anyio.abc.SocketAttribute.local_port)

        async def plain_handler(stream: anyio.abc.SocketStream) -> None:
            peer = PlainPeer(stream)
            async with stream:
                await peer.run(serve_frames(peer.send))

        tasks.start_soon(plain.serve, plain_handler)
        print(listener.address, f"127.0.0.1:{port}", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin
        tasks.cancel_scope.cancel()


# --- the measuring side ------------------------------------------------------------------------


class Exchange:
    """The client's half of one measurement, driven by the frames that come back."""

    def __init__(self, send: Callable[[Frame], None]) -> None:
        self.send = send
        self.done = anyio.Event()
        self.count = 0
        self.sent = 0
        self.answered = 0

    # pipelined: keep WINDOW frames unacknowledged
    def start_pipelined(self, count: int) -> Callable[[list[Frame]], None]:
        self.count = count

        def on_frames(frames: list[Frame]) -> None:
            self.answered = max(frame[1] for frame in frames)
            if self.answered >= count:
                self.done.set()
            else:
                self._pump()

        return on_frames

    def _pump(self) -> None:
        limit = min(self.count, self.answered + WINDOW)
        send, sent = self.send, self.sent
        while sent < limit:
            send([PUSH, 1, sent, VALUE])
            sent += 1
        self.sent = sent

    # round trips: `in_flight` requests outstanding at all times
    def start_trips(self, count: int) -> Callable[[list[Frame]], None]:
        self.count = count

        def on_frames(frames: list[Frame]) -> None:
            self.answered += len(frames)
            send = self.send
            for _ in frames:
                if self.sent < count:
                    send([SEND, self.sent, 1, 0, VALUE])
                    self.sent += 1
            if self.answered >= count:
                self.done.set()

        return on_frames

    def first_requests(self, in_flight: int) -> None:
        for _ in range(in_flight):
            self.send([SEND, self.sent, 1, 0, VALUE])
            self.sent += 1


async def measure_qchan(
    transport: Transport, address: str, cluster_key: ClusterKey, kind: str, count: int, depth: int
) -> float:
    link = await transport.connect(
        address, key=NodeKey.generate(), cluster_key=cluster_key, hello=HELLO
    )
    exchange = Exchange(link.send)
    if kind == "pipelined":
        link.start(exchange.start_pipelined(count), lambda error: None)
        start = time.perf_counter()
        exchange._pump()
    else:
        link.start(exchange.start_trips(count), lambda error: None)
        start = time.perf_counter()
        exchange.first_requests(depth)
    await exchange.done.wait()
    elapsed = time.perf_counter() - start
    link.close()
    await link.wait_closed()
    return count / elapsed


async def measure_plain(address: str, kind: str, count: int, depth: int) -> float:
    host, _, port = address.rpartition(":")
    async with await anyio.connect_tcp(host, int(port)) as stream, anyio.create_task_group() as tg:
        peer = PlainPeer(stream)
        exchange = Exchange(peer.send)
        if kind == "pipelined":
            on_frames = exchange.start_pipelined(count)
            start = time.perf_counter()
            exchange._pump()
        else:
            on_frames = exchange.start_trips(count)
            start = time.perf_counter()
            exchange.first_requests(depth)
        await peer.flush()
        tg.start_soon(peer.run, on_frames)
        await exchange.done.wait()
        elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    return count / elapsed


async def connect_times(
    transport: Transport, qchan_address: str, plain_address: str, cluster_key: ClusterKey, n: int
) -> tuple[float, float]:
    key = NodeKey.generate()
    qchan_ms, plain_ms = [], []
    host, _, port = plain_address.rpartition(":")
    for _ in range(n):
        start = time.perf_counter()
        link = await transport.connect(qchan_address, key=key, cluster_key=cluster_key, hello=HELLO)
        qchan_ms.append((time.perf_counter() - start) * 1000)
        link.close()
        await link.wait_closed()
        start = time.perf_counter()
        stream = await anyio.connect_tcp(host, int(port))
        plain_ms.append((time.perf_counter() - start) * 1000)
        await stream.aclose()
    return statistics.median(qchan_ms), statistics.median(plain_ms)


Row = tuple[str, str, float, float]


async def client(addresses: list[str], cluster_key: ClusterKey, args: Any) -> list[Row]:
    qchan_address, plain_address = addresses
    cases = [
        ("pipelined 100 B frames/s", "pipelined", args.frames, 0),
        ("round trips/s, 1 in flight", "trips", args.trips, 1),
        ("round trips/s, 64 in flight", "trips", args.frames // 2, 64),
    ]
    rows: list[Row] = []
    async with Transport() as transport:
        for label, kind, count, depth in cases:
            best_qchan = best_plain = 0.0
            for _ in range(args.rounds):
                best_qchan = max(
                    best_qchan,
                    await measure_qchan(transport, qchan_address, cluster_key, kind, count, depth),
                )
                best_plain = max(best_plain, await measure_plain(plain_address, kind, count, depth))
            rows.append(("", label, best_qchan, best_plain))
        qchan_ms, plain_ms = await connect_times(
            transport, qchan_address, plain_address, cluster_key, args.connects
        )
        rows.append(("", f"connect ms, median of {args.connects}", qchan_ms, plain_ms))
    return rows


def run_backend(backend: str, args: Any) -> list[Row]:
    cluster_key = ClusterKey.generate()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", backend, bytes(cluster_key).hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    try:
        addresses = child.stdout.readline().split()
        rows = run(backend, client, addresses, cluster_key, args)
    finally:
        child.stdin.close()
        child.wait(timeout=10)
        child.stdout.close()
    return [(backend, label, qchan, plain) for _, label, qchan, plain in rows]


def run(backend: str, function: Callable[..., Awaitable[Any]], *arguments: Any) -> Any:
    if backend == "uvloop":
        return anyio.run(function, *arguments, backend_options={"use_uvloop": True})
    return anyio.run(function, *arguments, backend=backend)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        run(sys.argv[2], serve, ClusterKey.from_bytes(bytes.fromhex(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="asyncio,uvloop,trio")
    parser.add_argument("--frames", type=int, default=500_000, help="pipelined frames")
    parser.add_argument("--trips", type=int, default=20_000, help="round trips, 1 in flight")
    parser.add_argument("--connects", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.frames -= args.frames % ACK_EVERY
    print(f"{'backend':8} {'what':32} {'qchan':>10} {'plain':>10} {'ratio':>6}")
    for backend in args.backends.split(","):
        for name, label, qchan, plain in run_backend(backend, args):
            if label.startswith("connect"):
                print(f"{name:8} {label:32} {qchan:10.2f} {plain:10.2f} {qchan / plain:6.1f}")
            else:
                print(f"{name:8} {label:32} {qchan:10,.0f} {plain:10,.0f} {qchan / plain:6.2f}")
    print(f"(pid {os.getpid()}; plain = unencrypted anyio TCP; ratio = qchan / plain)")


if __name__ == "__main__":
    main()
