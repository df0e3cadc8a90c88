"""The short-lived node behind ``qchan peers``, ``send`` and ``recv``; ``send`` and ``recv``.

Each of these commands starts a node of its own (an ephemeral identity unless ``--key`` or
``$QCHAN_KEY``), reaches the cluster through ``--peer ADDR`` (discovery off) or else by mDNS,
does its one thing and closes the node, so the peers see it leave at once. With ``--peer``,
the node at ADDR is a way in: the command asks it for the nodes it sees (the service of
``_cli_service``) and dials them too, so that a lookup finds channels hosted anywhere.

``recv`` prints each value as one line of JSON. A value, or a part of one, that JSON cannot
represent (bytes, a set, a channel, an instance of a registered type, NaN or an infinity, a map
with keys that are not strings) is printed as ``{"$repr": "<its Python repr>"}``, so every line
is still valid JSON; tuples are printed as arrays.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar, final

import anyio

from qchan._channel import Channel
from qchan._cli_common import (
    CONFIG,
    FAILURE,
    NODE_KEY_ENV,
    OK,
    USAGE,
    CliError,
    add_node_options,
    check_address,
    cluster_key_from,
    connect_error,
    interrupted_code,
    logging_to_stderr,
    node_key_from,
    run_async,
    seconds,
    until_signalled,
)
from qchan._cli_service import ask_peers, command_node_name, dialable, is_command_node
from qchan._errors import ChannelClosed, NotFound, QchanError
from qchan.node import Node

__all__ = [
    "ClientNode",
    "add_client_options",
    "add_recv_parser",
    "add_send_parser",
    "json_line",
    "prepare_client",
    "recv",
    "run_client",
    "send",
]

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 5.0
_ASK_TIMEOUT: Final = 1.0

log = logging.getLogger("qchan.cli")

_SEND_HELP = """\
Send one value to the channel NAME, wherever it is hosted in the cluster, and exit 0 once the
send has returned: on a rendezvous channel (capacity 0) once a receiver has taken the value,
on a buffered one once the value is in the buffer. VALUE is JSON. NAME may be NAME@NODE to
look only on the node called NODE.

examples:
  qchan send jobs '{"id": 7, "url": "https://example.com"}' --cluster-key cluster.key
  qchan send jobs@worker-1 42 --peer 10.0.0.7:7400
"""

_RECV_HELP = """\
Receive values from the channel NAME, wherever it is hosted in the cluster, and print each as
one line of JSON. A value that JSON cannot represent (bytes, a set, a channel, NaN...) is
printed as {"$repr": "<Python repr>"}. Exits 0 once COUNT values were received; with -n 0,
once the channel is closed and drained. A channel closed before COUNT values exits 1.

examples:
  qchan recv results --cluster-key cluster.key
  qchan recv results -n 0 --peer 10.0.0.7:7400 | jq .id
"""


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """``--peer``, ``--timeout`` and the node options."""
    parser.add_argument(
        "--peer",
        metavar="ADDR",
        help="reach the cluster through the node at ADDR (HOST:PORT or unix:/path) "
        "instead of mDNS discovery",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        help=f"how long to wait for the peer and the channel (default: {DEFAULT_TIMEOUT:g})",
    )
    add_node_options(parser, client=True)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"COUNT must be >= 0 (0: until closed): {text!r}")
    return value


def add_send_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``send`` subcommand."""
    parser = commands.add_parser(
        "send",
        help="send one JSON value to a channel",
        description=_SEND_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="the channel's name (or NAME@NODE)")
    parser.add_argument("value", metavar="VALUE", help="the value, as JSON")
    add_client_options(parser)
    parser.set_defaults(command=send)


