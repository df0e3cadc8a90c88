"""The Connection state machine, driven by hand: two connections joined by ``transfer()``,
time passed in as ``now``, the wire bytes between them read and tampered with at will."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from qchan import AuthenticationError, PeerLost, ProtocolError
from qchan.crypto import MAX_MESSAGE_LEN, MAX_PLAINTEXT_LEN
from qchan.protocol import (
    Connection,
    ConnectionConfig,
    ConnectionTerminated,
    FramesReceived,
    GoawayReason,
    GoawayReceived,
    HandshakeCompleted,
    Hello,
    Kind,
    State,
)
from qchan.protocol import connection as connection_module
from qchan.protocol import frames as frames_module
from qchan.protocol.frames import encode_frame

from ._helpers import (
    INITIATOR_HELLO,
    INITIATOR_KEY,
    OTHER_CLUSTER_KEY,
    RESPONDER_HELLO,
    RESPONDER_KEY,
    STRANGER_KEY,
    establish,
    frames_of,
    make_pair,
    seal,
    split_messages,
    terminated,
    transfer,
    wire,
)
from .test_speedups import speedups

CONFIG = ConnectionConfig()  # heartbeat 1 s, peer timeout 3 s, handshake 5 s


@pytest.fixture(autouse=True, params=["fast path", "reference"])
def wire_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs on both paths: the C fast path (sealing, opening, decoding) and
    the pure-Python reference."""
    if request.param == "reference":
        monkeypatch.setattr(connection_module, "_FAST", None)
        monkeypatch.setattr(frames_module, "_decode_fast", None)
    else:
        speedups()  # (fails under CI if the fast path was not built)


def state(connection: Connection) -> State:
    """The connection's state (read through a call, so mypy does not narrow it for good)."""
    return connection.state


def ack(op: int) -> list[Any]:
    return [Kind.ACK, op]


# --- the handshake --------------------------------------------------------------------------


def test_handshake_completes_on_both_sides_with_the_peer_key_and_hello() -> None:
    initiator, responder = make_pair()
    assert state(initiator) is State.HANDSHAKING
    assert state(responder) is State.HANDSHAKING
    assert responder.data_to_send() == b""  # a responder speaks second
    message_1 = initiator.data_to_send()
    assert split_messages(message_1) == [message_1[2:]]
    assert len(message_1) == 2 + 48
    assert responder.receive_data(message_1, 0.0) == []
    assert state(responder) is State.HANDSHAKING
    # message 2: the initiator has judged the responder and writes message 3, but it is not
    # done: the responder has yet to judge it
    assert transfer(responder, initiator) == []
    assert state(initiator) is State.HANDSHAKING
    # message 3: the responder is done, and confirms with its first transport message
    assert transfer(initiator, responder) == [
        HandshakeCompleted(INITIATOR_KEY.public, INITIATOR_HELLO)
    ]
    assert state(responder) is State.OPEN
    # the confirmation: now the initiator is done too
    assert transfer(responder, initiator) == [
        HandshakeCompleted(RESPONDER_KEY.public, RESPONDER_HELLO)
    ]
    assert state(initiator) is State.OPEN
    assert transfer(initiator, responder) == []  # its PONG
    assert initiator.remote_key == RESPONDER_KEY.public
    assert responder.remote_key == INITIATOR_KEY.public
    assert initiator.remote_hello == RESPONDER_HELLO
    assert responder.remote_hello == INITIATOR_HELLO
    assert "peer=beta" in repr(initiator)
    assert "responder" in repr(responder)


def test_handshake_with_trusted_sets_and_an_expected_key() -> None:
    initiator, responder = establish(
        initiator_trusted=frozenset({RESPONDER_KEY.public}),
        responder_trusted=frozenset({INITIATOR_KEY.public, STRANGER_KEY.public}),
        expected_remote_key=RESPONDER_KEY.public,
    )
    assert initiator.remote_key == RESPONDER_KEY.public
    assert responder.remote_key == INITIATOR_KEY.public


def test_handshake_fed_one_byte_at_a_time() -> None:
    initiator, responder = make_pair()
    events: dict[str, list[Any]] = {"initiator": [], "responder": []}
    # message 1, message 2, message 3, the confirmation (PING), its PONG
    for sender, receiver, name in [
        (initiator, responder, "responder"),
        (responder, initiator, "initiator"),
    ] * 2 + [(initiator, responder, "responder")]:
        data = sender.data_to_send()
        assert data != b""
        for i in range(len(data)):
            events[name] += receiver.receive_data(data[i : i + 1], 0.0)
    assert events == {
        "initiator": [HandshakeCompleted(RESPONDER_KEY.public, RESPONDER_HELLO)],
        "responder": [HandshakeCompleted(INITIATOR_KEY.public, INITIATOR_HELLO)],
    }
    assert initiator.state is responder.state is State.OPEN
    assert initiator.data_to_send() == responder.data_to_send() == b""


def test_wrong_cluster_key_responder_terminates_and_sends_nothing() -> None:
    initiator, responder = make_pair(responder_cluster_key=OTHER_CLUSTER_KEY)
    events = transfer(initiator, responder)
    assert isinstance(terminated(events).error, AuthenticationError)
    assert "cluster key" in str(terminated(events).error)
    assert responder.data_to_send() == b""
    assert responder.state is State.CLOSED
    assert responder.next_deadline() is None
    assert responder.receive_data(b"more", 0.1) == []
    # the initiator hears nothing and gives up at its handshake deadline
    assert initiator.handle_timer(CONFIG.handshake_timeout - 0.01) == []
    events = initiator.handle_timer(CONFIG.handshake_timeout)
    assert isinstance(terminated(events).error, ProtocolError)


