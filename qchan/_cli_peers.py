"""``qchan peers``: the nodes of the cluster, as a table or as JSON."""

from __future__ import annotations

import argparse
import json
from typing import Final

import anyio

from qchan._cli_client import ClientNode, add_client_options, prepare_client, run_client
from qchan._cli_common import OK, seconds
from qchan._cli_service import SERVICE, PeerRow, ask_peers, is_command_node
from qchan.crypto.keys import fingerprint

__all__ = ["add_peers_parser", "peers"]

DEFAULT_WAIT: Final = 2.0
_ASK_TIMEOUT: Final = 1.0

_PEERS_HELP = f"""\
List the nodes of the cluster: the ones this command's own short-lived node connects to
(through --peer ADDR and the nodes it reports, or those found by mDNS within --wait seconds),
and the ones those nodes see in turn that we could not reach ourselves (every `qchan node
start` answers on its channel {SERVICE!r}); VIA names the node that reported such a row.
CONNECTED says whether the node is connected to us (VIA empty) or to the node in VIA.
Short-lived command nodes that have left are not listed. --json prints a list of objects
(name, fingerprint, public_key in hex, address, connected, via) for scripts.

examples:
  qchan peers --cluster-key cluster.key
  qchan peers --peer 10.0.0.7:7400 --json | jq -r '.[].name'
"""


def add_peers_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``peers`` subcommand."""
    parser = commands.add_parser(
        "peers",
        help="list the nodes of the cluster",
        description=_PEERS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=seconds,
        default=DEFAULT_WAIT,
        help="with discovery, how long to wait for nodes to connect "
        f"(default: {DEFAULT_WAIT:g}; with --peer there is no such wait)",
    )
    add_client_options(parser)
    parser.set_defaults(command=peers)


async def _collect(client: ClientNode, wait: float) -> list[PeerRow]:
    node = client.node
    if client.peer is None:
        await anyio.sleep(wait)  # mDNS: let the nodes of the cluster find us and connect
    else:
        await client.widen()
    rows = {
        info.public_key: PeerRow(info.name, info.public_key, info.address, info.connected)
        for info in node.peers()
        if info.connected or not is_command_node(info.name)
    }
    reported: list[list[PeerRow]] = []

    async def ask(name: str) -> None:
        reported.append(await ask_peers(node, name, min(_ASK_TIMEOUT, client.timeout)))

    async with anyio.create_task_group() as tasks:
        for row in rows.values():
            if row.connected and not is_command_node(row.name):
                tasks.start_soon(ask, row.name)
    for row in (row for answer in reported for row in answer):
        if not row.connected and is_command_node(row.name):
            continue
        known = rows.get(row.public_key)
        if known is None or (known.via is not None and row.connected and not known.connected):
            rows[row.public_key] = row
    return sorted(rows.values(), key=lambda row: (row.via is not None, row.name))


def _table(rows: list[PeerRow]) -> str:
    header = ("NAME", "FINGERPRINT", "ADDRESS", "CONNECTED", "VIA")
    lines = [header] + [
        (
            row.name,
            fingerprint(row.public_key),
            row.address or "-",
            "yes" if row.connected else "no",
            row.via or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def peers(args: argparse.Namespace) -> int:
    """``qchan peers``."""
    client = prepare_client(args, "peers")

    async def body() -> int:
        async with client.running():
            rows = await _collect(client, args.wait)
        if args.json:
            print(json.dumps([row.as_json() for row in rows], indent=2), flush=True)
        elif rows:
            print(_table(rows), flush=True)
        else:
            print("no peers found", flush=True)
        return OK

    return run_client(args, body)
