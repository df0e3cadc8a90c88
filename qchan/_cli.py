"""The ``qchan`` command: ``main(argv) -> exit code``, testable in-process.

Subcommands live in private modules: ``_cli_keys`` (keygen, cluster-key), ``_cli_node``
(node start), ``_cli_client`` (send, recv, and the short-lived node they share with peers),
``_cli_peers`` (peers), ``_cli_run`` (--channel and --run), ``_cli_common`` (exit codes,
errors, keys, logging, the event loop). docs/cli.md is the user's manual.

Every failure is one line on stderr, ``qchan: error: ...``, and an exit code from the table
in ``_cli_common``; nothing prints a traceback except a ``--run`` function's own error, and
an unexpected one under ``-v``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from qchan._cli_client import add_recv_parser, add_send_parser
from qchan._cli_common import (
    FAILURE,
    UNREACHABLE,
    USAGE,
    CliError,
    interrupted_code,
)
from qchan._cli_keys import add_cluster_key_parser, add_keygen_parser
from qchan._cli_node import add_node_parser
from qchan._cli_peers import add_peers_parser
from qchan._errors import AuthenticationError, QchanError
from qchan._version import __version__

__all__ = ["build_parser", "main", "run"]

DESCRIPTION = """\
qchan: Go channels across machines. Peer nodes find each other, authenticate with a shared
cluster key, encrypt everything, and host named channels that any task in the cluster can
send to, receive from and select over.
"""

EPILOG = """\
exit codes: 0 ok, 1 runtime failure (not found, closed, peer lost), 2 usage error,
3 key or configuration error, 4 cannot reach or authenticate with a peer,
130/143 interrupted by SIGINT/SIGTERM.
environment: QCHAN_CLUSTER_KEY and QCHAN_KEY stand in for --cluster-key and --key.

example (see docs/cli.md for a whole session):
  qchan cluster-key -o cluster.key
  qchan node start --cluster-key cluster.key --channel jobs:16
  qchan send jobs '{"id": 1}' --cluster-key cluster.key
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every subcommand and its options."""
    parser = argparse.ArgumentParser(
        prog="qchan",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qchan {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_keygen_parser(commands)
    add_cluster_key_parser(commands)
    add_node_parser(commands)
    add_peers_parser(commands)
    add_send_parser(commands)
    add_recv_parser(commands)
    return parser


def _error(message: str, code: int) -> int:
    print(f"qchan: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits for --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else USAGE
    command = getattr(args, "command", None)
    if command is None:
        parser.print_help()
        return 0
    try:
        code: int = command(args)
        return code
    except CliError as exc:
        return _error(str(exc), exc.code)
    except AuthenticationError as exc:
        return _error(str(exc), UNREACHABLE)
    except QchanError as exc:
        return _error(str(exc), FAILURE)
    except BrokenPipeError:  # `qchan recv -n 0 jobs | head -1`: the reader of stdout left
        _silence_stdout()
        return FAILURE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return interrupted_code(signal.SIGINT)
    except Exception as exc:  # a bug: still one line, and the traceback on request
        if getattr(args, "verbose", 0):
            traceback.print_exc()
        message = f"unexpected {type(exc).__name__}: {exc}"
        return _error(f"{message} (run with -v for the traceback)", FAILURE)


def _silence_stdout() -> None:
    # Python would fail again flushing stdout at exit: point it at /dev/null instead.
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test's captured stdout)
        pass


def run() -> None:
    """Console-script entry point."""
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = code or FAILURE
    sys.exit(code)
