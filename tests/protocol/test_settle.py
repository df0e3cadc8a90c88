"""Section 6.6 of docs/protocol.md: a DELIVER lost with its link, and SETTLE.

At the home (a real :class:`qchan._session.Session`, fed a requester's frames): a buffered value
on its way to a requester whose link dies keeps its slot until the requester says whether it
took it on that link; it counts as taken only if the requester is gone for good or restarts. A
sender waiting on such a handoff fails at once with ``DeliveryUncertain``. At the requester (a
real Session too): a link that ends is settled, by its id, with exactly the DELIVERs taken on it,
at once on any other link and again on every new one.

The links of these tests are numbered: ``link_id(n)`` names the n-th link at both ends.
"""

from __future__ import annotations

import struct
import time
from collections import deque

import msgpack
import pytest

from qchan import Channel, DeliveryUncertain, PeerLost, ProtocolError, WouldBlock
from qchan._operation import DONE, Operation
from qchan.protocol import Frame, GoawayReason, Kind, Rights

from ._sessions import CHAN, Home, Requester, link_id, lose, packed


def settle(link: int, *ops: int) -> Frame:
    """alpha's SETTLE of its ``link``-th link, having taken ``ops`` on it."""
    return [Kind.SETTLE, link_id(link), struct.pack(f">{len(ops)}Q", *ops)]


EMPTY: Frame = settle(1)  # the first link ended, nothing taken on it


def settled_ops(frame: Frame, link: int = 1) -> list[int]:
    """The op ids a SETTLE of the ``link``-th link lists, in its order."""
    assert frame[:2] == [Kind.SETTLE, link_id(link)], frame
    data = frame[2]
    assert len(data) % 8 == 0
    return list(struct.unpack(f">{len(data) // 8}Q", data))


def delivering(capacity: float, *values: str, peer_timeout: float = 3.0) -> Home:
    """beta's channel holds ``values``; alpha's RECV 1 got a DELIVER of the first of them, and
    the link died before alpha answered."""
    home = Home(capacity, Rights.BOTH, peer_timeout=peer_timeout)
    home.open()
    for value in values:
        home.channel.send_nowait(value)
    assert home.says([Kind.RECV, 1, CHAN]) == [[Kind.DELIVER, 1, packed(values[0])]]
    home.lose()
    return home


def check_parked(home: Home, *buffered: str) -> None:
    """One buffered value is parked for alpha: in flight, its slot still counted."""
    state = home.state
    assert [state.in_flight, state.in_flight_buffered] == [1, 1]
    assert home.buffer() == list(buffered)
    assert state.free_slots() == state.capacity - len(buffered) - 1 - state.reserved
    assert {link: list(ops) for link, ops in home.alpha.unsettled_deliveries.items()} == {
        link_id(1): [1]
    }


def check_settled(home: Home, *buffered: str) -> None:
    state = home.state
    assert [state.in_flight, state.in_flight_buffered] == [0, 0]
    assert home.buffer() == list(buffered)
    assert state.free_slots() == state.capacity - len(buffered) - state.reserved
    assert home.alpha.unsettled_deliveries == {}


# --- at the home --------------------------------------------------------------------------


def test_a_delivery_lost_with_its_link_keeps_its_slot_until_the_requester_says() -> None:
    home = delivering(3, "a", "b", peer_timeout=0.5)
    check_parked(home, "b")
    # the slot still counts: one more value fills the channel
    home.channel.send_nowait("c")
    with pytest.raises(WouldBlock):
        home.channel.send_nowait("d")
    # a local receiver gets the next value, not the one on its way
    assert home.channel.receive_nowait() == "b"
    home.housekeep(0.3)  # away, but for less than 2 x peer_timeout: not gone
    check_parked(home, "c")
    home.connect()
    assert home.settled == [settle(1)]  # (beta's own SETTLE: it took nothing of alpha's)
    check_parked(home, "c")  # a new link alone settles nothing
    home.says(settle(3))  # nor a SETTLE of another link
    check_parked(home, "c")


def test_a_settle_that_does_not_list_it_returns_the_value_to_the_front() -> None:
    home = delivering(4, "a", "b", "c")
    home.connect()
    home.open()
    assert home.says(EMPTY) == []  # SETTLE has no answer
    check_settled(home, "a", "b", "c")
    # ... and ops it does list that name no parked delivery are ignored
    assert home.says(settle(1, 7, 2**64 - 1)) == []
    check_settled(home, "a", "b", "c")
    # the value is delivered again, first
    assert home.says([Kind.RECV, 2, CHAN]) == [[Kind.DELIVER, 2, packed("a")]]


