"""``qchan node start``: run a long-lived node until SIGINT or SIGTERM.

The node listens (``0.0.0.0:7400`` unless ``--listen``), dials every ``--peer`` and keeps it
dialled, announces itself over mDNS unless ``--no-discovery``, hosts the ``--channel``
channels, and runs each ``--run`` function with the node. When every ``--run`` function has
returned, the node keeps serving: a node is stopped by a signal, never by running out of work
(a worker whose function returns keeps hosting the channels it registered). If a ``--run``
function raises, the error is logged with its traceback, the others are cancelled, the node is
closed and the command exits 1. On SIGINT or SIGTERM the node is closed (every peer gets a
GOAWAY and sees it leave at once, rather than after a heartbeat timeout) and the command exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from qchan._channel import Channel
from qchan._cli_common import (
    CONFIG,
    FAILURE,
    OK,
    USAGE,
    CliError,
    add_node_options,
    check_address,
    cluster_key_from,
    logging_to_stderr,
    node_key_from,
    run_async,
    seconds,
    until_signalled,
)
from qchan._cli_run import ChannelSpec, RunTarget, import_target, parse_channel, parse_run
from qchan._cli_service import serve_peer_queries
from qchan._errors import AuthenticationError, QchanError
from qchan.node import DEFAULT_BUSY_POLL, MAX_BUSY_POLL, Node

__all__ = ["DEFAULT_LISTEN", "add_node_parser", "node_start"]

log = logging.getLogger("qchan.cli")

DEFAULT_LISTEN = "0.0.0.0:7400"
_PROBE_TIMEOUT = 5.0

_NODE_HELP = """\
Run a qchan node. `qchan node start --help` shows the options.

example:
  qchan node start --cluster-key cluster.key --channel jobs:16
"""

_START_HELP = """\
Start a node and keep it running until SIGINT (Ctrl-C) or SIGTERM; then close it cleanly
(peers are told goodbye) and exit 0.

At start it prints its name, fingerprint and address on stdout; while it runs it logs each
peer joining or leaving on stderr. It listens on all interfaces, port 7400, unless --listen;
it finds the other nodes of its cluster by mDNS unless --no-discovery, and dials every --peer
(and keeps them dialled). --channel creates and registers a channel; --run imports
MODULE (the current directory comes first on sys.path, as with `python -m`) and runs
`await FUNCTION(node)` in the node, several concurrently. The node keeps serving after they
return; if one raises, the node is closed and the command exits 1.

examples:
  qchan node start --cluster-key cluster.key --key node.key --channel jobs:16
  qchan node start --cluster-key cluster.key --listen 127.0.0.1:0 --no-discovery \\
      --peer 10.0.0.7:7400 --run myapp.workers:serve