def test_untrusted_initiator_is_refused_at_message_3() -> None:
    initiator, responder = make_pair(responder_trusted=frozenset({STRANGER_KEY.public}))
    transfer(initiator, responder)
    # XX: the initiator has authenticated the responder at message 2, but it is not done
    # before the responder has judged it in turn.
    assert transfer(responder, initiator) == []
    events = transfer(initiator, responder)
    assert isinstance(terminated(events).error, AuthenticationError)
    assert "not trusted" in str(terminated(events).error)
    assert not any(isinstance(event, HandshakeCompleted) for event in events)
    assert responder.data_to_send() == b""  # no confirmation, no GOAWAY: nothing
    # so the initiator never completes: it is refused, not merely dropped
    assert initiator.state is State.HANDSHAKING
    assert initiator.receive_data(b"", 1.0) == []
    assert initiator.next_deadline() == CONFIG.handshake_timeout
    events = initiator.handle_timer(CONFIG.handshake_timeout)
    assert isinstance(terminated(events).error, ProtocolError)
    assert not any(isinstance(event, HandshakeCompleted) for event in events)


@pytest.mark.parametrize(
    "config",
    [
        {"initiator_trusted": frozenset({STRANGER_KEY.public})},
        {"initiator_trusted": frozenset()},
        {"expected_remote_key": STRANGER_KEY.public},
    ],
    ids=["untrusted", "trusts-nobody", "unexpected"],
)
def test_initiator_refusing_the_responder_never_sends_message_3(config: dict[str, Any]) -> None:
    initiator, responder = make_pair(**config)
    transfer(initiator, responder)
    events = transfer(responder, initiator)
    assert isinstance(terminated(events).error, AuthenticationError)
    assert initiator.data_to_send() == b""  # our identity is never revealed
    assert initiator.state is State.CLOSED


def test_handshake_message_1_shorter_than_48_bytes_is_refused() -> None:
    for length in (0, 1, 32, 47):
        initiator, responder = make_pair()
        events = responder.receive_data(wire(initiator.data_to_send()[2 : 2 + length]), 0.0)
        assert isinstance(terminated(events).error, AuthenticationError), length
        assert responder.data_to_send() == b""


def test_junk_instead_of_a_handshake_is_refused() -> None:
    for junk in (
        wire(bytes(48)),
        wire(encode_frame(ack(1)).ljust(48, b"\0")),
        b"GET / HTTP/1.1\r\n",
    ):
        _, responder = make_pair()
        events = responder.receive_data(junk, 0.0)
        assert isinstance(terminated(events).error, AuthenticationError), junk
        assert responder.data_to_send() == b""


def test_replayed_message_1_cannot_start_a_second_session() -> None:
    initiator, responder = make_pair()
    message_1 = initiator.data_to_send()
    responder.receive_data(message_1, 0.0)
    message_2 = responder.data_to_send()
    # a replay of message 1 to a fresh responder gets a reply, but the attacker cannot finish:
    # a replayed message 3 fails against the new responder's ephemeral key
    _, other = make_pair()
    other.receive_data(message_1, 0.0)
    assert other.data_to_send() != message_2
    initiator.receive_data(message_2, 0.0)
    message_3 = initiator.data_to_send()
    events = other.receive_data(message_3, 0.0)
    assert isinstance(terminated(events).error, AuthenticationError)


# --- frames -----------------------------------------------------------------------------


def test_frames_flow_both_ways_in_order() -> None:
    initiator, responder = establish()
    initiator.send(ack(1))
    initiator.send([Kind.SEND, 7, 3, 0, b"value"])
    responder.send([Kind.DELIVER, 9, b"other"])
    assert transfer(initiator, responder) == [
        FramesReceived([[Kind.ACK, 1], [Kind.SEND, 7, 3, 0, b"value"]])
    ]
    assert transfer(responder, initiator) == [FramesReceived([[Kind.DELIVER, 9, b"other"]])]
    assert transfer(initiator, responder) == []  # nothing queued: nothing sent
    assert initiator.data_to_send() == b""


def test_frames_queued_in_one_turn_share_as_few_messages_as_fit() -> None:
    initiator, responder = establish()
    frames = [[Kind.SEND, op, 1, 0, b"x" * 100] for op in range(2000)]
    for frame in frames:
        initiator.send(frame)
    data = initiator.data_to_send()
    messages = split_messages(data)
    assert len(messages) > 1
    assert all(len(message) <= MAX_MESSAGE_LEN for message in messages)
    # every message but the last is full: the next frame would not have fitted
    largest = max(len(encode_frame(frame)) for frame in frames)
    assert all(len(message) > MAX_MESSAGE_LEN - largest for message in messages[:-1])
    assert frames_of(responder.receive_data(data, 0.0)) == frames