def test_a_settle_that_lists_it_counts_it_as_taken() -> None:
    home = delivering(4, "a", "b")
    home.connect()
    assert home.says(settle(1, 9, 1)) == []
    check_settled(home, "b")
    # settled once: a later SETTLE changes nothing
    assert home.says(EMPTY) == []
    check_settled(home, "b")


def test_a_settle_frees_a_slot_for_a_blocked_sender() -> None:
    home = delivering(2, "a", "b")
    blocked = Operation()
    assert not home.state.poll_send("c")  # full: "b" buffered, "a" in flight
    home.state.wait_send(blocked, 0, "c")
    home.connect()
    home.says(settle(1, 1))
    assert [blocked.state, blocked.error] == [DONE, None]  # its value moved in
    check_settled(home, "b", "c")


def test_it_counts_as_taken_once_the_requester_is_gone_for_twice_the_peer_timeout() -> None:
    home = delivering(4, "a", "b", peer_timeout=0.1)
    lost = time.monotonic()
    home.housekeep(5.0, until=lambda: home.state.in_flight == 0)
    assert time.monotonic() - lost > 2 * 0.1
    check_settled(home, "b")  # it may have taken it: never delivered twice
    # back after all (a long partition): its SETTLE finds nothing to settle
    home.connect()
    home.open()
    assert home.says(EMPTY) == []
    check_settled(home, "b")


def test_it_counts_as_taken_at_once_when_the_requester_restarts() -> None:
    home = delivering(4, "a", "b")
    check_parked(home, "b")
    home.alpha.adopt_incarnation(b"alpha, run two.")  # what a new link's Hello says (6.1)
    check_settled(home, "b")


def test_two_deliveries_lost_with_one_link_are_settled_each_by_the_settle() -> None:
    home = Home(8, Rights.BOTH)
    home.open()
    for value in "abcd":
        home.channel.send_nowait(value)
    answers = home.says(*([Kind.RECV, op, CHAN] for op in (1, 2, 3)))
    assert answers == [[Kind.DELIVER, op, packed(v)] for op, v in [(1, "a"), (2, "b"), (3, "c")]]
    home.lose()
    assert [home.state.in_flight_buffered, home.buffer()] == [3, ["d"]]
    home.connect()
    home.says(settle(1, 2))
    assert home.state.in_flight == 0
    assert home.buffer() == ["a", "c", "d"]  # back ahead of "d", in order ("b" was taken)


def test_a_rendezvous_sender_waiting_on_the_handoff_fails_at_once() -> None:
    home = Home(0, Rights.BOTH)
    home.open()
    assert home.says([Kind.RECV, 1, CHAN]) == []  # nothing yet: alpha's receive waits
    sender = Operation()
    assert not home.state.poll_send("x")
    home.state.wait_send(sender, 0, "x")
    assert home.link.sent == [[Kind.DELIVER, 1, packed("x")]]
    assert sender.state != DONE  # blocked until alpha answers
    home.lose()
    assert isinstance(sender.error, DeliveryUncertain)  # at once, not parked
    assert home.alpha.unsettled_deliveries == {}
    assert home.state.in_flight == 0
    # alpha's SETTLE, listing it or not, changes nothing: it counted as taken
    home.connect()
    home.says(settle(1, 1))
    assert [home.state.in_flight, home.buffer(), home.state.senders] == [0, [], deque()]


def test_a_buffered_channels_sender_whose_value_went_straight_to_the_receiver_fails() -> None:
    # capacity 1: "a" is on its way to alpha's RECV 1 and holds the only slot; alpha's RECV 2
    # waits; a sender that comes now hands its value straight to RECV 2 and waits on it
    home = Home(1, Rights.BOTH)
    home.open()
    home.channel.send_nowait("a")
    assert home.says([Kind.RECV, 1, CHAN], [Kind.RECV, 2, CHAN]) == [[Kind.DELIVER, 1, packed("a")]]
    sender = Operation()
    assert not home.state.poll_send("x")  # no free slot
    home.state.wait_send(sender, 0, "x")
    assert home.link.sent == [[Kind.DELIVER, 2, packed("x")]]
    assert sender.state != DONE
    home.lose()
    assert isinstance(sender.error, DeliveryUncertain)  # at once
    check_parked(home)  # ... while "a", from the buffer, is parked
    home.connect()
    home.says(settle(1, 2))  # (taken or not, "x" counted as taken: nothing changes for it)
    check_settled(home, "a")


