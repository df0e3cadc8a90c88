"""Section 6.3 and 6.7 of docs/protocol.md: a RELEASE lost with its link.

Found by the chaos harness: a requester's RELEASE went out just before its link died, so the
home kept its credit record of the channel (last seq and window); the requester's next handle
to the channel numbered its credited sends from 1 again, the home took them for sends it
already had and dropped them, and confirmed them: sends that returned, then lost. Now a RELEASE
that went on a link that ended is said again, and a new handle that hears a record counting
sends it never made goes on numbering from there.
"""

from __future__ import annotations

import gc

from qchan._operation import DONE, Operation
from qchan.protocol import Kind, Rights

from ._sessions import CHAN, Home, Requester, lose


def test_a_new_handle_goes_on_from_a_record_its_release_did_not_clear() -> None:
    home = Home(8, Rights.BOTH)
    first = Requester(home.ref)
    home.says(*first.sent())
    sending = Operation()
    assert not first.endpoint.poll_send("a")  # no window yet: a plain send
    first.endpoint.wait_send(sending, 0, "a")
    assert first.hears(*home.says(*first.sent())) == []  # ACK, CREDIT [chan, 0, 4]
    assert first.endpoint.poll_send("b")
    assert first.endpoint.poll_send("c")
    first.hears(*home.says(*first.sent()))
    assert home.account.last_seq == 2
    # That handle is dropped, and its RELEASE is lost with the link. On a new link, a new
    # handle of the same node to the channel starts with nothing: its first send is a plain
    # one...
    home.lose()
    home.connect()
    second = Requester(home.ref)
    home.says(*second.sent())
    sending = Operation()
    assert not second.endpoint.poll_send("d")
    second.endpoint.wait_send(sending, 0, "d")
    answers = home.says(*second.sent())
    assert answers == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 2, 6]]  # the old record: 2 seqs in
    assert second.hears(*answers) == []
    assert sending.state == DONE
    # ... and its sends under credit go on from seq 3, so the home takes them as new
    assert second.endpoint.poll_send("e")
    (push,) = second.sent()
    assert push[:3] == [Kind.PUSH, CHAN, 3]
    home.says(push)
    assert home.buffer() == ["a", "b", "c", "d", "e"]


def _held_then_dropped() -> tuple[Home, Requester]:
    home = Home(8, Rights.BOTH)
    alpha = Requester(home.ref)
    home.says(*alpha.sent())
    del alpha.endpoint  # the last handle goes
    gc.collect()
    # The finalizer only takes note: it may run in the middle of anything. (It used to send
    # the RELEASE itself; run by the garbage collector while another frame was being queued,
    # it overfilled the transport message being built, and a chaos node crashed.) The
    # RELEASE goes at the node's next safe point: a read, or housekeeping.
    assert alpha.sent() == []
    assert alpha.hears() == [[Kind.RELEASE, CHAN]]  # (lost with the link, below)
    return home, alpha


def test_a_release_lost_with_its_link_is_said_again_on_the_next() -> None:
    home, alpha = _held_then_dropped()
    alpha.lose()
    alpha.connect()
    assert alpha.sent()[0] == [Kind.RELEASE, CHAN]
    home.says([Kind.RELEASE, CHAN], [Kind.RELEASE, CHAN])  # (twice changes nothing)
    assert CHAN not in home.alpha.credit_accounts


def test_a_release_lost_with_its_link_is_said_at_once_on_another_link() -> None:
    _, alpha = _held_then_dropped()
    first = alpha.session
    alpha.connect()  # another link, up already
    alpha.sent()
    lose(first)
    assert [Kind.RELEASE, CHAN] in alpha.sent()


def test_a_release_lost_with_its_link_is_not_said_again_for_a_channel_held_again() -> None:
    home, alpha = _held_then_dropped()
    alpha.lose()
    alpha.endpoint = alpha.beta.endpoint(home.ref)  # held again before the next link
    alpha.connect()
    sent = alpha.sent()
    assert [Kind.RELEASE, CHAN] not in sent  # it would clear the new handle's record
    assert [frame[0] for frame in sent] == [Kind.SETTLE, Kind.OPEN]


def test_a_release_read_late_from_a_link_the_peer_left_spares_a_record_in_use() -> None:
    # Found by the chaos harness: the requester's RELEASE went on a link it then gave up on;
    # its new handle opened the channel on a new link and numbered its credited sends on from
    # the home's record; the home read the RELEASE from the old link only after that, dropped
    # the record, and took the new handle's next credited send for one beyond any credit.
    home = Home(8, Rights.BOTH)
    home.open()
    assert home.send(1, "a") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 0, 4]]
    home.push(1, 2)
    old = home.session
    home.connect()  # the requester's new link (the home still holds the old one)
    home.open()  # its new handle
    assert home.send(2, "b") == [[Kind.ACK, 2], [Kind.CREDIT, CHAN, 2, 6]]  # goes on from 2
    old.on_frames([[Kind.RELEASE, CHAN]])  # the old handle's, read only now
    home.push(3)  # (a protocol error, had the record gone: nothing beyond 0 was told)
    assert home.buffer() == ["a", "v1", "v2", "b", "v3"]
    home.check_reserved()
    # Once the new handle lets the channel go too, the record and its slots go.
    home.says([Kind.RELEASE, CHAN])
    assert CHAN not in home.alpha.credit_accounts
    assert home.state.reserved == 0
