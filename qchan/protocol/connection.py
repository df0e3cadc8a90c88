"""One connection between two nodes, as a state machine: bytes and ``now`` in; bytes, events
and a deadline out. No sockets, no clocks, no tasks: the transport layer feeds it.

Theory of operation
-------------------
On the wire everything is a *message*: a 2-byte big-endian length, then at most 65535 bytes.
The first messages are the Noise handshake (three of them, see :mod:`qchan.crypto.handshake`);
messages 2 and 3 carry each node's :class:`Hello`. After it, every message is encrypted with
the session's transport cipher and its plaintext holds whole frames (:mod:`.frames`).

States::

    HANDSHAKING ──handshake completes──> OPEN ──close() / GOAWAY / error / silence──> CLOSED

The I/O layer's loop is::

    events = conn.receive_data(chunk, now)   # react to HandshakeCompleted, FramesReceived...
    conn.send(frame) ...                     # queue replies; frames written this turn are
    sock.write(conn.data_to_send())          # sealed together into as few messages as fit
    sleep until conn.next_deadline(), then conn.handle_timer(now)

and it closes the socket once a :class:`ConnectionTerminated` event has come out and the last
bytes are written. Heartbeats are here: after ``heartbeat_interval`` without hearing anything
we send ``PING`` (the peer answers ``PONG``); after ``peer_timeout`` of silence the connection
terminates with :class:`~qchan.PeerLost`.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, final

import msgpack

from qchan._errors import AuthenticationError, PeerLost, ProtocolError, QchanError
from qchan.crypto.cipher import MAX_PLAINTEXT_LEN, TransportCipher
from qchan.crypto.handshake import NoiseHandshake
from qchan.crypto.keys import ClusterKey, NodeKey
from qchan.crypto.noise import (
    DHLEN,
    MAX_MESSAGE_LEN,
    MAX_NONCE,
    TAGLEN,
    Buffer,
    CipherState,
    aead_addresses,
)
from qchan.protocol.frames import (
    PART_OVERHEAD,
    Frame,
    FrameDecoder,
    GoawayReason,
    Kind,
    encode_frame,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Connection",
    "ConnectionConfig",
    "ConnectionTerminated",
    "Event",
    "FramesReceived",
    "GoawayReceived",
    "LINK_ID_LEN",
    "HandshakeCompleted",
    "Hello",
    "State",
]

PROTOCOL_VERSION: Final = 1
LINK_ID_LEN: Final = 8
_LENGTH: Final = struct.Struct(">H")
_LAST_CONTROL_KIND: Final = int(Kind.PART)  # connection control kinds are numbered first
_FIRST_NODE_KIND: Final = _LAST_CONTROL_KIND + 1
_MAX_NAME_LEN: Final = 255
_MESSAGE_1_LEN: Final = DHLEN + TAGLEN
"""Handshake message 1 is exactly this long: ``e`` and the tag of its empty payload."""


@final
@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Timing and size limits of a connection (seconds and bytes)."""

    handshake_timeout: float = 5.0
    """A handshake not finished by then fails: no peer can hold a half-open slot for long."""
    heartbeat_interval: float = 1.0
    """Silence after which we ping the peer."""
    peer_timeout: float = 3.0
    """Silence after which the peer is declared lost."""
    max_frame_size: int = 64 * 2**20 + 1024
    """The largest frame (a value plus its header) reassembled from PART frames."""

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.peer_timeout:
            raise ValueError("need 0 < heartbeat_interval < peer_timeout")
        if self.handshake_timeout <= 0 or self.max_frame_size <= 0:
            raise ValueError("handshake_timeout and max_frame_size must be positive")


