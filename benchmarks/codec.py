"""Codec cost per value: qchan's encode+decode against bare msgpack packb+unpackb.

For each value shape, one encode plus one decode is timed (best of several rounds, each a
loop of N calls), next to the same round trip written by hand with msgpack's ``packb`` +
``unpackb`` (a dataclass packed as the dict of its fields and rebuilt with ``Job(**fields)``,
a channel as its reference bytes already in place). Both columns run in the same process,
alternately, so machine noise hits both alike.

    .venv/bin/python benchmarks/codec.py [--count N] [--rounds R]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import msgpack

import qchan
from qchan._codec import Codec


@dataclasses.dataclass
class Job:
    id: int
    name: str
    args: list[int]
    priority: float
    done: bool


REF = b"\x00" * 40  # about the size of a real reference: a node key and a channel id


def shapes(codec: Codec) -> list[tuple[str, Any, Callable[[], object]]]:
    """(label, value for qchan, the same round trip done by hand with bare msgpack)."""
    packb, unpackb = msgpack.packb, msgpack.unpackb
    codec.register_type(Job, name="bench.Job")
    job = Job(17, "resize", [1, 2, 3], 0.5, False)
    small = {"id": 17, "op": "get", "key": "k1"}
    text = "x" * 100
    ints = list(range(100))
    channel: qchan.Channel[int] = qchan.Channel()
    with_ref = {"job": 17, "reply": REF}
    return [
        ("int", 12345, lambda: unpackb(packb(12345))),
        ("str, 100 chars", text, lambda: unpackb(packb(text))),
        ("small dict", small, lambda: unpackb(packb(small))),
        # by hand: the fields as a map, and the object rebuilt from it
        ("dataclass, 5 fields", job, lambda: Job(**unpackb(packb(vars(job))))),
        ("list of 100 ints", ints, lambda: unpackb(packb(ints))),
        # by hand: the reference bytes in place, no hooks
        ("dict holding a channel", {"job": 17, "reply": channel}, lambda: unpackb(packb(with_ref))),
    ]


def time_per_call(loop: Callable[[int], None], count: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        loop(count)
        best = min(best, time.perf_counter() - start)
    return best / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    codec = Codec()
    encode, decode = codec.encode, codec.decode

    def channel_encoder(handle: object) -> bytes:
        return REF

    def channel_decoder(ref: bytes) -> object:
        return ref

    print(f"{'value':<24} {'bytes':>6} {'qchan us':>9} {'msgpack us':>11} {'ratio':>6}")
    for label, value, by_hand in shapes(codec):
        data = encode(value, channel_encoder=channel_encoder)

        def ours(n: int, value: Any = value) -> None:
            for _ in range(n):
                decode(
                    encode(value, channel_encoder=channel_encoder),
                    channel_decoder=channel_decoder,
                )

        def bare(n: int, by_hand: Callable[[], object] = by_hand) -> None:
            for _ in range(n):
                by_hand()

        ours_t = bare_t = float("inf")
        for _ in range(2):  # alternate, so drift in machine speed hits both
            ours_t = min(ours_t, time_per_call(ours, args.count, args.rounds))
            bare_t = min(bare_t, time_per_call(bare, args.count, args.rounds))
        print(
            f"{label:<24} {len(data):>6} {ours_t * 1e6:>9.2f} {bare_t * 1e6:>11.2f}"
            f" {ours_t / bare_t:>6.2f}"
        )


if __name__ == "__main__":
    main()