def test_frames_sent_with_the_confirmation_arrive_right_after_the_handshake() -> None:
    initiator, responder = make_pair()
    transfer(initiator, responder)
    transfer(responder, initiator)
    transfer(initiator, responder)
    responder.send(ack(5))  # the responder is open once it has message 3
    data = responder.data_to_send()
    assert len(split_messages(data)) == 1  # in the same message as the PING
    events = initiator.receive_data(data, 0.0)
    assert events == [
        HandshakeCompleted(RESPONDER_KEY.public, RESPONDER_HELLO),  # before any frame
        FramesReceived([ack(5)]),  # the PING is the connection's own: not a frame for us
    ]


def test_frames_sealed_right_behind_message_3_are_accepted_by_the_responder() -> None:
    # The initiator does not send before the confirmation, but an implementation that did
    # (its keys exist once it has written message 3) is understood.
    initiator, responder = make_pair()
    transfer(initiator, responder)
    transfer(responder, initiator)
    data = initiator.data_to_send() + seal(initiator, encode_frame(ack(6)))
    events = responder.receive_data(data, 0.0)
    assert events == [
        HandshakeCompleted(INITIATOR_KEY.public, INITIATOR_HELLO),
        FramesReceived([ack(6)]),
    ]


# --- the confirmation: the initiator is done on the responder's first transport message ------


def _up_to_message_3(now: float = 0.0, **kwargs: Any) -> tuple[Connection, Connection]:
    """A pair where the responder has just accepted message 3 (its confirmation is queued)."""
    initiator, responder = make_pair(now, **kwargs)
    transfer(initiator, responder, now)
    transfer(responder, initiator, now)
    assert [type(event) for event in transfer(initiator, responder, now)] == [HandshakeCompleted]
    return initiator, responder


def test_the_initiator_completes_on_the_responders_first_transport_message_not_before() -> None:
    initiator, responder = make_pair()
    transfer(initiator, responder)
    # message 2 makes the initiator's keys and message 3, and nothing else
    assert transfer(responder, initiator) == []
    assert initiator.remote_key == RESPONDER_KEY.public  # known, not yet confirmed
    assert state(initiator) is State.HANDSHAKING
    assert len(split_messages(initiator.data_to_send())) == 1  # message 3 (taken here)
    with pytest.raises(RuntimeError, match="handshaking"):
        initiator.send(ack(1))  # it does not use the link before the confirmation
    assert initiator.data_to_send() == b""
    # (message 3 is lost here: the responder never confirms, the initiator never completes)
    assert initiator.handle_timer(CONFIG.heartbeat_interval * 2) == []
    assert initiator.data_to_send() == b""  # no PING either: it is not open
    assert state(initiator) is State.HANDSHAKING


def test_the_confirmation_is_one_transport_message_carrying_ping_0() -> None:
    initiator, responder = _up_to_message_3()
    (confirmation,) = split_messages(responder.data_to_send())
    assert len(confirmation) == 3 + 16  # 92 01 00, and the tag
    cipher = initiator._cipher
    assert cipher is not None  # the initiator's keys exist; its state waits on this message
    assert cipher.decrypt(confirmation) == encode_frame([Kind.PING, 0])


def test_the_initiator_answers_the_confirmation_with_pong() -> None:
    initiator, responder = _up_to_message_3()
    events = transfer(responder, initiator, 0.5)
    assert events == [HandshakeCompleted(RESPONDER_KEY.public, RESPONDER_HELLO)]
    pong = initiator.data_to_send()
    (message,) = split_messages(pong)
    assert len(message) == 3 + 16
    assert responder.receive_data(pong, 0.6) == []  # PONG is not an event
    assert responder.next_deadline() == pytest.approx(0.6 + CONFIG.heartbeat_interval)


def test_the_initiator_never_completes_if_the_responder_closes_after_message_3() -> None:
    # A responder that refuses the initiator at message 3 (here: untrusted) closes at once,
    # without a word: the initiator never completes, and learns of it as a failed handshake.
    initiator, responder = make_pair(responder_trusted=frozenset())
    transfer(initiator, responder)
    transfer(responder, initiator)
    terminated(transfer(initiator, responder))
    assert responder.data_to_send() == b""
    events = initiator.handle_timer(CONFIG.handshake_timeout - 0.001)
    assert events == []
    assert state(initiator) is State.HANDSHAKING
    events = initiator.handle_timer(CONFIG.handshake_timeout)
    assert not any(isinstance(event, HandshakeCompleted) for event in events)
    assert isinstance(terminated(events).error, ProtocolError)
    assert state(initiator) is State.CLOSED
    assert initiator.data_to_send() == b""  # and it never said anything after message 3
    # A responder closed by its owner before message 3 arrives sends nothing either
    initiator, responder = make_pair()
    transfer(initiator, responder)
    transfer(responder, initiator)
    responder.close()
    assert transfer(initiator, responder) == []
    assert responder.data_to_send() == b""
    assert transfer(responder, initiator) == []
    assert state(initiator) is State.HANDSHAKING


def test_a_responder_that_accepts_and_then_says_goaway_confirms_first() -> None:
    # Accepted, then closed (say, the node is stopping): the confirmation and the GOAWAY share
    # a message, and the initiator completes before it hears the GOAWAY.
    initiator, responder = _up_to_message_3()
    responder.close(GoawayReason.SHUTDOWN, "stopping")
    (message,) = split_messages(responder.data_to_send())
    events = initiator.receive_data(wire(message), 0.0)
    assert events == [
        HandshakeCompleted(RESPONDER_KEY.public, RESPONDER_HELLO),
        GoawayReceived(GoawayReason.SHUTDOWN, "stopping"),
        ConnectionTerminated(terminated(events).error),
    ]
    assert type(terminated(events).error) is PeerLost


