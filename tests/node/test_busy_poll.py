"""``Node(busy_poll=...)``: checked at once, and what it turns on (asyncio and uvloop)."""

from __future__ import annotations

import math
from typing import Any

import pytest

import qchan

KEY = qchan.ClusterKey.generate()


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("fast", TypeError, "busy_poll must be a number of seconds, not str"),
        (True, TypeError, "busy_poll must be a number of seconds, not bool"),
        (None, TypeError, "busy_poll must be a number of seconds, not NoneType"),
        (-1e-6, ValueError, "busy_poll must be between 0 and 0.01 seconds"),
        (1.0, ValueError, "busy_poll must be between 0 and 0.01 seconds"),
        (math.nan, ValueError, "busy_poll must be between 0 and 0.01 seconds"),
    ],
)
def test_a_bad_busy_poll_is_refused_at_once(value: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        qchan.Node(cluster_key=KEY, busy_poll=value)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(("busy_poll", "window"), [(None, 50e-6), (0, None), (0.002, 0.002)])
async def test_busy_poll_sets_the_transports_window(
    anyio_backend: str, busy_poll: float | None, window: float | None
) -> None:
    if busy_poll is None:
        node = qchan.Node(cluster_key=KEY)  # the default
    else:
        node = qchan.Node(cluster_key=KEY, busy_poll=busy_poll)
    async with node:
        poller = node._transport._poller  # type: ignore[union-attr]
        assert (poller.window if poller is not None else None) == window
