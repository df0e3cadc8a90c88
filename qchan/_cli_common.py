"""What every ``qchan`` subcommand shares: exit codes, errors, keys, logging, the event loop.

Exit codes (docs/cli.md "Exit codes" is the user's copy of this table)::

    0    OK
    1    FAILURE      a runtime failure: a channel not found, closed, a peer lost mid-way,
                      a --run function raised
    2    USAGE        a bad command line: unknown option, invalid JSON, bad address,
                      bad --channel spec, no cluster key given
    3    CONFIG       a key or configuration problem: a key file missing, unreadable, not
                      private (0600), of the wrong kind, or in the way of keygen; a --run
                      target that cannot be imported; an address that cannot be listened on
    4    UNREACHABLE  a peer could not be reached, or the handshake with it failed
    128+N            interrupted by signal N: 130 for SIGINT (Ctrl-C), 143 for SIGTERM
                     (``qchan node start`` exits 0 instead: a signal is how a node is stopped)

Every failure reaches the user as one line, ``qchan: error: ...``, on stderr: commands raise
:class:`CliError`, and :func:`qchan._cli.main` prints it. Nothing here calls ``sys.exit``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import anyio
import anyio.abc

from qchan._errors import AuthenticationError, PeerLost
from qchan.crypto.keys import ClusterKey, NodeKey
from qchan.transport import parse_address

__all__ = [
    "CONFIG",
    "FAILURE",
    "OK",
    "UNREACHABLE",
    "USAGE",
    "CliError",
    "add_node_options",
    "check_address",
    "cluster_key_from",
    "connect_error",
    "interrupted_code",
    "logging_to_stderr",
    "node_key_from",
    "run_async",
    "seconds",
    "until_signalled",
]

OK: Final = 0
FAILURE: Final = 1
USAGE: Final = 2
CONFIG: Final = 3
UNREACHABLE: Final = 4

CLUSTER_KEY_ENV: Final = "QCHAN_CLUSTER_KEY"
NODE_KEY_ENV: Final = "QCHAN_KEY"

T = TypeVar("T")


class CliError(Exception):
    """A failure to report as ``qchan: error: <message>`` and exit with ``code``."""

    def __init__(self, message: str, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = code


def interrupted_code(signum: int) -> int:
    """The shell's exit code for a process ended by signal ``signum``: 128 + N."""
    return 128 + signum


# --- command-line pieces shared by the commands that run a node -------------------------------


def add_node_options(parser: argparse.ArgumentParser, *, client: bool) -> None:
    """``--cluster-key``, ``--key``, ``--backend``, ``--no-uvloop`` and ``-v``."""
    group = parser.add_argument_group("node options")
    group.add_argument(
        "--cluster-key",
        metavar="FILE",
        help=f"the cluster key file (default: ${CLUSTER_KEY_ENV}); required",
    )
    group.add_argument(
        "--key",
        metavar="FILE",
        help=(
            f"this node's key file (default: ${NODE_KEY_ENV}; without either, "
            + ("a fresh ephemeral identity)" if client else "a fresh identity for this run)")
        ),
    )
    group.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop (default: asyncio, on uvloop when it is installed)",
    )
    group.add_argument(
        "--no-uvloop",
        action="store_true",
        help="on asyncio, use the standard event loop even when uvloop is installed",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more on stderr (repeat for debug output)",
    )


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"seconds must be >= 0: {text!r}")
    return value


def check_address(text: str, option: str) -> str:
    """``text`` if it is a valid address, else a usage error naming ``option``."""
    try:
        return str(parse_address(text))
    except ValueError as exc:
        raise CliError(f"{option}: {exc}", USAGE) from None


# --- keys --------------------------------------------------------------------------------------


def _key_path(given: str | None, variable: str) -> str | None:
    return given or os.environ.get(variable) or None


