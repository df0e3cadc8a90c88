"""qchan's handshake: ``Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b``, prologue ``b"qchan/1"``, sans-IO.

Theory of operation, the three messages and what each side checks::

    initiator (dialler)                                  responder (listener)
    start()  -> 1: psk, e               (empty payload) ->  receive(1): wrong cluster key?
                                                             -> AuthenticationError, nothing sent
             <- 2: e, ee, s, es       (responder hello) <-  ... else returns message 2
    receive(2): responder key untrusted or unexpected?
      -> AuthenticationError, message 3 never made (our identity is not revealed)
             -> 3: s, se              (initiator hello) ->  receive(3): initiator key untrusted?
    ... else returns message 3; complete                     -> AuthenticationError; complete

The cluster key is the PSK, mixed in before message 1's tag: a listener without it cannot
authenticate message 1 and sends nothing at all. Payloads of messages 2 and 3 are opaque bytes
of the caller's (the protocol layer's hello). Messages are whole Noise messages of at most
65535 bytes; the 2-byte length framing belongs to the protocol layer.

Every failure raises :class:`~qchan.AuthenticationError` with a message fit for a log (never
any secret), and leaves the handshake failed for good: any further call raises again.
Calls out of order (``start()`` twice, ``receive()`` before ``start()``...) are bugs of the
caller and raise ``RuntimeError``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final, final

from qchan._errors import AuthenticationError, MessageTooLarge
from qchan.crypto.cipher import TransportCipher
from qchan.crypto.keys import ClusterKey, NodeKey, fingerprint
from qchan.crypto.noise import (
    DHLEN,
    MAX_MESSAGE_LEN,
    Buffer,
    HandshakeState,
    KeyPair,
    pattern_from_name,
)

__all__ = ["MAX_PAYLOAD_LEN", "PROLOGUE", "PROTOCOL_NAME", "NoiseHandshake"]

PROTOCOL_NAME: Final = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
PROLOGUE: Final = b"qchan/1"
_PATTERN: Final = pattern_from_name(PROTOCOL_NAME)
# Message 1 carries an empty payload, so it has exactly this length (48 bytes).
_MESSAGE_1_LEN: Final = _PATTERN.overheads[0]
MAX_PAYLOAD_LEN: Final = MAX_MESSAGE_LEN - max(_PATTERN.overheads)
"""The largest payload of message 2 or 3 that keeps the message within 65535 bytes."""


def _public_keys(what: str, keys: Collection[bytes]) -> frozenset[bytes]:
    # memoryview() takes any bytes-like key and refuses ints (bytes(32) would be 32 zeros).
    result = frozenset(bytes(memoryview(key)) for key in keys)
    if any(len(key) != DHLEN for key in result):
        raise ValueError(f"{what} must be {DHLEN}-byte public keys")
    return result


@final
class NoiseHandshake:
    """One side of qchan's handshake. See the module docstring for the message flow.

    ``static_key`` is our identity, ``cluster_key`` the PSK both sides must hold, ``payload``
    what we send in our message (2 for a responder, 3 for an initiator). ``trusted``, if not
    ``None``, is the set of public keys we accept from the peer (an empty set accepts nobody).
    ``expected_remote_key`` is the one key a dialler accepts from the listener it meant to
    reach (checked at message 2; a responder given one checks it at message 3).
    ``_ephemeral`` fixes our ephemeral private key: for tests only.

    Raises ``ValueError`` (:class:`~qchan.MessageTooLarge` for a payload over
    :data:`MAX_PAYLOAD_LEN`) if an argument is unusable.
    """

    __slots__ = (
        "_expected",
        "_failed",
        "_initiator",
        "_payload",
        "_remote_payload",
        "_state",
        "_transport",
        "_trusted",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        static_key: NodeKey,
        cluster_key: ClusterKey,
        payload: bytes,
        trusted: Collection[bytes] | None = None,
        expected_remote_key: bytes | None = None,
        _ephemeral: bytes | None = None,
    ) -> None:
        if len(payload) > MAX_PAYLOAD_LEN:
            raise MessageTooLarge(
                f"a handshake payload is at most {MAX_PAYLOAD_LEN} bytes, got {len(payload)}"
            )
        self._initiator = initiator
        self._payload = bytes(payload)
        self._trusted = None if trusted is None else _public_keys("trusted keys", trusted)
        self._expected = None
        if expected_remote_key is not None:
            (self._expected,) = _public_keys("expected_remote_key", [expected_remote_key])
        self._state = HandshakeState(
            _PATTERN,
            initiator=initiator,
            prologue=PROLOGUE,
            static=static_key.key_pair,
            psks=(bytes(cluster_key),),
            ephemeral=None if _ephemeral is None else KeyPair.from_private(_ephemeral),
        )
        self._failed = False
        self._remote_payload: bytes | None = None
        self._transport: TransportCipher | None = None

    # -- the results -----------------------------------------------------------------------

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def complete(self) -> bool:
        """Whether the handshake has succeeded: both keys checked, both payloads exchanged."""
        return self._remote_payload is not None and self._state.finished

    @property
    def remote_static(self) -> bytes:
        """The peer's 32-byte public key, checked. Raises ``RuntimeError`` before completion."""
        self._check_complete()
        rs = self._state.remote_static
        assert rs is not None  # the pattern's messages carry it before the end
        return rs

    @property
    def remote_payload(self) -> bytes:
        """The peer's payload. Raises ``RuntimeError`` before completion."""
        self._check_complete()
        assert self._remote_payload is not None
        return self._remote_payload

    @property
    def handshake_hash(self) -> bytes:
        """64 bytes unique to this session, equal on both sides. ``RuntimeError`` before."""
        self._check_complete()
        return self._state.handshake_hash

    def transport(self) -> TransportCipher:
        """The session's transport cipher. Only once: two ciphers would reuse nonces.

        Raises ``RuntimeError`` before completion or on a second call.
        """
        self._check_complete()
        if self._transport is not None:
            raise RuntimeError("transport() was already called for this handshake")
        send, receive = self._state.transport_ciphers()
        self._transport = TransportCipher(send, receive, self._state.handshake_hash)
        return self._transport

    def _check_complete(self) -> None:
        if not self.complete:
            raise RuntimeError("the handshake is not complete")

    # -- the messages ----------------------------------------------------------------------

    def start(self) -> bytes:
        """Message 1, for an initiator to send first.

        Raises ``RuntimeError`` for a responder or when called twice.
        """
        if not self._initiator or self._state.message_index != 0 or self._failed:
            raise RuntimeError("start() is for an initiator, once, before anything else")
        return self._state.write_message(b"")

    def receive(self, message: Buffer) -> bytes | None:
        """Take the peer's next handshake message; return ours to send next, if any.

        A responder returns message 2 for message 1, and ``None`` for message 3 (complete).
        An initiator returns message 3 for message 2 (complete).

        Raises :class:`~qchan.AuthenticationError` if the message is malformed, fails
        authentication (the peer does not hold the cluster key, or it was tampered with),
        carries a low-order key, or the peer's key is untrusted or not the expected one; the
        handshake has then failed for good and nothing must be sent. Raises ``RuntimeError``
        if no message is expected (before ``start()``, after completion).
        """
        if self._failed:
            raise AuthenticationError("handshake failed: it already failed before")
        if self._state.finished or self._state.our_turn:
            raise RuntimeError("no handshake message is expected now")
        number = self._state.message_index + 1
        try:
            return self._receive(number, message)
        except AuthenticationError as exc:
            self._failed = True
            raise AuthenticationError(f"handshake failed at message {number}: {exc}") from exc

    def _receive(self, number: int, message: Buffer) -> bytes | None:
        if len(message) > MAX_MESSAGE_LEN:
            raise AuthenticationError(
                f"{len(message)} bytes, more than a Noise message's {MAX_MESSAGE_LEN}"
            )
        if number == 1 and len(message) != _MESSAGE_1_LEN:
            raise AuthenticationError(
                f"{len(message)} bytes, exactly {_MESSAGE_1_LEN} expected "
                "(qchan/1 sends an empty payload)"
            )
        try:
            payload = self._state.read_message(message)
        except AuthenticationError:
            if number != 1:
                raise
            # Its length is right and it holds no DH, so only its tag can have failed.
            raise AuthenticationError(
                "the peer does not hold the cluster key (or the message was corrupted)"
            ) from None
        if self._state.remote_static is not None:
            self._check_remote_key(self._state.remote_static)
        # Message 2 for a responder, 3 for an initiator, carrying our payload. Made only once
        # the peer's key (if it sent it) has passed, so a dialler never reveals its identity
        # to the wrong listener. A low-order ephemeral key in message 1 fails here, at "ee".
        reply = None if self._state.finished else self._state.write_message(self._payload)
        if number > 1:
            self._remote_payload = payload
        return reply

    def _check_remote_key(self, key: bytes) -> None:
        if self._expected is not None and key != self._expected:
            raise AuthenticationError(
                f"peer key {fingerprint(key)} is not the expected key {fingerprint(self._expected)}"
            )
        if self._trusted is not None and key not in self._trusted:
            raise AuthenticationError(f"peer key {fingerprint(key)} is not trusted")
