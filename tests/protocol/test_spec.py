"""Every hex example in docs/protocol.md is re-derived here from the code, so the
specification cannot drift from the implementation.

An example in the document is a fenced ``hex`` block preceded by ``<!-- example: NAME -->``;
NAME must be a key of :data:`EXAMPLES`, and every key must appear in the document.
Run ``python -m tests.protocol.test_spec`` to print the blocks when the protocol changes.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack
import pytest

from qchan import Channel, PeerLost, _codec, _errors
from qchan._channel import ChannelState
from qchan._home import Exports, credit_target
from qchan._operation import DONE, Operation
from qchan._peer import Peer
from qchan._refs import TOKEN_SIZE, ChannelRef, TokenMinter
from qchan._session import MAX_OUTSTANDING, Session
from qchan.crypto import MAX_PAYLOAD_LEN, MAX_PLAINTEXT_LEN, PROTOCOL_NAME, NoiseHandshake
from qchan.node import Node
from qchan.protocol import (
    ConnectionConfig,
    Frame,
    FrameDecoder,
    GoawayReason,
    Kind,
    Mode,
    Rights,
)
from qchan.protocol.frames import PART_OVERHEAD, encode_frame

from ._helpers import (
    CLUSTER_KEY,
    INITIATOR_EPHEMERAL,
    INITIATOR_HELLO,
    INITIATOR_KEY,
    RESPONDER_EPHEMERAL,
    RESPONDER_HELLO,
    RESPONDER_KEY,
    ephemerals,
    establish,
    make_pair,
    split_messages,
)
from ._sessions import RecordingLink, Requester, lose

DOC: Final = Path(__file__).parents[2] / "docs" / "protocol.md"
_BLOCK: Final = re.compile(r"<!-- example: ([\w-]+) -->\s*```hex\n(.*?)```", re.S)


def _handshake() -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """Messages 1-3, the confirmation (the responder's first transport message, PING 0) and
    the link's id (section 6.6: the first 8 bytes of the handshake hash)."""
    initiator = NoiseHandshake(
        initiator=True,
        static_key=INITIATOR_KEY,
        cluster_key=CLUSTER_KEY,
        payload=INITIATOR_HELLO.encode(),
        _ephemeral=INITIATOR_EPHEMERAL,
    )
    responder = NoiseHandshake(
        initiator=False,
        static_key=RESPONDER_KEY,
        cluster_key=CLUSTER_KEY,
        payload=RESPONDER_HELLO.encode(),
        _ephemeral=RESPONDER_EPHEMERAL,
    )
    message_1 = initiator.start()
    message_2 = responder.receive(message_1)
    assert message_2 is not None
    message_3 = initiator.receive(message_2)
    assert message_3 is not None
    assert responder.receive(message_3) is None
    confirmation = responder.transport().encrypt(encode_frame([Kind.PING, 0]))
    assert initiator.handshake_hash == responder.handshake_hash
    return message_1, message_2, message_3, confirmation, responder.handshake_hash[:8]


def _link_id() -> bytes:
    return _handshake()[4]


def _wire(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


_BIG_DELIVER: Final = [Kind.DELIVER, 5, bytes(100_000)]


def _first_part() -> bytes:
    """The first 16 bytes of the first PART frame of a 100 000-byte DELIVER value."""
    data = encode_frame(_BIG_DELIVER)
    return encode_frame([Kind.PART, len(data), data[: MAX_PLAINTEXT_LEN - PART_OVERHEAD]])[:16]


# --- a worked exchange, produced by the node's own home side -------------------------------

TOKEN_SECRET: Final = bytes(range(0xC0, 0xE0))
"""The home's token secret in the worked example (a node draws 32 random bytes at start)."""


@dataclass(frozen=True)
class _Exchange:
    ref: bytes  # the reference alpha holds to beta's channel 1
    value_with_channel: bytes  # a value beta sends alpha: ["reply", a send-only channel]
    plaintexts: dict[str, bytes]  # by example name, in the order sent
    buffer: list[Any]  # what beta's channel holds at the end, in order
    reserved: int  # buffer slots beta holds for alpha's window at the end
    account: tuple[int, int]  # beta's record of alpha on chan 1: (last_seq, window)


#: The plaintexts of the worked exchange (section 12.4), in the order sent.
EXCHANGE: Final = (
    "op-open-send",  # alpha
    "op-ack-credit",  # beta
    "op-push",  # alpha
    "op-credit",  # beta
    "op-recv",  # alpha
    "op-deliver",  # beta
    "op-taken",  # alpha (no answer)
    "op-push-more",  # alpha
    "op-credit-lost",  # beta
    "op-recv-lost",  # alpha
    "op-deliver-lost",  # beta
    # the link is lost; on the new one each side first says what it took on the old one
    "op-settle-home",  # beta
    "op-settle-reopen-resend",  # alpha
    "op-credit-again",  # beta
)


@functools.cache
def _exchange() -> _Exchange:
    """Run beta's home side (a real Session) through the worked example of section 12.4.

    alpha's frames are built the way its client side builds them; beta's answers are whatever
    beta's Session sends. One list of frames is one transport message's plaintext. Midway the
    link is lost and alpha comes back on a new one (a second Session), as after a reconnect.
    """
    beta = Node(cluster_key=CLUSTER_KEY, key=RESPONDER_KEY, name=RESPONDER_HELLO.name)
    beta.exports = Exports(
        TokenMinter(TOKEN_SECRET),
        RESPONDER_KEY.public,
        RESPONDER_HELLO.incarnation,
        "10.0.0.2:7400",
        beta._shut,
        beta._reclaim_credit,
    )
    jobs: Channel[str] = Channel(8)
    state = jobs._endpoint
    assert isinstance(state, ChannelState)
    alpha = Peer(beta, INITIATOR_KEY.public)
    beta._peers[alpha.key] = alpha
    link = RecordingLink(1)
    link.link_id = _link_id()  # (the link of the documented handshake)
    session = Session(beta, alpha, link)  # type: ignore[arg-type]
    alpha.attach(session)
    assert link.sent == []  # (the first link to alpha: nothing to settle)
    ref = beta.exports.ref(state, Rights.BOTH, alpha.key)  # (what a LOOKUP would answer)
    assert ref.chan == 1
    opening = [Kind.OPEN, 1, Rights.BOTH, ref.tokens(Rights.BOTH)]

    def value(text: str) -> bytes:
        return msgpack.packb(text)  # type: ignore[no-any-return]

    sent: list[bytes] = []

    def beta_sent() -> None:
        sent.append(b"".join(encode_frame(frame) for frame in link.sent))
        link.sent.clear()

    def alpha_says(*frames: list[Any]) -> None:
        sent.append(b"".join(encode_frame(frame) for frame in frames))
        session.on_frames(list(frames))
        beta_sent()

    # a plain send, since alpha has no window yet: ACKed once buffered, and a window offered
    alpha_says(opening, [Kind.SEND, 1, 1, Mode.PLAIN, value("job-1")])
    # two sends under credit, in one message: one CREDIT confirms both and widens the window
    alpha_says([Kind.PUSH, 1, 1, value("job-2")], [Kind.PUSH, 1, 2, value("job-3")])
    # a receive: the first buffered value, taken
    alpha_says([Kind.RECV, 2, 1])
    alpha_says([Kind.TAKEN, 2])
    assert sent.pop() == b""  # TAKEN gets no answer
    # job-2 and job-3 are buffered; seqs 3 to 6 of alpha's window hold 4 slots
    assert [state.buffered(), state.reserved, state.in_flight] == [2, 4, 0]
    # two more credited sends; beta's CREDIT for them is lost with the link
    alpha_says([Kind.PUSH, 1, 3, value("job-4")], [Kind.PUSH, 1, 4, value("job-5")])
    # another receive; beta's DELIVER of job-2 is lost with the link too
    alpha_says([Kind.RECV, 3, 1])
    assert [state.buffered(), state.in_flight_buffered, state.reserved] == [3, 1, 4]
    lose(session)
    # job-2 keeps its slot, waiting for alpha to say whether it took it
    assert [state.buffered(), state.in_flight_buffered, state.reserved] == [3, 1, 4]
    # a new link: beta first says what it took of alpha's channels on the lost one (nothing:
    # a SETTLE naming it, with no ops)
    link = RecordingLink(2)
    session = Session(beta, alpha, link)  # type: ignore[arg-type]
    alpha.attach(session)
    beta_sent()
    # alpha says it took op 2 (op 3's DELIVER never arrived: its receive failed with
    # PeerLost), opens again and resends what was never confirmed, before anything else;
    # beta puts job-2 back at the front, drops both pushes (it has them) and tells it all again
    alpha_says(
        [Kind.SETTLE, _link_id(), (2).to_bytes(8, "big")],
        opening,
        [Kind.PUSH, 1, 3, value("job-4")],
        [Kind.PUSH, 1, 4, value("job-5")],
    )
    assert len(sent) == len(EXCHANGE)
    account = alpha.credit_accounts[1]
    reply: Channel[str] = Channel(0)
    return _Exchange(
        ref=ref.encode(),
        value_with_channel=beta.encode_value(["reply", reply.sender()], alpha),
        plaintexts=dict(zip(EXCHANGE, sent, strict=True)),
        buffer=list(state.buffer),
        reserved=state.reserved,
        account=(account.last_seq, account.window),
    )


def _plaintext(name: str) -> Callable[[], bytes]:
    return lambda: _exchange().plaintexts[name]


EXAMPLES: Final[dict[str, Callable[[], bytes]]] = {
    "key-cluster": lambda: bytes(CLUSTER_KEY),
    "key-initiator-static": INITIATOR_KEY.private_bytes,
    "key-initiator-static-public": lambda: INITIATOR_KEY.public,
    "key-initiator-ephemeral": lambda: INITIATOR_EPHEMERAL,
    "key-responder-static": RESPONDER_KEY.private_bytes,
    "key-responder-static-public": lambda: RESPONDER_KEY.public,
    "key-responder-ephemeral": lambda: RESPONDER_EPHEMERAL,
    "hello-initiator": INITIATOR_HELLO.encode,
    "hello-responder": RESPONDER_HELLO.encode,
    "handshake-message-1": lambda: _wire(_handshake()[0]),
    "handshake-message-2": lambda: _wire(_handshake()[1]),
    "handshake-message-3": lambda: _wire(_handshake()[2]),
    "transport-confirmation": lambda: _wire(_handshake()[3]),
    "frame-confirmation": lambda: encode_frame([Kind.PING, 0]),
    "frame-ping": lambda: encode_frame([Kind.PING, 1]),
    "frame-pong": lambda: encode_frame([Kind.PONG, 1]),
    "frame-goaway": lambda: encode_frame([Kind.GOAWAY, GoawayReason.SHUTDOWN, "bye"]),
    "frame-ack": lambda: encode_frame([Kind.ACK, 7]),
    "frame-ack-max": lambda: encode_frame([Kind.ACK, 2**64 - 1]),
    "frame-send": lambda: encode_frame([Kind.SEND, 7, 3, Mode.PLAIN, msgpack.packb("hello")]),
    "frame-recv": lambda: encode_frame([Kind.RECV, 8, 3]),
    "frame-deliver": lambda: encode_frame([Kind.DELIVER, 8, msgpack.packb([1, 2])]),
    "frame-failed": lambda: encode_frame(
        [Kind.FAILED, 9, _errors.PermissionDenied.code, "send-only handle"]
    ),
    "frame-push": lambda: encode_frame([Kind.PUSH, 3, 301, msgpack.packb("hello")]),
    "frame-credit": lambda: encode_frame([Kind.CREDIT, 3, 301, 316]),
    "frame-lookup": lambda: encode_frame([Kind.LOOKUP, 1, "jobs"]),
    "frame-settle": lambda: encode_frame([Kind.SETTLE, _link_id(), struct.pack(">2Q", 8, 300)]),
    "link-id": _link_id,
    "frame-part-first-16-bytes": _first_part,
    "frames-two-in-one-plaintext": lambda: (
        encode_frame([Kind.TAKEN, 8]) + encode_frame([Kind.ACK, 7])
    ),
    "frame-unclaim": lambda: encode_frame([Kind.UNCLAIM, 7]),
    "frame-shut": lambda: encode_frame([Kind.SHUT, 3]),
    # section 6 and 12.4: a channel of the responder ("beta"), used by the initiator ("alpha")
    "token-secret": lambda: TOKEN_SECRET,
    "token-send": lambda: TokenMinter(TOKEN_SECRET).token(1, Rights.SEND),
    "token-receive": lambda: TokenMinter(TOKEN_SECRET).token(1, Rights.RECEIVE),
    "channel-ref": lambda: _exchange().ref,
    "value-with-channel": lambda: _exchange().value_with_channel,
    **{name: _plaintext(name) for name in EXCHANGE},
}


def test_the_worked_exchange_reads_as_documented() -> None:
    exchange = _exchange()
    decoder = FrameDecoder(ConnectionConfig().max_frame_size)
    frames = {name: decoder.decode(data) for name, data in exchange.plaintexts.items()}
    # credit_target(8) == 4: alpha may push seqs 1 to 4
    assert frames["op-ack-credit"] == [[Kind.ACK, 1], [Kind.CREDIT, 1, 0, 4]]
    pushes = [[Kind.PUSH, 1, 1], [Kind.PUSH, 1, 2]]
    assert [frame[:3] for frame in frames["op-push"]] == pushes
    # acked up to seq 2; 2 slots were left, at most half of 4: the window widens to 6
    assert frames["op-credit"] == [[Kind.CREDIT, 1, 2, 6]]
    assert frames["op-deliver"] == [[Kind.DELIVER, 2, msgpack.packb("job-1")]]
    more = frames["op-push-more"]
    assert [frame[:3] for frame in more] == [[Kind.PUSH, 1, 3], [Kind.PUSH, 1, 4]]
    assert frames["op-credit-lost"] == [[Kind.CREDIT, 1, 4, 8]]  # (lost with the link)
    assert frames["op-deliver-lost"] == [[Kind.DELIVER, 3, msgpack.packb("job-2")]]  # (lost)
    # the new link: beta took nothing of alpha's; alpha took op 2 (and not op 3), then OPEN
    # first, then the unconfirmed pushes again, in order
    assert frames["op-settle-home"] == [[Kind.SETTLE, _link_id(), b""]]
    settle, reopen, *resent = frames["op-settle-reopen-resend"]
    assert settle == [Kind.SETTLE, _link_id(), bytes(7) + b"\x02"]
    assert reopen[:3] == [Kind.OPEN, 1, Rights.BOTH]
    assert resent == more
    # beta tells it all again: the same CREDIT, harmless to hear twice
    assert frames["op-credit-again"] == frames["op-credit-lost"]
    # job-2 is back at the front; nothing was buffered twice; the window's 4 unused seqs (5
    # to 8) hold 4 slots
    assert exchange.buffer == ["job-2", "job-3", "job-4", "job-5"]
    assert exchange.account == (4, 8)
    assert exchange.reserved == 8 - 4
    ref = ChannelRef.decode(exchange.ref)
    assert (ref.home, ref.chan, ref.capacity, ref.rights) == (
        RESPONDER_KEY.public,
        1,
        8,
        Rights.BOTH,
    )
    decoded = msgpack.unpackb(exchange.value_with_channel)
    assert decoded[0] == "reply"
    assert decoded[1].code == _codec.EXT_CHANNEL
    inner = ChannelRef.decode(decoded[1].data)
    assert (inner.chan, inner.capacity, inner.rights) == (2, 0, Rights.SEND)
    assert inner.receive_token is None


def test_alphas_side_of_the_worked_exchange_is_what_a_requester_sends() -> None:
    """alpha's plaintexts in 12.4 are built by hand: a real requester's Session, told beta's
    answers, sends exactly them (its SETTLE on the new link included)."""
    exchange = _exchange()
    decoder = FrameDecoder(ConnectionConfig().max_frame_size)

    def beta(name: str) -> list[Frame]:
        return decoder.decode(exchange.plaintexts[name])

    def says(frames: list[Frame]) -> bytes:
        return b"".join(encode_frame(frame) for frame in frames)

    alpha = Requester(ChannelRef.decode(exchange.ref))
    alpha.link.link_id = _link_id()  # (the link of the documented handshake)
    endpoint = alpha.endpoint
    sending = Operation()
    assert not endpoint.poll_send("job-1")  # no window yet: a plain SEND
    endpoint.wait_send(sending, 0, "job-1")
    assert says(alpha.sent()) == exchange.plaintexts["op-open-send"]
    assert alpha.hears(*beta("op-ack-credit")) == []
    assert sending.state == DONE
    assert endpoint.poll_send("job-2")
    assert endpoint.poll_send("job-3")
    assert says(alpha.sent()) == exchange.plaintexts["op-push"]
    assert alpha.hears(*beta("op-credit")) == []
    receiving = alpha.receive()
    assert says(alpha.sent()) == exchange.plaintexts["op-recv"]
    assert says(alpha.hears(*beta("op-deliver"))) == exchange.plaintexts["op-taken"]
    assert receiving.value == "job-1"
    assert endpoint.poll_send("job-4")
    assert endpoint.poll_send("job-5")
    assert says(alpha.sent()) == exchange.plaintexts["op-push-more"]
    lost = alpha.receive()
    assert says(alpha.sent()) == exchange.plaintexts["op-recv-lost"]
    alpha.lose()  # (beta's CREDIT and DELIVER never arrive)
    assert isinstance(lost.error, PeerLost)
    alpha.connect()
    assert says(alpha.sent()) == exchange.plaintexts["op-settle-reopen-resend"]
    assert alpha.hears(*beta("op-settle-home"), *beta("op-credit-again")) == []
    assert (endpoint.unacked, endpoint.window) == (deque(), 8)


def _documented() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for name, body in _BLOCK.findall(DOC.read_text()):
        assert name not in blocks, f"example {name} appears twice"
        blocks[name] = body
    return blocks


def render(data: bytes) -> str:
    """How an example is written in the document: 16 bytes a line, space-separated."""
    lines = [data[i : i + 16].hex(" ") for i in range(0, len(data), 16)]
    return "\n".join(lines) + "\n"


def test_every_example_is_documented_and_every_documented_example_is_derived() -> None:
    assert sorted(_documented()) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_documented_hex_matches_the_code(name: str) -> None:
    documented = bytes.fromhex("".join(_documented()[name].split()))
    assert documented == EXAMPLES[name](), f"docs/protocol.md example {name} is stale"


def test_the_documented_handshake_is_what_connections_exchange() -> None:
    # With the same ephemeral keys, two Connections exchange exactly the documented bytes:
    # messages 1-3, then the responder's confirmation, then nothing until it has arrived.
    with ephemerals(INITIATOR_EPHEMERAL, RESPONDER_EPHEMERAL):
        initiator, responder = make_pair()
        stream = []
        for sender, receiver in [(initiator, responder), (responder, initiator)] * 2:
            data = sender.data_to_send()
            stream.append(data)
            receiver.receive_data(data, 0.0)
    assert stream == [
        _documented_bytes("handshake-message-1"),
        _documented_bytes("handshake-message-2"),
        _documented_bytes("handshake-message-3"),
        _documented_bytes("transport-confirmation"),
    ]
    # the initiator's first transport message answers the confirmation: PONG 0, nonce 0
    cipher = responder._cipher
    assert cipher is not None
    (pong,) = split_messages(initiator.data_to_send())
    assert cipher.decrypt(pong) == encode_frame([Kind.PONG, 0])
    # and the documented first PART header is the one Connection.send produces
    initiator, responder = establish()
    initiator.send(_BIG_DELIVER)
    first = split_messages(initiator.data_to_send())[0]
    cipher = responder._cipher
    assert cipher is not None
    assert cipher.decrypt(first)[:16] == _first_part()


def _documented_bytes(name: str) -> bytes:
    return bytes.fromhex("".join(_documented()[name].split()))


def test_an_independent_noise_implementation_reproduces_the_documented_handshake() -> None:
    from noise.connection import Keypair, NoiseConnection  # test-only dependency

    def peer(initiator: bool) -> NoiseConnection:
        connection = NoiseConnection.from_name(PROTOCOL_NAME.encode())
        if initiator:
            connection.set_as_initiator()
        else:
            connection.set_as_responder()
        connection.set_psks(_documented_bytes("key-cluster"))
        connection.set_prologue(b"qchan/1")
        side = "initiator" if initiator else "responder"
        static = _documented_bytes(f"key-{side}-static")
        connection.set_keypair_from_private_bytes(Keypair.STATIC, static)
        ephemeral = _documented_bytes(f"key-{side}-ephemeral")
        connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
        with pytest.warns(UserWarning, match="ephemeral"):  # fixed keys: "for testing"
            connection.start_handshake()
        return connection

    initiator, responder = peer(True), peer(False)
    message_1 = bytes(initiator.write_message(b""))
    assert _wire(message_1) == _documented_bytes("handshake-message-1")
    responder.read_message(message_1)
    message_2 = bytes(responder.write_message(_documented_bytes("hello-responder")))
    assert _wire(message_2) == _documented_bytes("handshake-message-2")
    assert bytes(initiator.read_message(message_2)) == _documented_bytes("hello-responder")
    message_3 = bytes(initiator.write_message(_documented_bytes("hello-initiator")))
    assert _wire(message_3) == _documented_bytes("handshake-message-3")
    assert bytes(responder.read_message(message_3)) == _documented_bytes("hello-initiator")
    confirmation = bytes(responder.encrypt(_documented_bytes("frame-confirmation")))
    assert _wire(confirmation) == _documented_bytes("transport-confirmation")
    assert bytes(initiator.decrypt(confirmation)) == b"\x92\x01\x00"


def test_the_documented_tables_match_the_code() -> None:
    text = DOC.read_text()
    for kind in Kind:
        assert f"| 0x{kind:02X} | `{kind.name}` |" in text, kind
    # ... and the catalogue names no kind the code does not have (0x2B RETURN is gone)
    catalogue = re.findall(r"^\| 0x([0-9A-F]{2}) \| `(\w+)` \|", text, re.M)
    assert sorted(catalogue) == sorted((f"{kind:02X}", kind.name) for kind in Kind)
    for reason in GoawayReason:
        assert f"| {reason} | `{reason.name}` |" in text, reason
    for error in (
        _errors.QchanError,
        _errors.ChannelClosed,
        _errors.WouldBlock,
        _errors.PeerLost,
        _errors.DeliveryUncertain,
        _errors.AuthenticationError,
        _errors.ProtocolError,
        _errors.NotFound,
        _errors.PermissionDenied,
        _errors.MessageTooLarge,
    ):
        assert f"| {error.code} | `{error.__name__}` |" in text, error
    assert PROTOCOL_NAME in text
    assert str(MAX_PAYLOAD_LEN) in text
    assert str(MAX_PLAINTEXT_LEN) in text
    assert f"{ConnectionConfig().max_frame_size:,}".replace(",", " ") in text
    assert "to be completed" not in text
    assert f"more than {MAX_OUTSTANDING:,}".replace(",", " ") in text
    assert f"BLAKE2b-{8 * TOKEN_SIZE}" in text
    assert f"ext type {_codec.EXT_CHANNEL}" in text
    for capacity, credits in [(1, 1), (8, 4), (10_000, 1024), (math.inf, 1024)]:
        assert credit_target(capacity) == credits
    assert "max(1, min(capacity // 2, 1024))" in text


if __name__ == "__main__":
    for name, make in EXAMPLES.items():
        print(f"<!-- example: {name} -->\n```hex\n{render(make())}```\n")