@final
@dataclass(frozen=True, slots=True)
class Hello:
    """What a node says about itself inside the handshake (messages 2 and 3).

    ``incarnation`` is random per process start: references minted by an earlier run of the
    same node (same key) are recognisably stale. ``address`` is where the node can be dialled
    ("" if it does not listen).
    """

    name: str
    incarnation: bytes
    address: str = ""
    version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            {"v": self.version, "name": self.name, "inc": self.incarnation, "addr": self.address},
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        """Parse a peer's hello. Raises :class:`ProtocolError` if it is malformed."""
        try:
            fields = msgpack.unpackb(
                data, raw=False, max_str_len=4096, max_bin_len=64, max_map_len=16
            )
        except Exception as exc:
            raise ProtocolError(f"malformed hello: {exc}") from exc
        if type(fields) is not dict:
            raise ProtocolError("malformed hello: not a map")
        version, name = fields.get("v"), fields.get("name")
        incarnation, address = fields.get("inc"), fields.get("addr", "")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise ProtocolError(f"peer speaks protocol version {version!r}, not {PROTOCOL_VERSION}")
        if type(name) is not str or not 0 < len(name) <= _MAX_NAME_LEN:
            raise ProtocolError("malformed hello: bad node name")
        if type(incarnation) is not bytes or not 8 <= len(incarnation) <= 32:
            raise ProtocolError("malformed hello: bad incarnation")
        if type(address) is not str:
            raise ProtocolError("malformed hello: bad address")
        return cls(name=name, incarnation=incarnation, address=address, version=version)