@pytest.mark.parametrize("now", [0.0, 100.0])
def test_the_initiators_handshake_deadline_applies_until_the_confirmation(now: float) -> None:
    deadline = now + CONFIG.handshake_timeout
    initiator, responder = _up_to_message_3(now)
    # the responder is open: heartbeats from now on, no handshake deadline
    assert responder.next_deadline() == pytest.approx(now + CONFIG.heartbeat_interval)
    # the initiator: still its handshake deadline, which message 2 did not extend
    assert initiator.next_deadline() == deadline
    assert initiator.handle_timer(deadline - 0.001) == []
    confirmation = responder.data_to_send()
    late = initiator.handle_timer(deadline)
    error = terminated(late).error
    assert isinstance(error, ProtocolError)
    assert "handshake did not complete" in str(error)
    assert state(initiator) is State.CLOSED
    assert initiator.next_deadline() is None
    assert initiator.receive_data(confirmation, deadline + 0.001) == []  # too late
    # just in time, it completes and the heartbeat takes over
    initiator, responder = _up_to_message_3(now)
    events = initiator.receive_data(responder.data_to_send(), deadline - 0.001)
    assert [type(event) for event in events] == [HandshakeCompleted]
    assert initiator.next_deadline() == pytest.approx(deadline - 0.001 + CONFIG.heartbeat_interval)
    assert initiator.handle_timer(deadline) == []
    assert state(initiator) is State.OPEN


@pytest.mark.parametrize(
    "instead",
    ["junk", "message 2 again", "message 3 reflected", "truncated", "tag flipped", "empty"],
)
def test_only_an_authentic_confirmation_completes_the_initiator(instead: str) -> None:
    initiator, responder = make_pair()
    transfer(initiator, responder)
    message_2 = responder.data_to_send()
    initiator.receive_data(message_2, 0.0)
    message_3 = initiator.data_to_send()
    responder.receive_data(message_3, 0.0)
    (confirmation,) = split_messages(responder.data_to_send())
    fake = {
        "junk": wire(b"x" * 40),
        "message 2 again": message_2,
        "message 3 reflected": message_3,
        "truncated": wire(confirmation[:-1]),
        "tag flipped": wire(confirmation[:-1] + bytes([confirmation[-1] ^ 1])),
        "empty": wire(b""),
    }[instead]
    events = initiator.receive_data(fake + wire(confirmation), 0.0)
    assert not any(isinstance(event, HandshakeCompleted) for event in events)
    assert isinstance(terminated(events).error, ProtocolError)
    assert state(initiator) is State.CLOSED
    assert initiator.data_to_send() == b""


