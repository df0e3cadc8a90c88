"""The service of the request/response example: a small key-value store on one node.

    qchan node start --cluster-key ck --name kv --listen 127.0.0.1:0 \\
        --run examples.cluster.request_response.service:serve

It registers the channel ``kv`` (capacity 0). A request is a tuple whose last element is a
*reply channel*, made by the client on its own node and sent along, send-only::

    ("set", key, value, reply)  ->  reply gets True
    ("get", key, reply)         ->  reply gets the value, or None
    ("keys", reply)             ->  reply gets the sorted list of keys

Several handler tasks take requests from the one channel, so a slow client (or a client that
vanished before its answer) never holds up the others: each answer is sent under a deadline.
"""

from __future__ import annotations

from typing import Any

import anyio

import qchan

__all__ = ["HANDLERS", "serve"]

HANDLERS = 4  # requests answered at once
ANSWER_TIMEOUT = 5.0  # a client that does not take its answer in time is given up on


def _answer(store: dict[str, Any], request: tuple[Any, ...]) -> Any:
    match request:
        case ("set", str(key), value):
            store[key] = value
            return True
        case ("get", str(key)):
            return store.get(key)
        case ("keys",):
            return sorted(store)
    raise ValueError(f"unknown request {request!r}")


async def _handle(requests: qchan.ReceiveChannel[Any], store: dict[str, Any]) -> None:
    while True:
        try:
            message = await requests.receive()
        except qchan.ChannelClosed:
            return
        if not (isinstance(message, tuple) and message):
            continue
        if not isinstance(message[-1], qchan.SendChannel):
            continue  # not a request: nowhere to answer
        *request, reply = message
        try:
            answer: Any = ("ok", _answer(store, tuple(request)))
        except ValueError as exc:
            answer = ("error", str(exc))
        with anyio.move_on_after(ANSWER_TIMEOUT):
            try:
                await reply.send(answer)
            except qchan.QchanError:
                pass  # the client (or its node) went away: nothing to do


async def serve(node: qchan.Node) -> None:
    """``FUNCTION(node)`` for ``qchan node start --run``: serve ``kv`` until the node stops."""
    requests: qchan.Channel[Any] = qchan.Channel(0)
    node.register("kv", requests)
    store: dict[str, Any] = {}
    async with anyio.create_task_group() as tasks:
        for _ in range(HANDLERS):
            tasks.start_soon(_handle, requests.receiver(), store)
