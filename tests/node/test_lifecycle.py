"""Leaving a node's ``async with``: by an exception, or by a cancellation from outside.

API.md: an exception raised inside ``async with qchan.Node(...)`` comes out as itself, and
cancellation (``anyio.fail_after``) works on every blocking call, so a node must also be left
cleanly when the scope around it is cancelled: that is how a timeout around a whole program
ends it. The cancelled cases run in a subprocess: a broken exit can corrupt trio's state, and
the test runner's with it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import anyio
import pytest

import qchan
from tests.node._helpers import make_node

BOUND = 10.0


class Boom(Exception):
    pass


@pytest.mark.anyio
async def test_an_exception_inside_a_node_comes_out_as_itself() -> None:
    async def run() -> None:
        ck = qchan.ClusterKey.generate()
        async with make_node(ck, "a") as a, make_node(ck, "b", peers=[a.address]) as b:
            channel: qchan.Channel[Any] = qchan.Channel(1)
            a.register("jobs", channel)
            handle = await b.lookup("jobs")
            await handle.send("in the buffer")
            raise Boom

    with anyio.fail_after(BOUND), pytest.raises(Boom):
        await run()


_TIMED_OUT = """
import sys
import anyio
import qchan


async def main() -> None:
    ck = qchan.ClusterKey.generate()
    try:
        with anyio.fail_after(0.3):
            async with qchan.Node(cluster_key=ck, name="a") as a:
                async with qchan.Node(cluster_key=ck, name="b", peers=[a.address]) as b:
                    channel = qchan.Channel(0)
                    a.register("jobs", channel)
                    handle = await b.lookup("jobs")
                    await handle.receive()  # nobody sends: the deadline ends it
    except TimeoutError:
        print("timed out cleanly")


anyio.run(main, backend=sys.argv[1])
print("done")
"""


@pytest.mark.parametrize(
    "backend",
    [
        "asyncio",
        pytest.param(
            "trio",
        ),
    ],
)
def test_a_deadline_around_nodes_ends_them_cleanly(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_TIMED_OUT), backend],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["timed", "out", "cleanly", "done"], result.stdout
    assert "Error" not in result.stderr, result.stderr[-3000:]