@pytest.mark.parametrize("size", [100_000, 1_000_000, 5_000_000])
@pytest.mark.parametrize("kind", [Kind.DELIVER, Kind.SEND])
def test_large_values_travel_in_parts_and_reassemble_exactly(size: int, kind: Kind) -> None:
    initiator, responder = establish()
    value = bytes(range(256)) * (size // 256) + b"tail"
    frame = [kind, 1, value] if kind == Kind.DELIVER else [kind, 1, 2, 0, value]
    initiator.send(ack(1))
    initiator.send(frame)
    initiator.send(ack(2))
    data = initiator.data_to_send()
    messages = split_messages(data)
    assert len(messages) > size // MAX_PLAINTEXT_LEN
    assert all(len(message) <= MAX_MESSAGE_LEN for message in messages)
    received = frames_of(responder.receive_data(data, 0.0))
    assert received == [ack(1), frame, ack(2)]
    # and fed one message at a time, frames come out as soon as they are whole
    initiator.send(frame)
    events = [
        responder.receive_data(wire(m), 1.0) for m in split_messages(initiator.data_to_send())
    ]
    assert all(event == [] for event in events[:-1])
    assert frames_of(events[-1]) == [frame]


def test_a_frame_larger_than_the_peer_allows_ends_the_connection() -> None:
    config = ConnectionConfig(max_frame_size=200_000)
    initiator, responder = establish(config=config)
    initiator.send([Kind.DELIVER, 1, bytes(150_000)])
    assert frames_of(transfer(initiator, responder)) == [[Kind.DELIVER, 1, bytes(150_000)]]
    initiator.send([Kind.DELIVER, 2, bytes(250_000)])
    events = transfer(initiator, responder)
    assert isinstance(terminated(events).error, ProtocolError)
    assert frames_of(events) == []


def test_the_last_nonce_of_a_session_is_used_and_then_the_connection_ends() -> None:
    initiator, responder = establish()
    for connection in (initiator, responder):  # (reaching 2**64 messages honestly takes long)
        cipher = connection._cipher
        assert cipher is not None
        cipher.sending.set_nonce(2**64 - 2)
        cipher.receiving.set_nonce(2**64 - 2)
    initiator.send(ack(1))
    assert frames_of(transfer(initiator, responder)) == [ack(1)]  # nonce 2**64-2: the last
    initiator.send(ack(2))
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        initiator.data_to_send()  # 2**64-1 is reserved: nothing more may be sealed
    # and the receiving side refuses to open anything under the reserved nonce
    forged = wire(b"x" * 32)
    assert responder._cipher is not None
    responder._cipher.receiving.set_nonce(2**64 - 1)
    assert isinstance(terminated(responder.receive_data(forged, 0.0)).error, ProtocolError)


# --- sending at the wrong time ----------------------------------------------------------


def test_send_before_the_handshake_raises() -> None:
    initiator, responder = make_pair()
    for connection in (initiator, responder):
        with pytest.raises(RuntimeError, match="handshaking"):
            connection.send(ack(1))
    transfer(initiator, responder)
    with pytest.raises(RuntimeError, match="handshaking"):
        responder.send(ack(1))  # it has sent message 2, but is not open until message 3
    transfer(responder, initiator)
    with pytest.raises(RuntimeError, match="handshaking"):
        initiator.send(ack(1))  # it has sent message 3, but is not open until confirmed
    transfer(initiator, responder)
    responder.send(ack(1))  # open
    with pytest.raises(RuntimeError, match="handshaking"):
        initiator.send(ack(1))
    transfer(responder, initiator)
    initiator.send(ack(1))  # open


def test_send_after_close_raises() -> None:
    initiator, _responder = establish()
    initiator.close()
    with pytest.raises(RuntimeError, match="closed"):
        initiator.send(ack(1))
    assert initiator.next_deadline() is None


def test_send_after_termination_raises() -> None:
    initiator, _responder = establish()
    terminated(initiator.handle_timer(CONFIG.peer_timeout))
    with pytest.raises(RuntimeError, match="closed"):
        initiator.send(ack(1))


def test_close_during_the_handshake_sends_no_goaway_and_stops_the_handshake() -> None:
    initiator, responder = make_pair()
    responder.close()
    assert responder.state is State.CLOSED
    assert responder.next_deadline() is None
    assert transfer(initiator, responder) == []
    assert responder.data_to_send() == b""  # no message 2, no GOAWAY
    # an initiator waiting for the confirmation has keys, but is not open: no GOAWAY either
    initiator, responder = make_pair()
    transfer(initiator, responder)
    transfer(responder, initiator)
    initiator.data_to_send()  # message 3
    initiator.close()
    assert state(initiator) is State.CLOSED
    assert initiator.next_deadline() is None
    assert initiator.data_to_send() == b""
    assert transfer(responder, initiator) == []


# --- GOAWAY -----------------------------------------------------------------------------


def test_close_sends_goaway_after_the_frames_before_it() -> None:
    initiator, responder = establish()
    initiator.send(ack(1))
    assert frames_of(transfer(initiator, responder)) == [ack(1)]
    initiator.send(ack(2))
    initiator.send(ack(3))
    initiator.close(GoawayReason.NAME_CONFLICT, "name beta is taken")
    assert initiator.state is State.CLOSED
    events = transfer(initiator, responder)
    assert events[:2] == [
        FramesReceived([ack(2), ack(3)]),
        GoawayReceived(GoawayReason.NAME_CONFLICT, "name beta is taken"),
    ]
    error = terminated(events).error
    assert type(error) is PeerLost
    assert "name beta is taken" in str(error)
    assert responder.state is State.CLOSED
    assert responder.next_deadline() is None
    with pytest.raises(RuntimeError):
        responder.send(ack(1))


def test_close_is_idempotent_and_input_after_it_is_ignored() -> None:
    initiator, responder = establish()
    initiator.close()
    initiator.close()
    goaway = initiator.data_to_send()
    assert len(split_messages(goaway)) == 1
    responder.send(ack(1))
    assert transfer(responder, initiator) == []
    events = responder.receive_data(goaway, 0.0)
    assert GoawayReceived(GoawayReason.SHUTDOWN, "") in events


def test_frames_after_a_goaway_are_ignored() -> None:
    initiator, responder = establish()
    first = seal(initiator, encode_frame(ack(8)))
    goaway = seal(initiator, encode_frame([Kind.GOAWAY, 0, "bye"]) + encode_frame(ack(9)))
    later = seal(initiator, encode_frame(ack(10)))
    events = responder.receive_data(first + goaway + later, 0.0)
    assert frames_of(events) == [ack(8)]
    assert [type(event) for event in events] == [
        FramesReceived,
        GoawayReceived,
        ConnectionTerminated,
    ]


def test_goaway_in_the_same_chunk_as_the_handshake() -> None:
    initiator, responder = make_pair()
    transfer(initiator, responder)
    transfer(responder, initiator)
    transfer(initiator, responder)
    responder.send(ack(1))
    responder.close(GoawayReason.DUPLICATE, "kept the other one")
    events = transfer(responder, initiator)
    assert [type(event) for event in events] == [
        HandshakeCompleted,
        FramesReceived,
        GoawayReceived,
        ConnectionTerminated,
    ]
    assert frames_of(events) == [ack(1)]


# --- heartbeats and deadlines ---------------------------------------------------------------


def test_ping_after_a_quiet_interval_and_the_peer_answers() -> None:
    initiator, responder = establish(now=10.0)
    assert initiator.next_deadline() == 10.0 + CONFIG.heartbeat_interval
    assert initiator.handle_timer(10.5) == []
    assert initiator.data_to_send() == b""
    assert initiator.handle_timer(11.0) == []
    ping = initiator.data_to_send()
    assert ping != b""
    # one ping per silence: it now waits for the peer timeout
    assert initiator.next_deadline() == 10.0 + CONFIG.peer_timeout
    assert initiator.handle_timer(11.5) == []
    assert initiator.data_to_send() == b""
    # the peer answers with PONG by itself; neither PING nor PONG is an event
    assert responder.receive_data(ping, 11.1) == []
    pong = responder.data_to_send()
    assert pong != b""
    assert initiator.receive_data(pong, 11.2) == []
    assert initiator.next_deadline() == pytest.approx(11.2 + CONFIG.heartbeat_interval)
    assert initiator.state is State.OPEN


def test_silent_peer_is_lost_after_the_peer_timeout() -> None:
    initiator, _responder = establish()
    initiator.handle_timer(CONFIG.heartbeat_interval)  # pings
    assert initiator.handle_timer(CONFIG.peer_timeout - 0.001) == []
    events = initiator.handle_timer(CONFIG.peer_timeout)
    error = terminated(events).error
    assert type(error) is PeerLost
    assert initiator.state is State.CLOSED
    assert initiator.next_deadline() is None
    assert initiator.handle_timer(100.0) == []


def test_a_late_timer_still_declares_the_peer_lost() -> None:
    initiator, _ = establish()
    assert isinstance(terminated(initiator.handle_timer(60.0)).error, PeerLost)


def test_hearing_anything_resets_the_silence() -> None:
    initiator, responder = establish()
    now = 0.0
    for _ in range(20):  # the responder keeps talking: the initiator never pings
        now += CONFIG.heartbeat_interval * 0.9
        responder.send(ack(1))
        transfer(responder, initiator, now)
        assert initiator.handle_timer(now) == []
        assert initiator.data_to_send() == b""
        assert initiator.next_deadline() == pytest.approx(now + CONFIG.heartbeat_interval)
    # after a ping, any frame (not only PONG) counts as hearing from the peer
    now += CONFIG.heartbeat_interval
    initiator.handle_timer(now)
    assert initiator.data_to_send() != b""
    now += CONFIG.peer_timeout - 0.01
    responder.send(ack(2))
    transfer(responder, initiator, now)
    assert initiator.handle_timer(now + CONFIG.heartbeat_interval - 0.01) == []
    assert initiator.state is State.OPEN


def test_two_idle_peers_keep_each_other_alive_by_pinging() -> None:
    initiator, responder = establish()
    now = 0.0
    for _ in range(200):
        now += 0.25
        for a, b in ((initiator, responder), (responder, initiator)):
            assert a.handle_timer(now) == []
            assert b.receive_data(a.data_to_send(), now) == []
    assert initiator.state is responder.state is State.OPEN


def test_next_deadline_is_when_handle_timer_has_work() -> None:
    initiator, _ = establish(now=5.0)
    deadline = initiator.next_deadline()
    assert deadline is not None
    initiator.handle_timer(deadline - 1e-6)
    assert initiator.data_to_send() == b""
    initiator.handle_timer(deadline)
    assert initiator.data_to_send() != b""
    deadline = initiator.next_deadline()
    assert deadline is not None
    assert initiator.handle_timer(deadline - 1e-6) == []
    assert isinstance(terminated(initiator.handle_timer(deadline)).error, PeerLost)


@pytest.mark.parametrize("role", ["initiator", "responder", "initiator awaiting confirmation"])
def test_handshake_deadline_ends_a_stalled_handshake(role: str) -> None:
    initiator, responder = make_pair(now=100.0)
    connection = responder if role == "responder" else initiator
    if role == "initiator":
        transfer(initiator, responder, 100.0)  # message 2 never comes back
    elif role == "initiator awaiting confirmation":
        transfer(initiator, responder, 100.0)
        transfer(responder, initiator, 101.0)
        initiator.data_to_send()  # message 3, which is lost
    deadline = 100.0 + CONFIG.handshake_timeout
    assert connection.next_deadline() == deadline
    assert connection.handle_timer(deadline - 0.001) == []
    error = terminated(connection.handle_timer(deadline)).error
    assert isinstance(error, ProtocolError)
    assert "handshake" in str(error)
    assert connection.state is State.CLOSED
    assert connection.data_to_send() == b""


def test_slowloris_trickling_bytes_does_not_extend_the_handshake_deadline() -> None:
    initiator, responder = make_pair()
    message_1 = initiator.data_to_send()
    now = 0.0
    for byte in range(len(message_1) - 1):  # a byte every 0.1 s, never the last one
        now = byte * 0.1
        assert responder.receive_data(message_1[byte : byte + 1], now) == []
        assert responder.handle_timer(now) == []
        if now >= CONFIG.handshake_timeout:
            break
    assert responder.next_deadline() == CONFIG.handshake_timeout
    assert isinstance(terminated(responder.handle_timer(5.0)).error, ProtocolError)


def test_whole_handshake_messages_do_not_extend_the_handshake_deadline() -> None:
    initiator, responder = make_pair()
    transfer(initiator, responder, 4.0)
    assert responder.next_deadline() == CONFIG.handshake_timeout  # still 5 s from the start
    assert isinstance(terminated(responder.handle_timer(5.0)).error, ProtocolError)


def test_after_the_handshake_only_heartbeats_count() -> None:
    _initiator, responder = establish(now=4.9)
    assert responder.handle_timer(5.0) == []
    assert responder.next_deadline() == pytest.approx(4.9 + CONFIG.heartbeat_interval)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"heartbeat_interval": 3.0, "peer_timeout": 3.0},
        {"heartbeat_interval": 0.0},
        {"heartbeat_interval": -1.0},
        {"handshake_timeout": 0.0},
        {"max_frame_size": 0},
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError: the message is for humans
        ConnectionConfig(**kwargs)