def test_a_remote_sender_waiting_on_the_handoff_fails_with_failed_5() -> None:
    # alpha both sends (a plain SEND on a rendezvous channel) and receives, on two links; the
    # receiving link dies with the DELIVER of alpha's own value outstanding
    home = Home(0, Rights.BOTH)
    home.open()
    receiving, receiving_link = home.session, home.link
    home.says([Kind.RECV, 1, CHAN])
    home.connect()  # (a duplicate link, kept until idle: the SEND goes on it)
    home.open()
    assert home.says([Kind.SEND, 2, CHAN, 0, packed("x")]) == []
    delivered, receiving_link.sent = receiving_link.sent, []
    assert delivered == [[Kind.DELIVER, 1, packed("x")]]
    lose(receiving)
    (failed,) = [frame for frame in home.link.sent if frame[0] != Kind.SETTLE]
    assert failed[:3] == [Kind.FAILED, 2, DeliveryUncertain.code]
    assert home.alpha.unsettled_deliveries == {}


@pytest.mark.parametrize("length", [1, 7, 9, 15, 17])
def test_a_settle_not_made_of_8_byte_ids_closes_the_link(length: int) -> None:
    home = delivering(4, "a", "b")
    home.connect()
    with pytest.raises(AssertionError, match=r"PROTOCOL_ERROR.*SETTLE must hold 8-byte"):
        home.says([Kind.SETTLE, link_id(1), bytes(length - 1) + b"\x01"])
    check_parked(home, "b")  # nothing settled by it


@pytest.mark.parametrize("length", [0, 7, 9, 64])
def test_a_settle_naming_a_link_by_other_than_8_bytes_closes_the_link(length: int) -> None:
    home = delivering(4, "a", "b")
    home.connect()
    with pytest.raises(AssertionError, match=r"PROTOCOL_ERROR.*SETTLE must name a link by 8"):
        home.says([Kind.SETTLE, bytes(length), b""])
    check_parked(home, "b")


def test_a_settle_of_a_link_still_up_at_the_home_closes_it_and_counts_there() -> None:
    # beta has not yet seen the old link end when alpha, back on a new one, says it took op 1
    # on it (its TAKEN is still on its way, or lost): the old link is over for alpha, so beta
    # closes it, and what was on its way there is settled by what alpha said
    home = Home(8, Rights.BOTH)
    home.open()
    for value in "ab":
        home.channel.send_nowait(value)
    assert home.says([Kind.RECV, 1, CHAN], [Kind.RECV, 2, CHAN]) == [
        [Kind.DELIVER, 1, packed("a")],
        [Kind.DELIVER, 2, packed("b")],
    ]
    old, old_link = home.session, home.link
    old_link.may_close = True
    home.connect()
    assert home.says(settle(1, 1)) == []
    assert old_link.closed_for is not None
    assert old_link.closed_for[0] == GoawayReason.DUPLICATE
    lose(old)  # (what the link's close leads to)
    check_settled(home, "b")  # "a" taken, "b" back: nothing waits for 2 x peer_timeout


def test_a_settle_of_one_link_leaves_a_later_links_deliveries_parked() -> None:
    # op 1 was lost with link 1 and settled; op 2, on link 2, is lost too: only alpha's SETTLE
    # of link 2 can say whether it took it (it may take it on link 2 after settling link 1)
    home = delivering(8, "a", "b")
    home.connect()
    home.says(EMPTY)
    check_settled(home, "a", "b")
    home.open()
    assert home.says([Kind.RECV, 2, CHAN]) == [[Kind.DELIVER, 2, packed("a")]]
    home.lose()
    assert home.alpha.unsettled_deliveries.keys() == {link_id(2)}
    home.connect()
    home.says(settle(1, 2))  # (said again: it names link 1, whatever it lists)
    assert home.state.in_flight_buffered == 1
    home.says(settle(2, 2))
    check_settled(home, "b")


def test_an_op_id_reused_on_another_link_parks_apart() -> None:
    # op ids are per peer, but a peer that reuses one (a bug, or on purpose) must not make a
    # parked value vanish: each link's deliveries are parked under that link
    home = delivering(8, "a", "b", "c")
    home.connect()
    home.open()
    assert home.says([Kind.RECV, 1, CHAN]) == [[Kind.DELIVER, 1, packed("b")]]
    home.lose()
    assert home.state.in_flight_buffered == 2
    home.connect()
    home.says(settle(1), settle(2))
    check_settled(home, "a", "b", "c")


