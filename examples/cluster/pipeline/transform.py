"""Stage 2 of the pipeline example: merge two streams, transform them, obey a quit channel.

    qchan node start --cluster-key ck --name transform --listen 127.0.0.1:0 \\
        --run examples.cluster.pipeline.transform:run

It registers ``subscribe``. A sink sends it ``(results, quit)``: a send-only handle to a
channel the sink hosts, and a receive-only handle to the sink's quit channel. For each
subscription a task selects, Go style, over three channels on two other nodes::

    select {
    case n := <-numbers:  results <- ("number", n, n*n)    (on the producer's node)
    case c := <-letters:  results <- ("letter", c, upper)   (on the producer's node)
    case <-quit:          close(results); return            (on the sink's node)
    }

and sends each result with another select, so that a quit also ends a send that waits on a
slow sink. The sink says "enough" by *closing* ``quit``: a receive on a closed channel is
ready at once, in every select waiting on it (Go's ``done`` channel idiom).
"""

from __future__ import annotations

from typing import Any

import anyio

import qchan

__all__ = ["run"]


async def _stage(
    node: qchan.Node,
    numbers: qchan.ReceiveChannel[int],
    letters: qchan.ReceiveChannel[str],
    results: qchan.SendChannel[Any],
    quit: qchan.ReceiveChannel[Any],
) -> None:
    sent = 0
    try:
        while True:
            index, value, _ = await qchan.select(
                qchan.recv(numbers), qchan.recv(letters), qchan.recv(quit)
            )
            if index == 0:
                out: Any = ("number", value, value * value, node.name)
            elif index == 1:
                out = ("letter", value, value.upper(), node.name)
            else:
                break  # quit was closed (or sent to)
            index, _, _ = await qchan.select(qchan.send(results, out), qchan.recv(quit))
            if index == 1:
                break
            sent += 1
        results.close()  # the sink's loop over results ends once it has the rest
    except qchan.QchanError as exc:  # the sink (or the producer) went away
        print(f"subscription ended: {type(exc).__name__}: {exc}", flush=True)
    else:
        print(f"subscription done: {sent} results sent", flush=True)


async def run(node: qchan.Node) -> None:
    """``FUNCTION(node)`` for ``qchan node start --run``."""
    subscribe: qchan.Channel[Any] = qchan.Channel(0)
    node.register("subscribe", subscribe.sender())
    numbers = await node.lookup("numbers", timeout=60)
    letters = await node.lookup("letters", timeout=60)
    async with anyio.create_task_group() as tasks:
        while True:
            message = await subscribe.receive()
            match message:
                case (qchan.SendChannel() as results, qchan.ReceiveChannel() as quit):
                    tasks.start_soon(_stage, node, numbers, letters, results, quit)
                case _:
                    print(f"ignoring a malformed subscription: {message!r}", flush=True)