# --- a hostile wire ------------------------------------------------------------------------


def _three_messages() -> tuple[Connection, Connection, list[bytes]]:
    """An open pair and three transport messages from the initiator, carrying ACK 1, 2, 3."""
    initiator, responder = establish()
    messages = []
    for op in (1, 2, 3):
        initiator.send(ack(op))
        (message,) = split_messages(initiator.data_to_send())
        messages.append(message)
    return initiator, responder, messages


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _hostile_streams() -> dict[str, tuple[list[int], Any]]:
    """name -> (ops delivered before the failure, how to turn the 3 messages into a stream)."""
    return {
        "first byte of the ciphertext flipped": ([1], lambda m: [m[0], _flip(m[1], 0), m[2]]),
        "tag flipped": ([1], lambda m: [m[0], _flip(m[1], len(m[1]) - 1), m[2]]),
        "truncated by one": ([1], lambda m: [m[0], m[1][:-1], m[2]]),
        "truncated below a tag": ([1], lambda m: [m[0], m[1][:15], m[2]]),
        "emptied": ([1], lambda m: [m[0], b"", m[2]]),
        "one byte appended": ([1, 2], lambda m: [m[0], m[1], m[2] + b"\0"]),
        "replayed": ([1], lambda m: [m[0], m[0], m[1]]),
        "replayed at the end": ([1, 2, 3], lambda m: [*m, m[1]]),
        "reordered": ([1], lambda m: [m[0], m[2], m[1]]),
        "first two swapped": ([], lambda m: [m[1], m[0], m[2]]),
        "dropped": ([1], lambda m: [m[0], m[2]]),
        "two merged in one": ([1], lambda m: [m[0], m[1] + m[2]]),
        "handshake message resent": ([1], lambda m: [m[0], bytes(48), m[1]]),
    }


