"""The peer-list service every ``qchan node start`` hosts, and the question that asks it.

A node knows only the nodes it is connected to. So that one ``--peer ADDR`` is enough for a
command to find the whole cluster, every ``qchan node start`` hosts a channel named
:data:`SERVICE`: send it a channel, and it sends back its list of peers (a list of maps:
``name``, ``public_key`` (bytes), ``address``, ``connected``). ``qchan peers`` shows what the
nodes it reached report, and ``send``/``recv`` dial the nodes reported so that their lookups
see the channels hosted there too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final, final

import anyio

from qchan._channel import Channel, SendChannel
from qchan._errors import QchanError
from qchan.crypto.keys import fingerprint
from qchan.node import Node
from qchan.transport import parse_address

__all__ = [
    "COMMAND_ROLES",
    "SERVICE",
    "PeerRow",
    "ask_peers",
    "command_node_name",
    "dialable",
    "is_command_node",
    "serve_peer_queries",
]

SERVICE: Final = "qchan.peers"
"""The channel name of the peer-list service."""

COMMAND_ROLES: Final = ("peers", "send", "recv")
"""The commands that run a short-lived node, named ``qchan-<role>-<host>-<pid>``."""

_ANSWER_TIMEOUT: Final = 2.0


def command_node_name(role: str, host: str, pid: int) -> str:
    """The name of a short-lived command node."""
    return f"qchan-{role}-{host}-{pid}"


def is_command_node(name: str) -> bool:
    """Whether ``name`` is that of a short-lived command node (worth no dial, and no row once
    it has left)."""
    return any(name.startswith(f"qchan-{role}-") for role in COMMAND_ROLES)


def dialable(address: str) -> bool:
    """Whether another machine can dial ``address`` as it is: not a wildcard like
    ``0.0.0.0:7400``, which a node bound to every interface reports as its own address."""
    try:
        host = parse_address(address).host
    except ValueError:
        return False
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return bool(host) or address.startswith("unix:")


@final
@dataclass(slots=True)
class PeerRow:
    """A node as seen by us (``via`` is ``None``) or as the node named ``via`` reports it."""

    name: str
    public_key: bytes
    address: str
    connected: bool
    via: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": fingerprint(self.public_key),
            "public_key": self.public_key.hex(),
            "address": self.address,
            "connected": self.connected,
            "via": self.via,
        }


async def serve_peer_queries(node: Node) -> None:
    """Host :data:`SERVICE` on ``node``: answer each channel sent to it with our peer list."""
    requests: Channel[Any] = Channel()
    node.register(SERVICE, requests)
    async with anyio.create_task_group() as tasks:
        async for reply in requests:
            if isinstance(reply, SendChannel):
                tasks.start_soon(_answer, node, reply)


async def _answer(node: Node, reply: SendChannel[Any]) -> None:
    rows = [
        {
            "name": info.name,
            "public_key": info.public_key,
            "address": info.address,
            "connected": info.connected,
        }
        for info in node.peers()
    ]
    with anyio.move_on_after(_ANSWER_TIMEOUT):
        try:
            await reply.send(rows)
        except QchanError:
            pass  # the asker is gone: nothing to do


async def ask_peers(node: Node, name: str, timeout: float) -> list[PeerRow]:  # noqa: ASYNC109
    """The peers the node called ``name`` reports; ``[]`` if it does not answer in time
    (not a ``qchan node start``, say)."""
    rows: list[PeerRow] = []
    with anyio.move_on_after(timeout):
        try:
            service = await node.lookup(f"{SERVICE}@{name}", timeout=timeout)
            reply: Channel[Any] = Channel(1)
            await service.send(reply)
            answer = await reply.receive()
        except QchanError:
            return rows
        for item in answer if isinstance(answer, list) else []:
            try:
                row = PeerRow(
                    str(item["name"]),
                    bytes(item["public_key"]),
                    str(item["address"]),
                    bool(item["connected"]),
                    name,
                )
            except (KeyError, TypeError, ValueError):
                continue  # not an answer of ours: skip what does not fit
            if row.public_key != node.public_key:  # ourselves, as the node we asked sees us
                rows.append(row)
    return rows