def add_recv_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``recv`` subcommand."""
    parser = commands.add_parser(
        "recv",
        help="receive values from a channel, one JSON line each",
        description=_RECV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="the channel's name (or NAME@NODE)")
    parser.add_argument(
        "-n",
        "--count",
        metavar="COUNT",
        type=_count,
        default=1,
        help="how many values to receive (default: 1; 0: until the channel is closed)",
    )
    add_client_options(parser)
    parser.set_defaults(command=recv)


# --- the short-lived node ------------------------------------------------------------------------


@final
@dataclass(slots=True)
class ClientNode:
    """A checked, not yet started, short-lived node, and where it reaches the cluster."""

    node: Node
    peer: str | None
    timeout: float
    seed: str = ""  # the name of the node at --peer, once connected

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Node]:
        """Start the node and, with ``--peer``, connect to it (a :class:`CliError` if that
        fails); close the node on the way out."""
        try:
            async with self.node as node:
                if self.peer is not None:
                    await self._connect(node, self.peer)
                yield node
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("qchan.cluster"):
                raise
            raise CliError(
                "mDNS discovery is not available in this build of qchan; "
                "give --peer ADDR to reach the cluster through a node",
                CONFIG,
            ) from None

    async def _connect(self, node: Node, peer: str) -> None:
        try:
            with anyio.fail_after(max(self.timeout, 0.001)):
                self.seed = (await node.connect(peer)).name
        except (QchanError, OSError, TimeoutError) as exc:
            raise connect_error(peer, exc) from None
        except KeyError:  # node.connect() closed the link: the remote node has our key
            raise CliError(
                f"the node at {peer} has the same node key as this command (--key or "
                f"${NODE_KEY_ENV}); a command needs an identity of its own: unset "
                f"{NODE_KEY_ENV} or give another --key",
                CONFIG,
            ) from None

    async def widen(self) -> None:
        """With ``--peer``: dial the nodes the seed node reports as connected, so that the
        whole cluster (not just the seed) answers our lookups. Never raises: a node we
        cannot dial is just not asked."""
        if not self.seed:
            return
        node = self.node
        with anyio.move_on_after(self.timeout):
            reported = await ask_peers(node, self.seed, min(_ASK_TIMEOUT, self.timeout))
            known = {info.public_key for info in node.peers() if info.connected}
            async with anyio.create_task_group() as tasks:
                for row in reported:
                    if (
                        row.connected
                        and row.public_key not in known
                        and not is_command_node(row.name)
                        and dialable(row.address)
                    ):
                        tasks.start_soon(_dial_quietly, node, row.address)

    async def lookup(self, name: str) -> Channel[Any]:
        """``node.lookup(name)`` while :meth:`widen` runs; a :class:`CliError` if not found."""
        found: list[Channel[Any]] = []
        failed: list[Exception] = []

        async def look(scope: anyio.CancelScope) -> None:
            try:
                found.append(await _lookup(self.node, name, self.timeout))
            except Exception as exc:
                failed.append(exc)
            scope.cancel()  # widening is of no use any more

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(look, tasks.cancel_scope)
            await self.widen()
        if failed:
            raise failed[0]
        return found[0]


async def _dial_quietly(node: Node, address: str) -> None:
    try:
        await node.connect(address)
    except (QchanError, OSError, KeyError) as exc:
        log.info("cannot dial %s: %s", address, exc)


def prepare_client(args: argparse.Namespace, role: str) -> ClientNode:
    """Check the keys and ``--peer`` and build the node (usage/key errors surface here)."""
    peer = check_address(args.peer, "--peer") if args.peer else None
    cluster_key = cluster_key_from(args)
    key = node_key_from(args)
    node = Node(
        cluster_key=cluster_key,
        key=key,
        name=command_node_name(role, platform.node() or "host", os.getpid()),
        # With --peer every link is dialled by us; with discovery, peers dial us too.
        listen="127.0.0.1:0" if peer is not None else "0.0.0.0:0",
        discovery=peer is None,
    )
    return ClientNode(node, peer, args.timeout)


def run_client(args: argparse.Namespace, body: Callable[[], Awaitable[int]]) -> int:
    """Run ``body`` with logging set up, until it returns or a signal interrupts it."""
    level = (logging.WARNING, logging.INFO)[min(args.verbose, 1)]
    if args.verbose >= 2:
        level = logging.DEBUG

    async def until_done() -> int:
        code, signum = await until_signalled(body)
        return interrupted_code(signum) if signum is not None else (code or OK)

    with logging_to_stderr(level):
        return run_async(args, until_done)


async def _lookup(node: Node, name: str, timeout: float) -> Channel[Any]:  # noqa: ASYNC109
    """``node.lookup``, with a hint in the error when no other node was reached at all."""
    try:
        return await node.lookup(name, timeout=timeout)
    except NotFound as exc:
        if not any(peer.connected for peer in node.peers()):
            raise CliError(f"{exc} (no node of the cluster was reached)", FAILURE) from None
        raise CliError(str(exc), FAILURE) from None
    except ValueError as exc:
        raise CliError(str(exc), USAGE) from None


# --- send and recv -------------------------------------------------------------------------------


def send(args: argparse.Namespace) -> int:
    """``qchan send NAME VALUE``."""
    try:
        value = json.loads(args.value)
    except json.JSONDecodeError as exc:
        raise CliError(f"VALUE is not valid JSON: {exc} in {args.value!r}", USAGE) from None
    client = prepare_client(args, "send")

    async def body() -> int:
        async with client.running():
            channel = await client.lookup(args.name)
            try:
                await channel.send(value)
            except ChannelClosed:
                raise CliError(f"channel {args.name!r} is closed", FAILURE) from None
        return OK

    return run_client(args, body)


def recv(args: argparse.Namespace) -> int:
    """``qchan recv NAME [-n COUNT]``."""
    client = prepare_client(args, "recv")

    async def body() -> int:
        received = 0
        async with client.running():
            channel = await client.lookup(args.name)
            while args.count == 0 or received < args.count:
                try:
                    value = await channel.receive()
                except ChannelClosed:
                    if args.count == 0:
                        break
                    raise CliError(
                        f"channel {args.name!r} is closed "
                        f"(received {received} of {args.count} values)",
                        FAILURE,
                    ) from None
                print(json_line(value), flush=True)
                received += 1
        return OK

    return run_client(args, body)


# --- values as JSON ---------------------------------------------------------------------------


def _fallback(value: object) -> dict[str, str]:
    return {"$repr": repr(value)}


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _fallback(value)
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _jsonable(item) for key, item in value.items()}
    return _fallback(value)


def json_line(value: object) -> str:
    """``value`` as one line of JSON; what JSON cannot represent as ``{"$repr": ...}``."""
    try:
        return json.dumps(_jsonable(value), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        return json.dumps({"$repr": f"<a {type(value).__name__} nested too deeply to print>"})