"""


def add_node_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``node`` command and its ``start`` subcommand."""
    node = commands.add_parser(
        "node",
        help="run a node (node start)",
        description=_NODE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    node_commands = node.add_subparsers(title="commands", metavar="COMMAND", required=True)
    start = node_commands.add_parser(
        "start",
        help="start a node and run it until SIGINT/SIGTERM",
        description=_START_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.add_argument(
        "--name", help="the node's name, unique in the cluster (default: HOSTNAME-PID)"
    )
    start.add_argument(
        "--listen",
        metavar="ADDR",
        default=DEFAULT_LISTEN,
        help=f"HOST:PORT or unix:/path to listen on (default: {DEFAULT_LISTEN})",
    )
    start.add_argument(
        "--peer",
        metavar="ADDR",
        action="append",
        default=[],
        help="a node to dial and keep dialled (repeatable)",
    )
    start.add_argument(
        "--no-discovery", action="store_true", help="do not announce or browse over mDNS"
    )
    start.add_argument(
        "--channel",
        metavar="NAME[:CAPACITY]",
        action="append",
        default=[],
        help="create a channel and register it as NAME; CAPACITY is an integer or 'inf' "
        "(default 0: rendezvous); repeatable",
    )
    start.add_argument(
        "--run",
        metavar="MODULE:FUNCTION",
        action="append",
        default=[],
        help="run `await FUNCTION(node)` in the node; repeatable (they run concurrently)",
    )
    start.add_argument(
        "--busy-poll",
        metavar="SECONDS",
        type=_busy_poll,
        default=DEFAULT_BUSY_POLL,
        help="while messages flow, keep polling this long after each one instead of sleeping:"
        f" faster round trips for CPU time (default: {DEFAULT_BUSY_POLL:g}; 0: off; at most"
        f" {MAX_BUSY_POLL:g}; asyncio only)",
    )
    add_node_options(start, client=False)
    start.set_defaults(command=node_start)


def _busy_poll(text: str) -> float:
    value = seconds(text)
    if value > MAX_BUSY_POLL:
        raise argparse.ArgumentTypeError(f"at most {MAX_BUSY_POLL:g} seconds: {text!r}")
    return value


def node_start(args: argparse.Namespace) -> int:
    """``qchan node start``: check everything, then run the node until a signal."""
    channels = [parse_channel(spec) for spec in args.channel]
    names = [spec.name for spec in channels]
    for name in names:
        if names.count(name) > 1:
            raise CliError(f"--channel {name!r} is given twice", USAGE)
    targets = [parse_run(spec) for spec in args.run]
    listen = check_address(args.listen, "--listen")
    peers = [check_address(address, "--peer") for address in args.peer]
    cluster_key = cluster_key_from(args)
    key = node_key_from(args)
    functions = [(target, import_target(target)) for target in targets]
    try:
        node = Node(
            cluster_key=cluster_key,
            key=key,
            name=args.name,
            listen=listen,
            peers=peers,
            discovery=not args.no_discovery,
            busy_poll=args.busy_poll,
        )
    except ValueError as exc:
        raise CliError(str(exc), USAGE) from None
    level = logging.DEBUG if args.verbose else logging.INFO
    with logging_to_stderr(level):
        return run_async(args, lambda: _serve(node, channels, functions, peers))


async def _serve(
    node: Node,
    channels: list[ChannelSpec],
    functions: list[tuple[RunTarget, Callable[[Any], Awaitable[Any]]]],
    peers: list[str],
) -> int:
    started = False
    try:
        async with node:
            started = True
            return await _run(node, channels, functions, peers)
    except OSError as exc:
        if started:
            raise
        # "cannot listen on ADDR: address already in use"
        raise CliError(exc.strerror or str(exc), CONFIG) from None
    except ModuleNotFoundError as exc:
        if started or not (exc.name or "").startswith("qchan.cluster"):
            raise
        raise CliError(
            "mDNS discovery is not available in this build of qchan; "
            "start with --no-discovery and give --peer ADDR",
            CONFIG,
        ) from None


def _print_banner(node: Node, channels: list[ChannelSpec]) -> None:
    lines = [
        f"name: {node.name}",
        f"fingerprint: {node.key.fingerprint}",
        f"public key: {node.public_key.hex()}",
        f"address: {node.address}",
    ]
    lines += [f"channel: {spec}" for spec in channels]
    print("\n".join(lines), flush=True)


async def _run(
    node: Node,
    channels: list[ChannelSpec],
    functions: list[tuple[RunTarget, Callable[[Any], Awaitable[Any]]]],
    peers: list[str],
) -> int:
    for spec in channels:
        node.register(spec.name, Channel(spec.capacity))
    _print_banner(node, channels)
    log.info("node %s (%s) listening on %s", node.name, node.key.fingerprint, node.address)
    failures: list[str] = []

    async def body() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(serve_peer_queries, node)
            for address in peers:
                tasks.start_soon(_probe, node, address)
            for target, function in functions:
                tasks.start_soon(_run_one, node, target, function, failures, tasks.cancel_scope)
            await anyio.sleep_forever()

    _, signum = await until_signalled(body)
    if signum is not None:
        log.info("%s: closing the node", signal.Signals(signum).name)
        return OK
    raise CliError(failures[0] if failures else "the node stopped unexpectedly", FAILURE)


async def _run_one(
    node: Node,
    target: RunTarget,
    function: Callable[[Any], Awaitable[Any]],
    failures: list[str],
    scope: anyio.CancelScope,
) -> None:
    """Run one ``--run`` function; if it raises, log why and stop the node."""
    try:
        await function(node)
    except Exception as exc:
        log.error("--run %s raised %s: %s", target, type(exc).__name__, exc, exc_info=exc)
        failures.append(f"--run {target} raised {type(exc).__name__}: {exc}")
        scope.cancel()
        return
    log.info("--run %s returned; the node keeps serving until SIGINT or SIGTERM", target)


async def _probe(node: Node, address: str) -> None:
    """Dial a ``--peer`` once, to say at once if it is unreachable or refuses us (the node
    itself keeps dialling it in the background, with backoff, and only logs that at debug)."""
    try:
        with anyio.fail_after(_PROBE_TIMEOUT):
            await node.connect(address)
    except AuthenticationError as exc:
        log.warning("--peer %s: %s (still trying)", address, exc)
    except TimeoutError:
        log.warning("--peer %s: no answer within %s s (still trying)", address, _PROBE_TIMEOUT)
    except (QchanError, OSError) as exc:
        log.warning("--peer %s: %s (still trying)", address, exc)
    except KeyError:  # node.connect() found our own public key there
        log.warning("--peer %s has this node's own key (is it this node, or a copy?)", address)