@pytest.mark.parametrize("name", list(_hostile_streams()))
@pytest.mark.parametrize("whole", [True, False], ids=["one-chunk", "message-by-message"])
def test_tampered_transport_messages_end_the_connection(name: str, whole: bool) -> None:
    delivered, mangle = _hostile_streams()[name]
    _, responder, messages = _three_messages()
    chunks = [wire(message) for message in mangle(messages)]
    events = []
    if whole:
        events = responder.receive_data(b"".join(chunks), 1.0)
    else:
        for chunk in chunks:
            events += responder.receive_data(chunk, 1.0)
    assert isinstance(terminated(events).error, ProtocolError)
    assert frames_of(events) == [ack(op) for op in delivered]
    assert responder.state is State.CLOSED
    assert responder.receive_data(wire(messages[2]), 2.0) == []


def test_a_message_from_another_session_is_refused() -> None:
    _initiator, responder = establish()
    other_initiator, _ = establish()
    other_initiator.send(ack(1))
    events = responder.receive_data(other_initiator.data_to_send(), 0.0)
    assert isinstance(terminated(events).error, ProtocolError)
    assert frames_of(events) == []


def test_a_message_reflected_back_to_its_sender_is_refused() -> None:
    initiator, _responder = establish()
    initiator.send(ack(1))
    events = initiator.receive_data(initiator.data_to_send(), 0.0)
    assert isinstance(terminated(events).error, ProtocolError)
    assert frames_of(events) == []


def test_a_bad_frame_spoils_only_its_own_message() -> None:
    initiator, responder = establish()
    good = seal(initiator, encode_frame(ack(1)) + encode_frame(ack(2)))
    bad = seal(initiator, encode_frame(ack(3)) + msgpack.packb([Kind.ACK, -1]))
    events = responder.receive_data(good + bad, 0.0)
    assert frames_of(events) == [ack(1), ack(2)]
    assert isinstance(terminated(events).error, ProtocolError)


def test_a_frame_split_over_two_transport_messages_is_refused() -> None:
    initiator, responder = establish()
    frame = encode_frame([Kind.SEND, 1, 2, 0, b"value"])
    for cut in (1, 2, 5, len(frame) - 1):
        initiator, responder = establish()
        first, second = seal(initiator, frame[:cut]), seal(initiator, frame[cut:])
        events = responder.receive_data(first + second, 0.0)
        assert isinstance(terminated(events).error, ProtocolError), cut
        assert frames_of(events) == []


def test_a_stalled_part_run_is_cut_by_the_heartbeat_timeout() -> None:
    initiator, responder = establish()
    part = seal(initiator, encode_frame([Kind.PART, 10_000_000, b"x" * 1000]))
    assert responder.receive_data(part, 0.5) == []
    assert isinstance(terminated(responder.handle_timer(0.5 + CONFIG.peer_timeout)).error, PeerLost)


# --- data before the handshake ---------------------------------------------------------------