# --- at the requester ---------------------------------------------------------------------


def test_the_next_link_starts_with_a_settle_of_exactly_the_deliveries_taken() -> None:
    home = Home(8, Rights.BOTH)
    alpha = Requester(home.ref)
    first = alpha.sent()
    assert [frame[0] for frame in first] == [Kind.OPEN]  # the first link: nothing to settle
    home.says(*first)
    for value in "abcde":
        home.channel.send_nowait(value)
    receives = [alpha.receive() for _ in range(4)]
    recvs = alpha.sent()
    assert recvs == [[Kind.RECV, op, CHAN] for op in (1, 2, 3, 4)]
    delivers = home.says(*recvs)
    assert [frame[:2] for frame in delivers] == [[Kind.DELIVER, op] for op in (1, 2, 3, 4)]
    # op 1 taken; op 2 withdrawn meanwhile (refused); op 3 taken; op 4's DELIVER never arrives
    receives[1].waiters[0].withdraw()
    assert alpha.sent() == [[Kind.CANCEL, 2]]
    answers = alpha.hears(*delivers[:3])
    assert answers == [[Kind.TAKEN, 1], [Kind.REFUSED, 2], [Kind.TAKEN, 3]]
    # the link dies before beta hears any of it
    alpha.lose()
    home.lose()
    assert [receives[0].value, receives[2].value] == ["a", "c"]
    assert isinstance(receives[3].error, PeerLost)
    assert home.state.in_flight_buffered == 4
    alpha.connect()
    home.connect()
    second = alpha.sent()
    settle_frame, *rest = second
    assert sorted(settled_ops(settle_frame, link=1)) == [1, 3]
    assert [frame[0] for frame in rest] == [Kind.OPEN]
    home.says(*second)
    assert home.state.in_flight == 0
    assert sorted(home.buffer()) == ["b", "d", "e"]  # "a" and "c" taken, never again
    # new operations go on numbering where the lost link left off: ids are unique per peer
    alpha.receive()
    assert alpha.sent() == [[Kind.RECV, 5, CHAN]]
    alpha.session.lookup("jobs", Channel(1))
    assert alpha.sent() == [[Kind.LOOKUP, 6, "jobs"]]
    # said again on every later link (a SETTLE can be lost with its link; a home that has
    # settled that link finds nothing more to settle), with one for each link lost since
    alpha.lose()
    home.lose()
    alpha.connect()
    third = alpha.sent()
    assert sorted(settled_ops(third[0], link=1)) == [1, 3]
    assert settled_ops(third[1], link=2) == []  # (op 5's DELIVER never came)
    assert [frame[0] for frame in third[2:]] == [Kind.OPEN]


def test_a_link_that_ends_while_another_is_up_is_settled_on_that_one_at_once() -> None:
    home = Home(8, Rights.BOTH)
    alpha = Requester(home.ref)
    home.says(*alpha.sent())
    links = {1: (alpha.session, alpha.link)}
    alpha.connect()  # a second link (both dialled at once, say): one of them carries new work
    links[2] = (alpha.session, alpha.link)
    working = 1 if alpha.beta.session is links[1][0] else 2
    other = 3 - working
    session, link = links[working]
    link.sent.clear()
    links[other][1].sent.clear()
    home.channel.send_nowait("a")
    receive = alpha.receive()
    (recv,) = link.sent
    assert recv[0] == Kind.RECV
    link.sent.clear()
    session.on_frames([[Kind.DELIVER, recv[1], packed("a")]])
    assert link.sent == [[Kind.TAKEN, recv[1]]]
    assert receive.value == "a"
    # the working link ends: the other one carries work from now on (so it opens the
    # channel there), and the ended one is settled on it at once
    lose(session)
    sent = links[other][1].sent
    assert [frame[0] for frame in sent] == [Kind.OPEN, Kind.SETTLE]
    assert sent[-1] == settle(working, recv[1])
    # and that one ending too: both are said on the next link
    lose(links[other][0])
    alpha.connect()
    assert sorted(alpha.sent()[:2]) == sorted([settle(working, recv[1]), settle(other)])


def test_the_lost_links_remembered_are_the_eight_most_recent() -> None:
    home = Home(8, Rights.BOTH)
    alpha = Requester(home.ref)
    for _ in range(10):
        alpha.lose()
        alpha.connect()
    said = [frame for frame in alpha.sent() if frame[0] == Kind.SETTLE]
    assert said == [settle(link) for link in range(3, 11)]


