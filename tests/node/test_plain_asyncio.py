"""A node run by plain ``asyncio.run`` (as most programs do), not by anyio's runner.

anyio's runner marks the whole event loop as asyncio for ``sniffio``; ``asyncio.run`` does not,
so in the loop's protocol callbacks (a link reading, or learning its socket closed) nothing
says which library runs, and anyio's helpers raise there. A link that ended that way once
raised inside ``on_closed``: the peer was never marked as gone and senders waiting for its
credit waited on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import qchan
from tests.node._helpers import make_node


async def _scenario() -> dict[str, Any]:
    ck = qchan.ClusterKey.generate()
    outcome: dict[str, Any] = {}
    async with make_node(ck, "away") as away:
        home = make_node(ck, "home")
        await home.__aenter__()
        stopped = False
        try:
            channel: qchan.Channel[int] = qchan.Channel(1)
            home.register("full", channel)
            await away.connect(home.address)
            handle = await away.lookup("full@home", timeout=5)
            await handle.send(1)  # fills the buffer: the next send waits for credit
            blocked = asyncio.ensure_future(handle.send(2))
            await asyncio.sleep(0.2)
            outcome["blocked"] = not blocked.done()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await home.__aexit__(None, None, None)  # GOAWAY: read in a protocol callback
            stopped = True
            try:
                await asyncio.wait_for(blocked, 2.0)
            except qchan.PeerLost as exc:
                outcome["error"] = exc
            except TimeoutError:
                outcome["error"] = None
            outcome["after"] = loop.time() - started
            outcome["connected"] = [p.name for p in away.peers() if p.connected]
        finally:
            if not stopped:
                await home.__aexit__(None, None, None)
    return outcome


def test_a_home_that_stops_fails_credit_waiters_under_plain_asyncio_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="qchan"):
        outcome = asyncio.run(_scenario())
    assert outcome["blocked"], "the second send should have waited for credit"
    assert isinstance(outcome["error"], qchan.PeerLost), outcome
    assert outcome["after"] < 1.0
    assert outcome["connected"] == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
