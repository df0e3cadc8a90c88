"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _shared_empty_queue_stays_empty() -> Iterator[None]:
    """Channels share one empty deque until they need their own: no test may fill it."""
    from qchan._channel import _UNUSED

    yield
    assert not _UNUSED, "a ChannelState appended to the shared empty deque"