def test_the_settle_comes_before_the_opens_and_the_resent_pushes() -> None:
    home = Home(8, Rights.BOTH)
    alpha = Requester(home.ref)
    home.says(*alpha.sent())
    assert alpha.hears([Kind.CREDIT, CHAN, 0, 4]) == []
    assert alpha.endpoint.poll_send("x")  # under credit: returns at once
    (push,) = alpha.sent()
    assert push == [Kind.PUSH, CHAN, 1, packed("x")]
    home.channel.send_nowait("a")
    alpha.receive()
    alpha.hears(*home.says(*alpha.sent()))  # RECV 1, DELIVER, TAKEN (lost)
    alpha.lose()
    alpha.connect()
    assert [frame[0] for frame in alpha.sent()] == [Kind.SETTLE, Kind.OPEN, Kind.PUSH]


def test_a_settle_of_many_ids_keeps_the_most_recent_ten_thousand() -> None:
    home = Home(8, Rights.BOTH)
    alpha = Requester(home.ref)
    alpha.sent()  # (beta is not involved: alpha hears DELIVERs for its RECVs)
    count = 10_050
    receives = [alpha.receive() for _ in range(count)]
    assert len(alpha.sent()) == count
    answers = alpha.hears(*([Kind.DELIVER, op, packed(op)] for op in range(1, count + 1)))
    assert answers == [[Kind.TAKEN, op] for op in range(1, count + 1)]
    assert [op.value for op in receives] == list(range(1, count + 1))
    alpha.lose()
    alpha.connect()
    settle_frame = alpha.sent()[0]
    assert sorted(settled_ops(settle_frame)) == list(range(count - 10_000 + 1, count + 1))
    assert len(settle_frame[2]) == 80_000  # (more than a message holds: it goes as PARTs)


# --- found by the chaos harness and the fuzzer ----------------------------------------------


def test_a_settle_lost_with_its_link_is_said_again() -> None:
    home = Home(8, Rights.BOTH)
    alpha = Requester(home.ref)
    home.says(*alpha.sent())
    home.channel.send_nowait("a")
    taken = alpha.receive()
    assert alpha.hears(*home.says(*alpha.sent())) == [[Kind.TAKEN, 1]]  # (lost)
    assert taken.value == "a"
    alpha.lose()
    home.lose()
    alpha.connect()
    assert settled_ops(alpha.sent()[0]) == [1]  # lost with this link too
    alpha.lose()
    alpha.connect()
    home.connect()
    home.lose()
    home.connect()  # (beta's links: 2 and 3 too)
    home.says(*alpha.sent())
    assert home.buffer() == []  # "a" was taken: it must not be delivered again


def test_a_settle_that_overtakes_the_old_link_ending_at_the_home_still_counts() -> None:
    home = Home(8, Rights.BOTH, peer_timeout=0.1)
    home.open()
    home.channel.send_nowait("a")
    assert home.says([Kind.RECV, 1, CHAN]) == [[Kind.DELIVER, 1, packed("a")]]
    old = home.session
    home.link.may_close = True
    home.connect()  # alpha is back on a new link; the home has not seen the old one end yet
    home.says(settle(1, 1))  # alpha took op 1 (its TAKEN is lost with the old link)
    lose(old)
    home.housekeep(1.0)  # alpha stays connected: never gone
    assert home.state.in_flight == 0
    assert home.buffer() == []


def test_an_undecodable_value_taken_on_a_lost_link_is_settled_as_taken() -> None:
    home = Home(8, Rights.BOTH)
    alpha = Requester(home.ref)
    home.says(*alpha.sent())
    failed = alpha.receive()
    alpha.sent()
    undecodable = msgpack.packb(msgpack.ExtType(99, b""))
    assert alpha.hears([Kind.DELIVER, 1, undecodable]) == [[Kind.TAKEN, 1]]
    assert isinstance(failed.error, ProtocolError)
    alpha.lose()
    alpha.connect()
    assert settled_ops(alpha.sent()[0]) == [1]


def test_values_a_settle_returns_keep_their_order() -> None:
    home = Home(8, Rights.BOTH)
    home.open()
    for value in "abc":
        home.channel.send_nowait(value)
    home.says([Kind.RECV, 1, CHAN], [Kind.RECV, 2, CHAN])
    home.lose()
    home.connect()
    home.says(EMPTY)
    assert home.buffer() == ["a", "b", "c"]
