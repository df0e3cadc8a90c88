"""The transport cipher of an established session: one message in, one message out.

Nonces are implicit counters, one per direction, so a replayed, reordered, dropped, truncated
or tampered message fails authentication: the stream of messages must arrive exactly as sent
(TCP gives that). After any failure the connection must be closed.
"""

from __future__ import annotations

from typing import Final, final

from qchan._errors import MessageTooLarge, ProtocolError
from qchan.crypto.noise import MAX_MESSAGE_LEN, TAGLEN, Buffer, CipherState

__all__ = ["MAX_PLAINTEXT_LEN", "TransportCipher"]

MAX_PLAINTEXT_LEN: Final = MAX_MESSAGE_LEN - TAGLEN
"""The largest plaintext one transport message can carry (65519 bytes)."""


@final
class TransportCipher:
    """Encrypts what we send and decrypts what we receive, after a completed handshake.

    Made by :meth:`qchan.crypto.NoiseHandshake.transport`. Messages may be at most
    :data:`~qchan.crypto.noise.MAX_MESSAGE_LEN` (65535) bytes on the wire, which the protocol
    layer frames with a 2-byte length.
    """

    __slots__ = ("_receive", "_send", "handshake_hash")

    def __init__(self, send: CipherState, receive: CipherState, handshake_hash: bytes) -> None:
        self._send = send
        self._receive = receive
        self.handshake_hash: Final = handshake_hash
        """Unique to this session and equal on both sides: usable as a channel binding."""

    @property
    def send_nonce(self) -> int:
        """How many messages have been encrypted."""
        return self._send.nonce

    @property
    def receive_nonce(self) -> int:
        """How many messages have been decrypted."""
        return self._receive.nonce

    @property
    def sending(self) -> CipherState:
        """The CipherState our messages are sealed with: for a fast path that seals with its
        key itself and takes its nonces from it (:meth:`CipherState.take_nonce`)."""
        return self._send

    @property
    def receiving(self) -> CipherState:
        """The CipherState the peer's messages are opened with (for a fast path, as above)."""
        return self._receive

    def encrypt(self, plaintext: Buffer) -> bytes:
        """The transport message carrying ``plaintext`` (16 bytes longer).

        Raises :class:`~qchan.MessageTooLarge` (a ``ValueError``) if ``plaintext`` exceeds
        :data:`MAX_PLAINTEXT_LEN`, and :class:`~qchan.ProtocolError` once 2**64-1 messages
        have been sent (the nonce never wraps). Nothing is consumed when it raises.
        """
        if len(plaintext) > MAX_PLAINTEXT_LEN:
            raise MessageTooLarge(
                f"a transport message carries at most {MAX_PLAINTEXT_LEN} bytes, "
                f"got {len(plaintext)}"
            )
        return self._send.encrypt_with_ad(b"", plaintext)

    def decrypt(self, ciphertext: Buffer) -> bytes:
        """The plaintext of the peer's next transport message.

        Raises :class:`~qchan.ProtocolError` if it is longer than 65535 bytes, shorter than
        its 16-byte tag, or fails authentication (tampered, truncated, replayed, reordered, or
        sent under other keys), or once 2**64-1 messages have been received.
        """
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise ProtocolError(
                f"transport message of {len(ciphertext)} bytes exceeds {MAX_MESSAGE_LEN}"
            )
        return self._receive.decrypt_with_ad(b"", ciphertext)
