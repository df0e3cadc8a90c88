"""Bugs the fuzz targets found, each as the smallest test that shows it (each was a strict
xfail until its fix).

The inputs that found them are in ``corpus/session/crash-*`` (see test_fuzz_corpus.py).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import msgpack
import pytest

from qchan._codec import EXT_CHANNEL
from qchan._errors import PeerLost
from qchan._operation import DONE, Operation
from qchan._refs import ChannelRef
from qchan.protocol import Kind, Mode
from tests.protocol._sessions import CHAN, Home

from ._session_target import Harness


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)  # (each refused frame logs a warning)
    yield
    logging.disable(logging.NOTSET)


def _remote_operation(harness: Harness, *, send: bool, cases: int = 1) -> Operation:
    """A task at beta blocked on alpha's rendezvous channel: op id 1 on the link."""
    op = Operation(cases)
    endpoint = harness.endpoints[0]
    if send:
        endpoint.wait_send(op, 0, "value")
    else:
        endpoint.wait_receive(op, 0)
    session = harness.sessions[-1]
    assert session.ops[1].op is op
    return op


@pytest.mark.parametrize(
    ("send", "reply"),
    [
        (False, [Kind.ACK, 1]),
        (True, [Kind.DELIVER, 1, msgpack.packb("x")]),
    ],
    ids=["ACK-for-a-receive", "DELIVER-for-a-send"],
)
def test_a_misfit_reply_closes_the_link_and_fails_the_operation(
    send: bool, reply: list[object]
) -> None:
    harness = Harness()
    session = harness.sessions[-1]
    op = _remote_operation(harness, send=send)
    harness.read(session, [reply])
    assert session.closed  # refused as a protocol error, as it should be
    assert op.state == DONE  # ... and the waiting task must hear of it
    with pytest.raises(PeerLost):
        op.result()


@pytest.mark.parametrize(
    ("send", "cases", "reply"),
    [
        (False, 1, [Kind.CLAIM, 1]),
        (False, 1, [Kind.CANCELLED, 1]),
        (True, 2, [Kind.CANCELLED, 1]),
    ],
    ids=["CLAIM-for-a-receive", "CANCELLED-for-a-receive", "CANCELLED-for-an-unclaimed-select"],
)
def test_an_unasked_reply_never_strands_the_operation(
    send: bool, cases: int, reply: list[object]
) -> None:
    harness = Harness()
    session = harness.sessions[-1]
    op = _remote_operation(harness, send=send, cases=cases)
    harness.read(session, [reply])
    harness.lose(session)  # whatever became of it, the link's end must settle it
    assert op.state == DONE


def test_release_in_the_same_read_as_a_push_gives_every_slot_back() -> None:
    home = Home(8)
    home.open()
    assert home.send(1, "v0") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 0, 4]]
    home.says([Kind.PUSH, CHAN, 1, msgpack.packb("v1")], [Kind.RELEASE, CHAN])
    home.open()  # the requester holds the channel again
    home.send(2, "v2")
    assert home.state.reserved == home.account.outstanding == 4
    home.says([Kind.RELEASE, CHAN])
    assert home.state.reserved == 0  # (it was 4, for good)
    assert home.state.free_slots() == 8 - 3


def test_a_push_skipping_sequence_numbers_is_refused_and_leaks_no_slot() -> None:
    home = Home(8)
    home.open()
    assert home.send(1, "v0") == [[Kind.ACK, 1], [Kind.CREDIT, CHAN, 0, 4]]
    with pytest.raises(
        AssertionError, match=r"PROTOCOL_ERROR.*credited send 4 on channel 1 after 0"
    ):
        home.push(4)  # seqs 1..3 never sent: the link closes
    assert home.buffer() == ["v0"]
    home.lose()
    home.connect()
    home.says([Kind.RELEASE, CHAN])
    assert home.state.reserved == 0


def test_references_to_unknown_nodes_do_not_pile_up() -> None:
    harness = Harness()
    session = harness.sessions[-1]
    node = harness.node
    before = len(node._peers)
    for op in range(1, 201):
        home = op.to_bytes(2, "big") * 16  # a node nobody here ever met
        ref = ChannelRef(home, bytes(16), "10.0.0.9:7400", 1, 0, bytes(16), None).encode()
        value = msgpack.packb([msgpack.ExtType(EXT_CHANNEL, ref)])
        harness.read(session, [[Kind.SEND, op, 5, Mode.PLAIN, value]])  # chan 5: unbounded
        harness.channels[4].receive_nowait()  # taken, and dropped at once
    gc.collect()
    assert len(node._peers) - before < 50, len(node._peers) - before  # (it was 200)
    assert sum(len(p.pending_releases) for p in node._peers.values()) < 50


def test_a_reused_op_id_cannot_strand_a_value_in_flight() -> None:
    # (deliveries lost with a link are parked under that link: an op id the peer uses again
    # on another link cannot overwrite one)
    harness = Harness()
    state = harness.states[3]  # capacity 8
    value = msgpack.packb("v")
    session = harness.sessions[-1]
    harness.read(session, [[Kind.SEND, 1, 4, Mode.PLAIN, value], [Kind.SEND, 2, 4, 0, value]])
    for _ in range(2):  # a DELIVER of op 3, then its link lost: twice, on two links
        harness.read(harness.sessions[-1], [[Kind.RECV, 3, 4]])
        harness.lose(harness.sessions[-1])
        harness.connect()
    harness.alpha.release_holdings()  # the peer is gone for good: they count as taken
    assert state.in_flight == state.in_flight_buffered == 0
    assert state.free_slots() == 8


def test_the_harness_itself_is_quiet_without_misbehaviour() -> None:
    """The fixtures above are sound: a well-formed exchange leaves every invariant intact."""
    harness = Harness()
    session = harness.sessions[-1]
    op = _remote_operation(harness, send=False)
    harness.read(session, [[Kind.DELIVER, 1, msgpack.packb("hello")]])
    assert op.state == DONE
    assert op.result() == (0, "hello", True)
    harness.read(session, [[Kind.SEND, 5, 1, Mode.PLAIN, msgpack.packb(1)]])
    harness.check()
