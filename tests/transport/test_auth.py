"""Who gets in: the cluster key, trusted sets in both directions, an expected key."""

from __future__ import annotations

import anyio
import pytest

from qchan._errors import AuthenticationError, PeerLost
from qchan.transport import Transport

from ._helpers import (
    CLIENT_KEY,
    OTHER_CLUSTER_KEY,
    SERVER_KEY,
    STRANGER_KEY,
    Inbox,
    Server,
    connect,
    listen,
    wait_for,
)

pytestmark = pytest.mark.anyio


async def test_wrong_cluster_key_is_refused_without_a_word() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        with pytest.raises(AuthenticationError, match="wrong cluster key") as caught:
            await connect(transport, listener.address, cluster_key=OTHER_CLUSTER_KEY)
        assert listener.address in str(caught.value)
        await anyio.sleep(0.05)
        assert server.links == []


async def test_dialler_refuses_an_untrusted_listener_before_revealing_itself() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        with pytest.raises(AuthenticationError, match="cannot authenticate with") as caught:
            await connect(transport, listener.address, trusted=frozenset({STRANGER_KEY.public}))
        assert "trusted" in str(caught.value)
        await anyio.sleep(0.05)
        assert server.links == []


async def test_listener_refuses_an_untrusted_dialler() -> None:
    # XX completes on the dialler's side at message 2, before the listener has checked the
    # dialler's key (message 3): the dialler gets a link, which the listener closes at once.
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server, trusted=frozenset({STRANGER_KEY.public}))
        link = await connect(transport, listener.address)
        inbox = Inbox()
        inbox.attach(link)
        await wait_for(lambda: inbox.errors, within=2)
        assert isinstance(inbox.errors[0], PeerLost)
        assert server.links == []


async def test_trusted_keys_let_their_holders_in_both_ways() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(
            transport, on_link=server, trusted=frozenset({CLIENT_KEY.public, STRANGER_KEY.public})
        )
        link = await connect(transport, listener.address, trusted=frozenset({SERVER_KEY.public}))
        await wait_for(lambda: server.links)
        assert server.links[0].remote_key == CLIENT_KEY.public
        link.close()


async def test_expected_remote_key() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        with pytest.raises(AuthenticationError, match="cannot authenticate with"):
            await connect(transport, listener.address, expected_remote_key=STRANGER_KEY.public)
        await anyio.sleep(0.05)
        assert server.links == []
        link = await connect(transport, listener.address, expected_remote_key=SERVER_KEY.public)
        assert link.remote_key == SERVER_KEY.public
        await wait_for(lambda: server.links)
