"""The comparison side of ``benchmarks/remote.py``: pyzmq and Pyro5, each run its normal way.

Every function here is a role for :mod:`_procs` (``role(ctl, params)``, run in its own process):
blocking sockets for pyzmq, a threaded daemon and a proxy for Pyro5, the small int payload
packed with msgpack (as qchan sends it) and unpacked by the side that receives it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgpack
import zmq
from _procs import Ctl

__all__ = [
    "pyro_client",
    "pyro_server",
    "zmq_dealer_client",
    "zmq_pull_server",
    "zmq_push_client",
    "zmq_rep_server",
    "zmq_req_client",
    "zmq_router_server",
]

_POLL_MS = 200  # how often an idle server looks for the parent's "stop"
_CHUNK = 64  # round trips between two looks at the clock

packb = msgpack.packb
unpackb = msgpack.unpackb


def _bound(sock: zmq.Socket[bytes]) -> str:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, _POLL_MS)
    sock.bind("tcp://127.0.0.1:*")
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(endpoint, bytes)
    return endpoint.decode()


def _connected(context: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str) -> Any:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


# --- REQ/REP: one request in flight ------------------------------------------------------------


def zmq_rep_server(ctl: Ctl, p: dict[str, Any]) -> None:
    """Answer every request with a one-byte ack, until the parent says stop."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.REP)
    ctl.send("ready", endpoint=_bound(sock))
    recv, send = sock.recv, sock.send
    while True:
        try:
            message = recv()
        except zmq.Again:
            if ctl.stop_requested():
                break
            continue
        unpackb(message)
        send(b"\x00")
    sock.close()
    context.term()


def zmq_req_client(ctl: Ctl, p: dict[str, Any]) -> None:
    """Round trips/s (``mode`` "rate") or per-request latencies at a paced rate ("latency")."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _connected(context, zmq.REQ, p["endpoint"])
    sock.setsockopt(zmq.RCVTIMEO, int(p["timeout"] * 1000))
    recv, send = sock.recv, sock.send

    def call(i: int) -> None:
        send(packb(i))
        recv()

    if p["mode"] == "rate":
        rate = _rate_loop(call, p["warmup"], p["duration"])
        ctl.send("result", rate=rate)
    else:
        latencies, achieved = _paced(call, p["rate"], p["warmup"], p["latency_duration"])
        ctl.send("result", latencies=latencies, achieved=achieved)
    ctl.expect("stop", p["timeout"])
    sock.close()
    context.term()


def _rate_loop(call: Any, warmup: float, duration: float) -> float:
    i = 0
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        for _ in range(_CHUNK):
            call(i)
            i += 1
    count = 0
    start = time.perf_counter()
    end = start + duration
    while True:
        for _ in range(_CHUNK):
            call(i)
            i += 1
        count += _CHUNK
        now = time.perf_counter()
        if now >= end:
            return count / (now - start)


def _paced(call: Any, rate: float, warmup: float, duration: float) -> tuple[list[int], float]:
    period = 1.0 / rate
    warm, measured = int(rate * warmup), int(rate * duration)
    latencies: list[int] = []
    clock, clock_ns, sleep = time.perf_counter, time.perf_counter_ns, time.sleep
    due = clock()
    started = 0.0
    for k in range(warm + measured):
        if k == warm:
            started = clock()
        delay = due - clock()
        if delay > 0:
            sleep(delay)
        t0 = clock_ns()
        call(k)
        if k >= warm:
            latencies.append(clock_ns() - t0)
        due += period
    return latencies, measured / (clock() - started)


# --- DEALER/ROUTER: many requests in flight, each acknowledged ---------------------------------


def zmq_router_server(ctl: Ctl, p: dict[str, Any]) -> None:
    """Acknowledge every request with a small reply to its sender."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    ctl.send("ready", endpoint=_bound(sock))
    recv, send = sock.recv_multipart, sock.send_multipart
    ack = b"\x00"
    while True:
        try:
            identity, message = recv()
        except zmq.Again:
            if ctl.stop_requested():
                break
            continue
        unpackb(message)
        send([identity, ack])
    sock.close()
    context.term()


def zmq_dealer_client(ctl: Ctl, p: dict[str, Any]) -> None:
    """Keep ``inflight`` requests outstanding; acknowledged requests/s."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _connected(context, zmq.DEALER, p["endpoint"])
    sock.setsockopt(zmq.RCVTIMEO, int(p["timeout"] * 1000))
    recv, send = sock.recv, sock.send
    i = 0
    for _ in range(p["inflight"]):
        send(packb(i))
        i += 1

    def call(_: int) -> None:
        nonlocal i
        recv()
        send(packb(i))
        i += 1

    rate = _rate_loop(call, p["warmup"], p["duration"])
    ctl.send("result", rate=rate)
    ctl.expect("stop", p["timeout"])
    sock.close()
    context.term()


# --- PUSH/PULL: a stream, unacknowledged -------------------------------------------------------


def zmq_pull_server(ctl: Ctl, p: dict[str, Any]) -> None:
    """Receive ``warm_count`` values, then time values up to the empty sentinel."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.PULL)
    ctl.send("ready", endpoint=_bound(sock))
    sock.setsockopt(zmq.RCVTIMEO, int(p["timeout"] * 1000))
    recv = sock.recv
    for _ in range(p["warm_count"]):
        unpackb(recv())
    count = 0
    start = time.perf_counter()
    while True:
        message = recv()
        if not message:
            break
        unpackb(message)
        count += 1
    rate = count / (time.perf_counter() - start)
    ctl.send("result", rate=rate)
    ctl.expect("stop", p["timeout"])
    sock.close()
    context.term()


def zmq_push_client(ctl: Ctl, p: dict[str, Any]) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _connected(context, zmq.PUSH, p["endpoint"])
    sock.setsockopt(zmq.SNDTIMEO, int(p["timeout"] * 1000))
    send = sock.send
    total = p["warm_count"] + p["count"]
    start = time.perf_counter()
    for i in range(total):
        send(packb(i))
    send(b"")
    ctl.send("result", send_rate=total / (time.perf_counter() - start))
    ctl.expect("stop", p["timeout"])
    sock.close()
    context.term()


# --- Pyro5: remote method calls ----------------------------------------------------------------


def pyro_server(ctl: Ctl, p: dict[str, Any]) -> None:
    """A daemon (Pyro5's default threaded server) exposing one trivial method."""
    import Pyro5.api

    @Pyro5.api.expose
    class Pinger:
        def ping(self, value: int) -> None:
            return None

    daemon = Pyro5.api.Daemon(host="127.0.0.1")
    uri = daemon.register(Pinger(), "ping")

    def stopper() -> None:
        try:
            ctl.expect("stop", p["child_limit"])
        finally:
            daemon.shutdown()

    ctl.send("ready", uri=str(uri))
    threading.Thread(target=stopper, daemon=True).start()
    daemon.requestLoop()
    daemon.close()


def pyro_client(ctl: Ctl, p: dict[str, Any]) -> None:
    import Pyro5.api

    with Pyro5.api.Proxy(p["uri"]) as proxy:
        proxy._pyroBind()
        ping = proxy.ping
        rate = _rate_loop(ping, p["warmup"], p["duration"])
    ctl.send("result", rate=rate)
    ctl.expect("stop", p["timeout"])
