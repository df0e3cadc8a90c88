"""``qchan keygen`` and ``qchan cluster-key``: write a new key file (mode 0600)."""

from __future__ import annotations

import argparse

from qchan._cli_common import CONFIG, OK, CliError
from qchan.crypto.keys import ClusterKey, NodeKey

__all__ = ["add_cluster_key_parser", "add_keygen_parser", "cluster_key", "keygen"]

_KEYGEN_HELP = """\
Write a new node key (an X25519 identity) to FILE, mode 0600, and print its public
fingerprint. Give it to `qchan node start --key FILE` so that the node keeps the same
identity across restarts (peers that trust it by public key keep trusting it).

example:
  qchan keygen -o ~/.qchan/node.key
"""

_CLUSTER_KEY_HELP = """\
Write a new cluster key to FILE, mode 0600. Every node of a cluster holds the same cluster
key: only holders can connect, and it is the secret all traffic is encrypted under. Copy
the file to each machine over a secure channel (scp), keeping it mode 0600.

example:
  qchan cluster-key -o ~/.qchan/cluster.key
  scp -p ~/.qchan/cluster.key worker-1:.qchan/cluster.key
"""


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", metavar="FILE", required=True, help="the file to write (mode 0600)"
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite FILE if it exists (the old key is lost)"
    )


def add_keygen_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``keygen`` subcommand."""
    parser = commands.add_parser(
        "keygen",
        help="write a new node key; print its fingerprint",
        description=_KEYGEN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_key_options(parser)
    parser.set_defaults(command=keygen)


def add_cluster_key_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """The ``cluster-key`` subcommand."""
    parser = commands.add_parser(
        "cluster-key",
        help="write a new cluster key",
        description=_CLUSTER_KEY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_key_options(parser)
    parser.set_defaults(command=cluster_key)


def _save(key: NodeKey | ClusterKey, path: str, *, force: bool) -> None:
    try:
        key.save(path, overwrite=force)
    except FileExistsError:
        raise CliError(f"{path} already exists; use --force to overwrite it", CONFIG) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower() if exc.strerror else str(exc)
        raise CliError(f"cannot write {path}: {reason}", CONFIG) from None


def keygen(args: argparse.Namespace) -> int:
    """Write a node key to ``args.output``; print its fingerprint."""
    key = NodeKey.generate()
    _save(key, args.output, force=args.force)
    print(key.fingerprint, flush=True)
    return OK


def cluster_key(args: argparse.Namespace) -> int:
    """Write a cluster key to ``args.output``."""
    _save(ClusterKey.generate(), args.output, force=args.force)
    return OK
