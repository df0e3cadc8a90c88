"""Stage 3 of the pipeline example: subscribe, print COUNT results, say quit.

    python -m examples.cluster.pipeline.sink --cluster-key ck --count 12

It starts a short-lived node, hosts ``results`` (capacity 4) and ``quit`` (capacity 0), sends
``(results.sender(), quit.receiver())`` to the transform's ``subscribe`` channel, prints what
arrives, then closes ``quit`` and drains ``results`` until the transform closes it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

import qchan

__all__ = ["main", "subscribe"]

TIMEOUT = 30.0  # the whole subscription, lookup included


async def subscribe(node: qchan.Node, count: int) -> list[Any]:
    """Take ``count`` results from the pipeline (printing each), then end the subscription."""
    results: qchan.Channel[Any] = qchan.Channel(4)
    quit: qchan.Channel[Any] = qchan.Channel(0)
    got: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        transform = await node.lookup("subscribe", timeout=TIMEOUT)
        await transform.send((results.sender(), quit.receiver()))
        while len(got) < count:
            kind, value, transformed, by = await results.receive()
            print(f"{kind:>6} {value!r:>6} -> {transformed!r:<8} (by {by})", flush=True)
            got.append((kind, value, transformed))
        quit.close()  # every select waiting on quit at the transform wakes up
        extra = 0
        async for _ in results:  # until the transform closes results
            extra += 1
    print(f"received {len(got)} results (and {extra} more in flight after quit)")
    return got


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.cluster.pipeline.sink",
        description="The last stage of the qchan pipeline example.",
    )
    parser.add_argument("--cluster-key", default=os.environ.get("QCHAN_CLUSTER_KEY"))
    parser.add_argument("--count", type=int, default=12, help="results to print")
    parser.add_argument("--listen", default="127.0.0.1:0", help="default: 127.0.0.1:0")
    parser.add_argument("--peer", action="append", default=[], help="a node to dial")
    parser.add_argument("--no-discovery", action="store_true", help="do not use mDNS")
    return parser


async def _main(args: argparse.Namespace) -> int:
    async with qchan.Node(
        cluster_key=qchan.ClusterKey.load(args.cluster_key),
        name=f"sink-{os.getpid()}",
        listen=args.listen,
        peers=args.peer,
        discovery=not args.no_discovery,
    ) as node:
        try:
            await subscribe(node, args.count)
        except (qchan.QchanError, TimeoutError) as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.cluster_key:
        print("--cluster-key FILE (or QCHAN_CLUSTER_KEY) is required", file=sys.stderr)
        return 2
    return anyio.run(_main, args)


if __name__ == "__main__":
    sys.exit(main())