def test_frames_sent_before_the_handshake_completes_are_never_delivered() -> None:
    initiator, responder = make_pair()
    plain = wire(encode_frame(ack(1)) * 10)
    # before message 1
    events = responder.receive_data(plain + initiator.data_to_send(), 0.0)
    assert isinstance(terminated(events).error, AuthenticationError)
    assert frames_of(events) == []
    # between message 1 and message 3
    initiator, responder = make_pair()
    transfer(initiator, responder)
    events = responder.receive_data(plain, 0.0)
    assert isinstance(terminated(events).error, AuthenticationError)
    assert frames_of(events) == []
    # ahead of message 2, at the initiator
    initiator, responder = make_pair()
    transfer(initiator, responder)
    events = initiator.receive_data(plain + responder.data_to_send(), 0.0)
    assert isinstance(terminated(events).error, AuthenticationError)
    assert frames_of(events) == []


def test_junk_right_after_message_2_is_a_protocol_error_at_the_initiator() -> None:
    initiator, responder = make_pair()
    transfer(initiator, responder)
    events = initiator.receive_data(responder.data_to_send() + wire(b"x" * 40), 0.0)
    # junk where the confirmation should be: the initiator never completes
    assert not any(isinstance(event, HandshakeCompleted) for event in events)
    assert isinstance(terminated(events).error, ProtocolError)


# --- hellos ------------------------------------------------------------------------------


def _hello(**fields: Any) -> bytes:
    base: dict[str, Any] = {"v": 1, "name": "node", "inc": bytes(16), "addr": "10.0.0.1:7400"}
    base.update(fields)
    return msgpack.packb({key: value for key, value in base.items() if value is not _MISSING})  # type: ignore[no-any-return]


_MISSING = object()


def test_hello_round_trips() -> None:
    for hello in (INITIATOR_HELLO, RESPONDER_HELLO, Hello("é" * 255, bytes(32), "unix:/tmp/q")):
        assert Hello.decode(hello.encode()) == hello


def test_hello_accepts_the_bounds_and_ignores_unknown_keys() -> None:
    assert Hello.decode(_hello(name="n" * 255, inc=bytes(8))).name == "n" * 255
    assert Hello.decode(_hello(inc=bytes(32))).incarnation == bytes(32)
    assert Hello.decode(_hello(addr=_MISSING)).address == ""
    assert Hello.decode(_hello(future="feature", x=[1, 2])).name == "node"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_hello(v=0), id="version 0"),
        pytest.param(_hello(v=2), id="version 2"),
        pytest.param(_hello(v="1"), id="version str"),
        pytest.param(_hello(v=True), id="version bool"),
        pytest.param(_hello(v=1.0), id="version float"),
        pytest.param(_hello(v=_MISSING), id="no version"),
        pytest.param(_hello(name=""), id="empty name"),
        pytest.param(_hello(name="n" * 256), id="long name"),
        pytest.param(_hello(name=b"node"), id="bytes name"),
        pytest.param(_hello(name=7), id="int name"),
        pytest.param(_hello(name=_MISSING), id="no name"),
        pytest.param(_hello(inc=bytes(7)), id="short incarnation"),
        pytest.param(_hello(inc=bytes(33)), id="long incarnation"),
        pytest.param(_hello(inc="0" * 16), id="str incarnation"),
        pytest.param(_hello(inc=_MISSING), id="no incarnation"),
        pytest.param(_hello(addr=7), id="int address"),
        pytest.param(_hello(addr=b"10.0.0.1"), id="bytes address"),
        pytest.param(_hello(addr="a" * 5000), id="huge address"),
        pytest.param(msgpack.packb([1, "node", bytes(16), ""]), id="array"),
        pytest.param(msgpack.packb(1), id="int"),
        pytest.param(msgpack.packb(b"hello"), id="bytes"),
        pytest.param(msgpack.packb(None), id="nil"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="reserved byte"),
        pytest.param(_hello()[:-3], id="truncated"),
        pytest.param(_hello() + b"\x00", id="trailing byte"),
        pytest.param(msgpack.packb({i: i for i in range(17)}), id="huge map"),
        pytest.param(b"\xdf\xff\xff\xff\xff", id="map declaring 2**32 entries"),
        pytest.param(msgpack.packb({1: 2, "v": 1}), id="int key"),
        pytest.param(b"\x81\xa4name\xa1\xff", id="bad utf-8"),
    ],
)
def test_malformed_hellos_are_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        Hello.decode(data)


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_a_malformed_hello_in_the_handshake_is_a_protocol_error(side: str) -> None:
    bad = Hello(name="", incarnation=bytes(16))
    if side == "initiator":
        initiator, responder = make_pair(initiator_hello=bad)
        transfer(initiator, responder)
        transfer(responder, initiator)
        events = transfer(initiator, responder)
        judge = responder
        assert initiator.state is State.HANDSHAKING  # and it never will complete
    else:
        initiator, responder = make_pair(responder_hello=bad)
        transfer(initiator, responder)
        events = transfer(responder, initiator)
        judge = initiator
    assert isinstance(terminated(events).error, ProtocolError)
    assert not any(isinstance(event, HandshakeCompleted) for event in events)
    assert judge.state is State.CLOSED
    assert judge.data_to_send() == b""


def test_a_peer_speaking_another_version_is_refused() -> None:
    initiator, responder = make_pair(responder_hello=Hello("beta", bytes(16), version=2))
    transfer(initiator, responder)
    events = transfer(responder, initiator)
    assert "version" in str(terminated(events).error)
