"""Which link carries a peer's work, when links come up and end in awkward orders.

A link's first frames (sent with the handshake) are handled as it starts, and a link can end
before it starts; either way, the peer must never be left with an ended link as the one that
carries its work (every later operation to it would wait for good: found by the chaos run).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from qchan import PeerLost, QchanError
from qchan._session import Session
from qchan.protocol import Frame, Kind

from ._helpers import INITIATOR_HELLO, INITIATOR_KEY
from ._sessions import CHAN, Home, RecordingLink


class EarlyLink(RecordingLink):
    """A link that brings ``early`` frames with its handshake and then, perhaps, its end."""

    def __init__(self, number: int, early: list[Frame], ends: QchanError | None) -> None:
        super().__init__(number)
        self.remote_key = INITIATOR_KEY.public
        self.remote_hello = INITIATOR_HELLO
        self.early = early
        self.ends = ends
        self.may_close = True

    def start(
        self, on_frames: Callable[[list[Frame]], None], on_closed: Callable[[QchanError], None]
    ) -> None:
        # As transport.Link.start does: what came before is delivered at once, in order.
        if self.early:
            on_frames(self.early)
        if self.ends is not None or self.closed_for is not None:
            on_closed(self.ends or PeerLost("closed for a protocol error"))


def _link_up(home: Home, link: EarlyLink) -> None:
    async def up() -> None:
        home.node._running = True  # (as if started: only its link handling is exercised)
        try:
            home.node._on_link(link)  # type: ignore[arg-type]
        finally:
            home.node._running = False

    anyio.run(up)


def _session_of(home: Home, link: EarlyLink) -> Session | None:
    return next((s for s in home.alpha.sessions if s.link.link_id == link.link_id), None)


def test_a_link_that_ended_before_it_started_carries_nothing() -> None:
    home = Home(8)
    home.lose()  # (the first link is gone: the new one would carry the work)
    link = EarlyLink(2, [], PeerLost("connection reset by the peer"))
    _link_up(home, link)
    assert home.alpha.session is None
    assert _session_of(home, link) is None


def test_a_link_closed_for_its_first_frames_carries_nothing() -> None:
    home = Home(8)
    home.lose()
    # A credited send beyond any window told: a protocol error, handled as the link starts.
    link = EarlyLink(2, [[Kind.PUSH, CHAN, 5, b"\xa1x"]], None)
    _link_up(home, link)
    assert link.closed_for is not None
    assert home.alpha.session is None
    assert _session_of(home, link) is None


def test_a_link_with_sound_first_frames_carries_the_work() -> None:
    home = Home(8)
    home.lose()
    link = EarlyLink(2, [[Kind.LOOKUP, 7, "nothing-here"]], None)
    _link_up(home, link)
    assert link.closed_for is None
    assert [Kind.NOTFOUND, 7] in link.sent  # answered on it
    assert home.alpha.session is not None
    assert home.alpha.session.link.link_id == link.link_id
