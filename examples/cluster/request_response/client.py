"""The client of the request/response example: one request to the ``kv`` service, one answer.

    python -m examples.cluster.request_response.client --cluster-key ck set greeting hello
    python -m examples.cluster.request_response.client --cluster-key ck get greeting
    python -m examples.cluster.request_response.client --cluster-key ck keys

It starts a short-lived node, finds ``kv`` in the cluster (by mDNS, or through ``--peer``),
sends the request together with a reply channel hosted on its own node, and prints the answer
as JSON. The reply channel travels inside the request as a send-only handle: the service can
answer on it and do nothing else with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

import qchan

__all__ = ["main", "request"]

TIMEOUT = 10.0  # for finding the service, and again for its answer


async def request(node: qchan.Node, *parts: Any) -> Any:
    """Send ``(*parts, reply)`` to ``kv`` and return the answer (RuntimeError if refused)."""
    service = await node.lookup("kv", timeout=TIMEOUT)
    reply: qchan.Channel[Any] = qchan.Channel(1)  # capacity 1: the service never waits on us
    with anyio.fail_after(TIMEOUT):
        await service.send((*parts, reply.sender()))
        status, answer = await reply.receive()
    if status != "ok":
        raise RuntimeError(answer)
    return answer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.cluster.request_response.client",
        description="Ask the kv service of a qchan cluster.",
    )
    parser.add_argument("--cluster-key", default=os.environ.get("QCHAN_CLUSTER_KEY"))
    parser.add_argument("--listen", default="127.0.0.1:0", help="default: 127.0.0.1:0")
    parser.add_argument("--peer", action="append", default=[], help="a node to dial")
    parser.add_argument("--no-discovery", action="store_true", help="do not use mDNS")
    parser.add_argument("command", choices=["set", "get", "keys"])
    parser.add_argument("args", nargs="*", help="set KEY VALUE | get KEY | keys")
    return parser


async def _main(args: argparse.Namespace) -> int:
    wanted = {"set": 2, "get": 1, "keys": 0}[args.command]
    if len(args.args) != wanted:
        print(f"{args.command} takes {wanted} argument(s)", file=sys.stderr)
        return 2
    async with qchan.Node(
        cluster_key=qchan.ClusterKey.load(args.cluster_key),
        name=f"kv-client-{os.getpid()}",
        listen=args.listen,
        peers=args.peer,
        discovery=not args.no_discovery,
    ) as node:
        try:
            answer = await request(node, args.command, *args.args)
        except (qchan.QchanError, TimeoutError, RuntimeError) as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(answer))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.cluster_key:
        print("--cluster-key FILE (or QCHAN_CLUSTER_KEY) is required", file=sys.stderr)
        return 2
    return anyio.run(_main, args)


if __name__ == "__main__":
    sys.exit(main())