def _load(kind: str, path: str, loader: Callable[[str], T]) -> T:
    try:
        return loader(path)
    except (FileNotFoundError, ValueError) as exc:  # our messages name the path and the fix
        raise CliError(str(exc), CONFIG) from None
    except PermissionError as exc:
        if exc.errno is None:  # the key file is not private: the message says how to fix it
            raise CliError(str(exc), CONFIG) from None
        raise CliError(f"cannot read the {kind} file {path}: permission denied", CONFIG) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise CliError(f"cannot read the {kind} file {path}: {reason}", CONFIG) from None


def cluster_key_from(args: argparse.Namespace) -> ClusterKey:
    """The cluster key named by ``--cluster-key`` or ``$QCHAN_CLUSTER_KEY`` (required)."""
    path = _key_path(args.cluster_key, CLUSTER_KEY_ENV)
    if path is None:
        raise CliError(
            f"a cluster key is required: give --cluster-key FILE or set {CLUSTER_KEY_ENV} "
            "(make one with `qchan cluster-key -o FILE`)",
            USAGE,
        )
    return _load("cluster key", path, ClusterKey.load)


def node_key_from(args: argparse.Namespace) -> NodeKey | None:
    """The node key named by ``--key`` or ``$QCHAN_KEY``; ``None`` when neither is given."""
    path = _key_path(args.key, NODE_KEY_ENV)
    return None if path is None else _load("node key", path, NodeKey.load)


def connect_error(address: str, exc: BaseException) -> CliError:
    """The error for a ``--peer`` that could not be dialled."""
    if isinstance(exc, AuthenticationError):
        return CliError(f"authentication with {address} failed: {exc}", UNREACHABLE)
    if isinstance(exc, TimeoutError):
        return CliError(f"cannot reach {address}: timed out", UNREACHABLE)
    if isinstance(exc, PeerLost):
        return CliError(str(exc), UNREACHABLE)
    return CliError(f"cannot reach {address}: {exc}", UNREACHABLE)


# --- logging -----------------------------------------------------------------------------------


@contextmanager
def logging_to_stderr(level: int) -> Iterator[None]:
    """Log qchan's records at ``level`` and above to stderr, with a timestamp, for a while.

    Attached to the ``qchan`` logger only (not the root), and removed afterwards, so that
    :func:`qchan._cli.main` can run many times in one process (the tests do).
    """
    logger = logging.getLogger("qchan")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    saved_level, saved_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate


# --- the event loop and signals ----------------------------------------------------------------


def run_async(args: argparse.Namespace, function: Callable[[], Awaitable[T]]) -> T:
    """Run ``function()`` on the chosen backend: trio, or asyncio (uvloop unless refused)."""
    if args.backend == "trio":
        return anyio.run(function, backend="trio")
    options: dict[str, Any] = {}
    if not args.no_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            options["use_uvloop"] = True
    return anyio.run(function, backend="asyncio", backend_options=options)


async def until_signalled(body: Callable[[], Awaitable[T]]) -> tuple[T | None, int | None]:
    """Run ``body()`` until it returns or SIGINT/SIGTERM arrives, whichever comes first.

    Returns ``(result, None)`` when the body returned, ``(None, signum)`` when a signal
    cancelled it. The body's exception propagates as itself (never in an ExceptionGroup).
    Only the body is cancelled: whatever the caller wraps around this call (a node) is then
    closed normally, so its peers are told goodbye.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []
    received: list[int] = []

    async def watch(scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
            with receiver as signals:
                task_status.started()  # the handlers are in place before the body starts
                async for signum in signals:
                    received.append(int(signum))
                    scope.cancel()
                    return
        except (NotImplementedError, ValueError, RuntimeError):
            # No signal handling here (not the main thread, or Windows): Ctrl-C still raises
            # KeyboardInterrupt, which qchan._cli.main turns into exit code 130.
            task_status.started()
            await anyio.sleep_forever()

    async def run_body(scope: anyio.CancelScope) -> None:
        try:
            outcome.append(await body())
        except Exception as exc:
            failure.append(exc)
        scope.cancel()

    async with anyio.create_task_group() as tasks:
        await tasks.start(watch, tasks.cancel_scope)
        tasks.start_soon(run_body, tasks.cancel_scope)
    if failure:
        raise failure[0]
    if received:
        return None, received[0]
    return outcome[0], None
