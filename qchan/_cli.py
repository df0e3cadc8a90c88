"""The ``qchan`` command: ``main(argv) -> exit code``, testable in-process."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qchan._version import __version__

__all__ = ["main", "run"]

DESCRIPTION = """\
qchan: Go channels across machines. Peer nodes find each other, authenticate with a shared
cluster key, encrypt everything, and host named channels that any task in the cluster can
send to, receive from and select over.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qchan", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"qchan {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits for --help, --version and usage errors
        return int(exit_.code or 0)
    parser.print_help()
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
