"""Section 6.7 of docs/protocol.md, frame by frame: a home's credit windows.

A real home side (:class:`qchan._session.Session`) is fed a requester's frames; what it answers
and what it reserves are checked against the rules: the window widens once at most half the
target is left, a CREDIT answers a change (or a used-up window), duplicates are dropped,
sends past the window are buffered rather than lost, a new link hears everything again,
RELEASE and a restart give the slots back, an OPEN of a closed channel hears SHUT.
"""

from __future__ import annotations

import time

import pytest

from qchan import Node, WouldBlock
from qchan._peer import Peer
from qchan._session import Session
from qchan.protocol import Kind, Rights

from ._helpers import CLUSTER_KEY, INITIATOR_KEY, RESPONDER_KEY
from ._sessions import CHAN, Home, RecordingLink, packed

# credit_target(8) == 4 and credit_target(2) == 1 (checked in test_spec.py)


def test_the_window_widens_once_at_most_half_the_target_is_left() -> None:
    home = Home(8)
    assert home.open() == []
    # no window yet: a plain send, then a window of 4 (all free slots up to the target)
    assert home.send(1, "v0") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 0, 4]]
    home.check_reserved()
    assert home.push(1) == []  # 3 seqs left, more than half: no news, no answer
    home.check_reserved()
    assert home.push(2) == [[Kind.CREDIT, CHAN, 2, 6]]  # 2 left: 2 more, and seqs confirmed
    home.check_reserved()
    assert home.push(3) == []
    # 1 seq left; only 1 slot is free (6 buffered, 1 reserved): the window widens by 1
    assert home.push(4, 5) == [[Kind.CREDIT, CHAN, 5, 7]]
    home.check_reserved()
    # the window used up and nothing free: answered all the same, without room
    assert home.push(6, 7) == [[Kind.CREDIT, CHAN, 7, 7]]
    assert [home.state.buffered(), home.state.reserved] == [8, 0]
    assert home.buffer() == [f"v{seq}" for seq in range(8)]


def test_duplicates_are_dropped_and_answered_only_with_news() -> None:
    home = Home(8)
    home.open()
    home.send(1, "v0")
    assert home.push(1, 2) == [[Kind.CREDIT, CHAN, 2, 6]]
    assert home.push(1, 2) == []  # nothing new: the requester knows all there is
    assert home.push(2, 3) == []  # one new (3 left: no widening, no answer)
    assert home.buffer() == ["v0", "v1", "v2", "v3"]
    assert (home.account.last_seq, home.account.window) == (3, 6)
    home.check_reserved()


def test_a_new_link_hears_the_window_again() -> None:
    home = Home(8)
    home.open()
    home.send(1, "v0")
    assert home.push(1, 2) == [[Kind.CREDIT, CHAN, 2, 6]]
    home.lose()
    home.connect()
    # the record survives the link; what was told on the old one does not
    assert home.open() == []
    assert home.push(3) == [[Kind.CREDIT, CHAN, 3, 6]]  # no widening (3 left), told again
    assert home.push(4) == [[Kind.CREDIT, CHAN, 4, 7]]  # (1 slot was free)
    home.check_reserved()
    assert [home.channel.receive_nowait() for _ in range(5)] == [f"v{seq}" for seq in range(5)]
    # a plain SEND (completing) is an occasion to tell it too
    home.lose()
    home.connect()
    home.open()
    assert home.send(1, "v5") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 4, 7]]
    assert home.buffer() == ["v5"]
    home.check_reserved()


def test_a_push_past_a_released_window_is_buffered_rather_than_lost() -> None:
    home = Home(8, peer_timeout=0.1)
    home.open()
    assert home.send(1, "v0") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 0, 4]]
    assert home.push(1) == []  # (3 of 4 left: no top-up yet)
    home.lose()
    home.housekeep(5.0, until=lambda: home.state.reserved == 0)  # gone: window released
    home.connect()  # back after all: it still believes in seqs up to 4
    home.open()
    answer = home.push(2, 3)
    assert home.buffer() == ["v0", "v1", "v2", "v3"]  # no reserved slot, but nothing lost
    assert [frame[:3] for frame in answer] == [[Kind.CREDIT, CHAN, 3]]  # a window from seq 3
    home.check_reserved()