class State(Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"


_OPEN: Final = State.OPEN  # (a global, not an attribute lookup, on the per-frame path)

SealMessage = Callable[[bytes, int, Buffer], bytes]
OpenMessages = Callable[[bytes, int, Buffer, int, list[Frame], int], tuple[int, int, bytes | None]]


def _fast_cipher() -> tuple[SealMessage, OpenMessages] | None:
    """The C fast path's sealing and opening of transport messages; None if it is not built.

    Both are exact stand-ins for the reference path below (TransportCipher, then the frame
    decoder), on libsodium's own functions: opening consumes only what authenticates and
    decodes in the common case, and leaves the rest (a failure to report, a PART run, the
    connection's own control frames) to the reference path.
    """
    try:
        from qchan.protocol import _speedups
    except ImportError:  # no compiler where qchan was installed: the pure-Python path only
        return None
    try:
        addresses = aead_addresses()
    except RuntimeError as exc:  # a PyNaCl whose libsodium binding is not what C expects
        warnings.warn(f"qchan seals in Python only: {exc}", RuntimeWarning, stacklevel=2)
        return None
    _speedups.set_aead(*addresses)
    return _speedups.seal_message, _speedups.open_messages


_FAST: Final = _fast_cipher()


@final
@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The peer is authenticated: ``remote_key`` is its static public key."""

    remote_key: bytes
    hello: Hello


@final
@dataclass(frozen=True, slots=True)
class FramesReceived:
    """Frames that arrived, in order (everything decoded from one ``receive_data`` call)."""

    frames: list[Frame] = field(default_factory=list)


@final
@dataclass(frozen=True, slots=True)
class GoawayReceived:
    """The peer is closing the connection on purpose (see :class:`GoawayReason`)."""

    reason: int
    text: str


@final
@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection is over: the transport should write what is left and close.

    ``error`` says why: :class:`~qchan.AuthenticationError` (handshake refused),
    :class:`~qchan.ProtocolError` (the peer misbehaved, or a handshake that never finished),
    :class:`~qchan.PeerLost` (silence, or we closed it ourselves).
    """

    error: QchanError


Event = HandshakeCompleted | FramesReceived | GoawayReceived | ConnectionTerminated


@final
class Connection:
    """The sans-IO protocol state of one connection (see the module docstring)."""

    __slots__ = (
        "_cipher",
        "_config",
        "_decoder",
        "_handshake",
        "_handshake_deadline",
        "_inbox",
        "_last_heard",
        "_max_message",
        "_open_messages",
        "_outbox",
        "_pending",
        "_ping_nonce",
        "_pinged_at",
        "_receive_key",
        "_receiving",
        "_seal_message",
        "_send_key",
        "_sending",
        "initiator",
        "link_id",
        "remote_hello",
        "remote_key",
        "state",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        key: NodeKey,
        cluster_key: ClusterKey,
        hello: Hello,
        now: float,
        trusted: frozenset[bytes] | None = None,
        expected_remote_key: bytes | None = None,
        config: ConnectionConfig = ConnectionConfig(),
        accelerated: bool = True,
    ) -> None:
        """``accelerated=False`` keeps to the pure-Python reference path (for the tests that
        compare the two); by default the C fast path is used where it was built."""
        self.initiator = initiator
        self.state = State.HANDSHAKING
        self.remote_key: bytes | None = None
        self.remote_hello: Hello | None = None
        #: Names this connection to both ends alike once the handshake is done: the first 8
        #: bytes of the handshake hash (SETTLE names a lost link by it).
        self.link_id = b""
        self._config = config
        self._handshake = NoiseHandshake(
            initiator=initiator,
            static_key=key,
            cluster_key=cluster_key,
            payload=hello.encode(),
            trusted=trusted,
            expected_remote_key=expected_remote_key,
        )
        self._handshake_deadline = now + config.handshake_timeout
        self._cipher: TransportCipher | None = None
        self._decoder = FrameDecoder(config.max_frame_size, accelerated=accelerated)
        fast = _FAST if accelerated else None
        self._seal_message: SealMessage | None = fast[0] if fast else None
        self._open_messages: OpenMessages | None = fast[1] if fast else None
        # (The transport CipherStates and their keys, for the fast path, once known.)
        self._sending: CipherState | None = None
        self._receiving: CipherState | None = None
        self._send_key = self._receive_key = b""
        self._inbox = bytearray()  # wire bytes not yet parsed into messages
        self._outbox = bytearray()  # wire bytes ready to write
        self._pending = bytearray()  # frames not yet sealed into a transport message
        self._last_heard = now
        # The longest message we accept next: a listener knows message 1's exact length, so
        # a stranger's oversized length is refused before its bytes are waited for.
        self._max_message = MAX_MESSAGE_LEN if initiator else _MESSAGE_1_LEN
        self._pinged_at = -1.0
        self._ping_nonce = 0
        if initiator:
            self._write_message(self._handshake.start())

    # --- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Take bytes from the peer; return what happened, in order.

        Never raises for anything the peer sent: a failure comes out as a final
        :class:`ConnectionTerminated` event, after the events of everything valid before it.
        """
        if self.state is State.CLOSED:
            return []
        # Parse straight from `data` when nothing is left over from before (the usual case);
        # only an incomplete tail is kept in the inbox.
        inbox: bytes | bytearray
        if self._inbox:
            self._inbox += data
            inbox = self._inbox
        else:
            inbox = data
        events: list[Event] = []
        frames: list[Frame] = []
        offset, size = 0, len(inbox)
        open_messages, receiving = self._open_messages, self._receiving
        try:
            while size - offset >= 2:
                if (
                    open_messages is not None
                    and receiving is not None
                    and self.state is _OPEN
                    and self._decoder.idle
                    and (nonce := receiving.nonce) < MAX_NONCE
                ):
                    # The C fast path opens and decodes what it can; what it leaves, the
                    # reference path below takes, one message at a time (and it raises
                    # once the nonce is exhausted).
                    offset, opened, deferred = open_messages(
                        self._receive_key, nonce, inbox, offset, frames, _FIRST_NODE_KIND
                    )
                    if opened:
                        receiving.set_nonce(nonce + opened)
                        self._last_heard = now
                        if deferred is not None and self._receive_frames(deferred, frames, events):
                            break  # a GOAWAY ends the stream
                        continue
                    # Nothing opened: the next message is incomplete, or fails (and the
                    # reference path says how).
                (length,) = _LENGTH.unpack_from(inbox, offset)
                if length > self._max_message:
                    raise AuthenticationError(
                        f"handshake message 1 announces {length} bytes, exactly "
                        f"{_MESSAGE_1_LEN} expected (the peer does not speak qchan/1)"
                    )
                end = offset + 2 + length
                if end > size:
                    break
                message = bytes(inbox[offset + 2 : end])
                offset = end
                self._last_heard = now
                if self._cipher is None:
                    self._receive_handshake(message, events)
                    continue
                plaintext = self._cipher.decrypt(message)
                if self.state is State.HANDSHAKING:
                    self._confirmed(events)
                if self._receive_frames(plaintext, frames, events):
                    break  # a GOAWAY ends the stream
        except (AuthenticationError, ProtocolError) as exc:
            self._terminate(exc, events, frames)
            return events
        if inbox is self._inbox:
            del self._inbox[:offset]
        elif offset < size:
            self._inbox += data[offset:]
        if frames:
            if events:  # frames come before a GOAWAY that followed them
                events.insert(self._first_frames_position(events), FramesReceived(frames))
            else:
                events.append(FramesReceived(frames))
        return events

    @staticmethod
    def _first_frames_position(events: list[Event]) -> int:
        # Frames come before a GOAWAY that followed them (the peer sent GOAWAY last).
        for position, event in enumerate(events):
            if isinstance(event, GoawayReceived):
                return position
        return len(events)

    def _receive_handshake(self, message: bytes, events: list[Event]) -> None:
        handshake = self._handshake
        self._max_message = MAX_MESSAGE_LEN
        reply = handshake.receive(message)
        if handshake.complete:
            # The peer's hello is judged before our message 3 goes out: a peer refused here
            # gets nothing more, as when its key is refused.
            hello = Hello.decode(handshake.remote_payload)
            self._cipher = handshake.transport()
            self._sending, self._receiving = self._cipher.sending, self._cipher.receiving
            self._send_key = self._sending.key or b""
            self._receive_key = self._receiving.key or b""
            self.link_id = handshake.handshake_hash[:LINK_ID_LEN]
            self.remote_key = handshake.remote_static
            self.remote_hello = hello
            if not self.initiator:
                # The responder has judged the initiator (message 3): it is in. Its first
                # transport message (a PING) tells the initiator so.
                self._confirmed(events)
                self.send([Kind.PING, 0])
            # The initiator waits for that message: a responder that does not trust it
            # closes instead, and the dialler learns it was refused, not merely dropped.
        if reply is not None:
            self._write_message(reply)

    def _confirmed(self, events: list[Event]) -> None:
        assert self.remote_key is not None
        assert self.remote_hello is not None
        self.state = State.OPEN
        events.append(HandshakeCompleted(self.remote_key, self.remote_hello))

    def _receive_frames(self, plaintext: bytes, frames: list[Frame], events: list[Event]) -> bool:
        """Collect the frames of one message; True if it ended the connection (GOAWAY)."""
        for frame in self._decoder.decode(plaintext):
            kind = frame[0]
            if kind > _LAST_CONTROL_KIND:  # the common case: a frame for the node
                frames.append(frame)
            elif kind == Kind.PING:
                self.send([Kind.PONG, frame[1]])
            elif kind == Kind.PONG:
                pass  # hearing anything at all is what counts
            elif kind == Kind.GOAWAY:
                events.append(GoawayReceived(frame[1], frame[2]))
                self.state = State.CLOSED
                events.append(
                    ConnectionTerminated(PeerLost(f"peer closed the connection: {frame[2]}"))
                )
                return True
        return False

    def _terminate(self, error: QchanError, events: list[Event], frames: list[Frame]) -> None:
        if frames:
            events.append(FramesReceived(frames))
        self.state = State.CLOSED
        self._inbox.clear()
        self._pending.clear()
        events.append(ConnectionTerminated(error))

    # --- output --------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Queue a frame; it goes out with the next :meth:`data_to_send`.

        Raises ``RuntimeError`` before the handshake has completed or after the connection
        closed: the node only sends on open connections.
        """
        if self.state is not _OPEN:
            raise RuntimeError(f"cannot send on a connection that is {self.state.value}")
        encoded = encode_frame(frame)
        pending = self._pending
        if len(pending) + len(encoded) > MAX_PLAINTEXT_LEN:
            self._seal()
            if len(encoded) > MAX_PLAINTEXT_LEN:
                self._send_in_parts(encoded)
                return
        pending += encoded

    def _send_in_parts(self, encoded: bytes) -> None:
        chunk_size = MAX_PLAINTEXT_LEN - PART_OVERHEAD
        total = len(encoded)
        view = memoryview(encoded)
        for start in range(0, total, chunk_size):
            part = encode_frame([Kind.PART, total, view[start : start + chunk_size]])
            self._pending += part
            self._seal()

    def _seal(self) -> None:
        if self._pending:
            self._outbox += self._sealed()

    def _sealed(self) -> bytes:
        """The pending frames as one transport message, length and all; they are no longer
        pending."""
        pending = self._pending
        seal_message, sending = self._seal_message, self._sending
        if seal_message is not None and sending is not None:
            # (take_nonce raises once the nonce is exhausted, as the reference path does)
            message = seal_message(self._send_key, sending.take_nonce(), pending)
        else:  # the reference path
            assert self._cipher is not None
            sealed = self._cipher.encrypt(pending)
            message = _LENGTH.pack(len(sealed)) + sealed
        pending.clear()
        return message

    def _write_message(self, message: bytes) -> None:
        self._outbox += _LENGTH.pack(len(message))
        self._outbox += message

    def queued_bytes(self) -> int:
        """How much is waiting for :meth:`data_to_send` (frames not sealed, and sealed bytes)."""
        return len(self._pending) + len(self._outbox)

    def data_to_send(self) -> bytes:
        """Everything ready for the wire, sealing the frames queued since the last call."""
        outbox = self._outbox
        if self._pending:
            if not outbox:
                return self._sealed()  # (the usual case: no copy through the outbox)
            outbox += self._sealed()
        data = bytes(outbox)
        outbox.clear()
        return data

    def close(self, reason: GoawayReason = GoawayReason.SHUTDOWN, text: str = "") -> None:
        """Say goodbye (a ``GOAWAY`` if the connection is open) and stop accepting input."""
        if self.state is State.OPEN:
            self.send([Kind.GOAWAY, int(reason), text])
            self._seal()
        self.state = State.CLOSED

    # --- time ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called (``None``: never)."""
        if self.state is State.HANDSHAKING:
            return self._handshake_deadline
        if self.state is State.CLOSED:
            return None
        if self._pinged_at >= self._last_heard:
            return self._last_heard + self._config.peer_timeout
        return self._last_heard + self._config.heartbeat_interval

    def handle_timer(self, now: float) -> list[Event]:
        """Act on deadlines that have passed: ping, or give up on a silent peer."""
        events: list[Event] = []
        if self.state is State.HANDSHAKING:
            if now >= self._handshake_deadline:
                timeout = self._config.handshake_timeout
                late = ProtocolError(f"handshake did not complete within {timeout} s")
                self._terminate(late, events, [])
        elif self.state is State.OPEN:
            silence = now - self._last_heard
            if silence >= self._config.peer_timeout:
                lost = PeerLost(f"no word from the peer for {silence:.1f} s")
                self._terminate(lost, events, [])
            elif silence >= self._config.heartbeat_interval and self._pinged_at < self._last_heard:
                self._ping_nonce += 1
                self.send([Kind.PING, self._ping_nonce])
                self._pinged_at = now
        return events

    def __repr__(self) -> str:
        peer = self.remote_hello.name if self.remote_hello else "?"
        role = "initiator" if self.initiator else "responder"
        return f"<Connection {role} peer={peer} {self.state.value}>"