def test_a_push_beyond_any_window_ever_told_closes_the_link() -> None:
    home = Home(2)
    home.open()
    assert home.send(1, "v0") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 0, 1]]
    assert home.push(1) == [[Kind.CREDIT, CHAN, 1, 1]]  # full: confirmed, no room
    # seq 2 was never granted: a peer pushing it would grow the buffer without bound
    with pytest.raises(AssertionError, match=r"PROTOCOL_ERROR.*beyond any credit given"):
        home.push(2)  # (the recording link raises when the session closes it)
    assert home.buffer() == ["v0", "v1"]


def test_release_gives_the_reserved_slots_back() -> None:
    home = Home(8)
    home.open()
    home.send(1, "v0")
    assert home.push(1, 2) == [[Kind.CREDIT, CHAN, 2, 6]]
    assert home.state.reserved == 4
    assert home.says([Kind.RELEASE, CHAN]) == []  # (no RETURN, no answer)
    assert home.state.reserved == 0
    assert home.state.free_slots() == 8 - 3
    assert len(home.node.exports) == 0  # alpha was its only holder
    # a new handle starts afresh: no window (a plain send), then seqs from 1 again
    home.open()
    assert home.send(1, "w0") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 0, 4]]
    assert home.push(1) == []
    assert home.buffer() == ["v0", "v1", "v2", "w0", "v1"]
    home.check_reserved()


def test_a_restarted_requester_is_released_at_once() -> None:
    home = Home(8)
    home.open()
    home.send(1, "v0")
    assert home.push(1, 2) == [[Kind.CREDIT, CHAN, 2, 6]]
    assert [home.state.reserved, len(home.node.exports)] == [4, 1]
    home.lose()
    home.alpha.adopt_incarnation(b"alpha, run two.")  # what a new link's Hello says (6.1)
    assert [home.state.reserved, len(home.node.exports)] == [0, 0]
    assert home.alpha.credit_accounts == {}
    home.connect()
    home.open()  # the new run looked the channel up again
    assert home.send(1, "w0") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 0, 4]]
    assert home.push(1, 2) == []  # its seqs start over (2 left, but no slot free)
    assert home.push(3, 4) == [[Kind.CREDIT, CHAN, 4, 4]]
    assert home.buffer() == ["v0", "v1", "v2", "w0", "v1", "v2", "v3", "v4"]
    home.check_reserved()


def test_a_requester_gone_for_twice_the_peer_timeout_is_released() -> None:
    home = Home(8, peer_timeout=0.1)
    home.open()
    home.send(1, "v0")
    assert home.push(1, 2) == [[Kind.CREDIT, CHAN, 2, 6]]
    assert [home.state.reserved, len(home.node.exports)] == [4, 1]
    home.lose()
    lost = time.monotonic()
    home.housekeep(5.0, until=lambda: home.state.reserved == 0)
    assert time.monotonic() - lost > 2 * 0.1
    assert len(home.node.exports) == 0  # no longer a holder
    assert home.state.free_slots() == 8 - 3


def test_a_requester_back_within_twice_the_peer_timeout_keeps_its_window() -> None:
    home = Home(8, peer_timeout=0.5)
    home.open()
    home.send(1, "v0")
    assert home.push(1, 2) == [[Kind.CREDIT, CHAN, 2, 6]]
    home.lose()
    home.housekeep(0.3)  # (one look, about 0.25 s in: away for less than 1 s)
    assert [home.state.reserved, len(home.node.exports)] == [4, 1]
    home.connect()
    home.housekeep(0.8)  # connected again: never gone, however long it was away in all
    home.open()
    assert home.push(2, 3) == [[Kind.CREDIT, CHAN, 3, 6]]
    assert home.buffer() == ["v0", "v1", "v2", "v3"]


def test_a_requester_back_after_being_gone_is_still_deduplicated() -> None:
    home = Home(8, peer_timeout=0.1)
    home.open()
    home.send(1, "v0")
    assert home.push(1, 2, 3) == [[Kind.CREDIT, CHAN, 3, 7]]  # (lost with the link)
    home.lose()
    home.housekeep(5.0, until=lambda: home.state.reserved == 0)  # gone: its slots released
    home.connect()  # the same run after all (a long partition): it resends seqs 1 to 3
    home.open()
    answer = home.push(1, 2, 3)
    assert home.buffer() == ["v0", "v1", "v2", "v3"]  # never twice
    assert [frame[:3] for frame in answer] == [[Kind.CREDIT, CHAN, 3]]
    home.check_reserved()


def test_an_open_of_a_closed_channel_is_answered_shut() -> None:
    home = Home(8, Rights.BOTH)
    assert home.open() == []
    home.channel.close()
    assert home.link.sent == [[Kind.SHUT, CHAN]]  # to every link it is open on
    home.lose()
    home.connect()
    assert home.open() == [[Kind.SHUT, CHAN]]  # ... and to a requester that was away


def test_a_credit_for_a_channel_no_longer_held_is_ignored() -> None:
    # alpha's side: a CREDIT for chan 9, which alpha has released (or never held)
    alpha = Node(cluster_key=CLUSTER_KEY, key=INITIATOR_KEY)
    beta = alpha._peers[RESPONDER_KEY.public] = Peer(alpha, RESPONDER_KEY.public)
    link = RecordingLink(1)
    session = Session(alpha, beta, link)  # type: ignore[arg-type]
    beta.attach(session)
    session.on_frames([[Kind.CREDIT, 9, 0, 4], [Kind.CREDIT, 9, 3, 8]])
    assert link.sent == []  # nothing handed back: its RELEASE did that
    assert not session.closed


def test_a_sender_never_waits_on_a_channel_that_is_not_full_for_unused_credit() -> None:
    # Found by the chaos harness: every free slot of a buffered channel promised to remote
    # senders that had stopped sending, and a sender (here a local one; a plain SEND alike)
    # waited for good on a channel holding one value. The promises are taken back; what is
    # sent under them is buffered all the same, nothing lost.
    home = Home(2, Rights.BOTH)
    home.open()
    assert home.send(1, "v0") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 0, 1]]
    assert [home.buffer(), home.state.reserved, home.state.free_slots()] == [["v0"], 1, 0]
    home.channel.send_nowait("local")  # the buffer holds 1 of 2: a send must not block
    assert [home.buffer(), home.state.reserved] == [["v0", "local"], 0]
    assert home.account.window == home.account.last_seq == 0  # the window taken back
    home.push(1)  # alpha's send under the window it was told still gets in
    assert home.buffer() == ["v0", "local", "v1"]  # (over capacity by that one value)
    with pytest.raises(WouldBlock):
        home.channel.send_nowait("full")  # now full, truly
    assert [home.channel.receive_nowait() for _ in range(3)] == ["v0", "local", "v1"]


def test_a_plain_send_done_at_once_still_may_not_reuse_a_waiting_operations_id() -> None:
    # A plain SEND that can complete at once (here: room in the buffer) makes no waiter at the
    # home; its operation id must still not be one the peer has waiting there.
    home = Home(8, Rights(Rights.SEND | Rights.RECEIVE))
    home.open()
    assert home.send(1, "a") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 0, 4]]
    assert home.says([Kind.RECV, 5, CHAN]) == [[Kind.DELIVER, 5, packed("a")]]
    home.link.may_close = True
    home.send(5, "b")  # operation 5 is the receive above, its delivery not yet answered
    assert home.link.closed_for is not None
    assert "already in use" in str(home.link.closed_for)
    assert home.buffer() == []  # and the value was not taken in
