"""Interop with the ``noiseprotocol`` package (pyca/cryptography underneath): an independent
implementation as a test-only peer, byte for byte in-process and live over loopback TCP."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest
from noise.connection import Keypair, NoiseConnection

from qchan.crypto import PROLOGUE, PROTOCOL_NAME, NodeKey, NoiseHandshake, TransportCipher
from tests.crypto._helpers import (
    CLUSTER_KEY,
    INITIATOR_EPHEMERAL,
    INITIATOR_HELLO,
    INITIATOR_KEY,
    RESPONDER_EPHEMERAL,
    RESPONDER_HELLO,
    RESPONDER_KEY,
)

TIMEOUT = 10.0


def theirs(*, initiator: bool, key: NodeKey, ephemeral: bytes | None = None) -> Any:
    """A noiseprotocol connection configured as qchan's handshake, started."""
    connection = NoiseConnection.from_name(PROTOCOL_NAME.encode())
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_psks(bytes(CLUSTER_KEY))
    connection.set_prologue(PROLOGUE)
    connection.set_keypair_from_private_bytes(Keypair.STATIC, key.private_bytes())
    if ephemeral is None:
        connection.start_handshake()
    else:
        connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
        with pytest.warns(UserWarning, match="ephemeral"):  # fixed keys: "for testing"
            connection.start_handshake()
    return connection


def ours(*, initiator: bool, fixed: bool = True) -> NoiseHandshake:
    return NoiseHandshake(
        initiator=initiator,
        static_key=INITIATOR_KEY if initiator else RESPONDER_KEY,
        cluster_key=CLUSTER_KEY,
        payload=INITIATOR_HELLO if initiator else RESPONDER_HELLO,
        _ephemeral=(INITIATOR_EPHEMERAL if initiator else RESPONDER_EPHEMERAL) if fixed else None,
    )


def test_same_keys_same_bytes() -> None:
    """Both implementations, each talking to itself with the same fixed keys, agree exactly."""
    initiator, responder = ours(initiator=True), ours(initiator=False)
    their_initiator = theirs(initiator=True, key=INITIATOR_KEY, ephemeral=INITIATOR_EPHEMERAL)
    their_responder = theirs(initiator=False, key=RESPONDER_KEY, ephemeral=RESPONDER_EPHEMERAL)

    message1 = initiator.start()
    assert bytes(their_initiator.write_message(b"")) == message1
    their_responder.read_message(message1)
    message2 = responder.receive(message1)
    assert message2 is not None
    assert bytes(their_responder.write_message(RESPONDER_HELLO)) == message2
    assert bytes(their_initiator.read_message(message2)) == RESPONDER_HELLO
    message3 = initiator.receive(message2)
    assert message3 is not None
    assert bytes(their_initiator.write_message(INITIATOR_HELLO)) == message3
    assert bytes(their_responder.read_message(message3)) == INITIATOR_HELLO
    assert responder.receive(message3) is None

    hashes = {
        initiator.handshake_hash,
        responder.handshake_hash,
        bytes(their_initiator.get_handshake_hash()),
        bytes(their_responder.get_handshake_hash()),
    }
    assert len(hashes) == 1
    assert initiator.transport().encrypt(b"t") == bytes(their_initiator.encrypt(b"t"))
    assert responder.transport().encrypt(b"u") == bytes(their_responder.encrypt(b"u"))


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "they-initiate"])
def test_in_process_handshake_with_them(we_initiate: bool) -> None:
    us = ours(initiator=we_initiate)
    them = theirs(
        initiator=not we_initiate,
        key=RESPONDER_KEY if we_initiate else INITIATOR_KEY,
        ephemeral=RESPONDER_EPHEMERAL if we_initiate else INITIATOR_EPHEMERAL,
    )
    reference_pair = (ours(initiator=True), ours(initiator=False))
    reference = [reference_pair[0].start()]
    for receiver in (reference_pair[1], reference_pair[0], reference_pair[1]):
        produced = receiver.receive(reference[-1])
        if produced is not None:
            reference.append(produced)

    # Drive the three messages, checking each against the all-ours reference run.
    if we_initiate:
        sent = [us.start()]
        them.read_message(sent[0])
        sent.append(bytes(them.write_message(RESPONDER_HELLO)))
        reply = us.receive(sent[1])
        assert reply is not None
        sent.append(reply)
        assert bytes(them.read_message(sent[2])) == INITIATOR_HELLO
    else:
        sent = [bytes(them.write_message(b""))]
        reply = us.receive(sent[0])
        assert reply is not None
        sent.append(reply)
        assert bytes(them.read_message(sent[1])) == RESPONDER_HELLO
        sent.append(bytes(them.write_message(INITIATOR_HELLO)))
        assert us.receive(sent[2]) is None
    assert sent == reference
    assert us.complete
    assert them.handshake_finished
    assert us.handshake_hash == bytes(them.get_handshake_hash()) == reference_pair[0].handshake_hash
    cipher = us.transport()
    assert bytes(them.decrypt(cipher.encrypt(b"to them"))) == b"to them"
    assert cipher.decrypt(bytes(them.encrypt(b"to us"))) == b"to us"


# -- live, over loopback TCP ---------------------------------------------------------------------


def send_frame(sock: socket.socket, message: bytes) -> None:
    sock.sendall(struct.pack(">H", len(message)) + message)


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed mid-frame")
        data += chunk
    return data


def receive_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">H", receive_exactly(sock, 2))
    return receive_exactly(sock, length)


SIZES = (0, 1, 100, 4096, 65519)


def their_side(sock: socket.socket, *, initiator: bool, key: NodeKey, hello: bytes) -> bytes:
    """noiseprotocol's end: handshake, then echo every transport message reversed."""
    them = theirs(initiator=initiator, key=key)
    if initiator:
        send_frame(sock, bytes(them.write_message(b"")))
    while not them.handshake_finished:
        them.read_message(receive_frame(sock))
        if not them.handshake_finished:
            send_frame(sock, bytes(them.write_message(hello)))
    for _ in SIZES:
        send_frame(sock, bytes(them.encrypt(bytes(them.decrypt(receive_frame(sock)))[::-1])))
    return bytes(them.get_handshake_hash())


def our_side(sock: socket.socket, *, initiator: bool) -> tuple[NoiseHandshake, TransportCipher]:
    us = ours(initiator=initiator, fixed=False)
    if initiator:
        send_frame(sock, us.start())
    while not us.complete:
        reply = us.receive(receive_frame(sock))
        if reply is not None:
            send_frame(sock, reply)
    cipher = us.transport()
    for size in SIZES:
        message = bytes(i % 251 for i in range(size))
        send_frame(sock, cipher.encrypt(message))
        assert cipher.decrypt(receive_frame(sock)) == message[::-1]
    return us, cipher


def run_in_thread(function: Callable[[], bytes]) -> Callable[[], bytes]:
    """Start ``function`` in a thread; the returned callable joins it and returns its result."""
    results: list[bytes] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(function())
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join() -> bytes:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "noiseprotocol side did not finish"
        if errors:
            raise errors[0]
        return results[0]

    return join


@pytest.mark.parametrize("we_dial", [True, False], ids=["we-dial", "they-dial"])
def test_live_over_loopback_tcp(we_dial: bool) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(TIMEOUT)
        address = server.getsockname()
        dialler = socket.create_connection(address, timeout=TIMEOUT)
        listener, _ = server.accept()
    listener.settimeout(TIMEOUT)
    with dialler, listener:
        their_sock, our_sock = (listener, dialler) if we_dial else (dialler, listener)
        key, hello = (
            (RESPONDER_KEY, RESPONDER_HELLO) if we_dial else (INITIATOR_KEY, INITIATOR_HELLO)
        )
        join = run_in_thread(
            lambda: their_side(their_sock, initiator=not we_dial, key=key, hello=hello)
        )
        us, cipher = our_side(our_sock, initiator=we_dial)
        their_hash = join()
    assert us.handshake_hash == their_hash == cipher.handshake_hash
    assert us.remote_static == key.public
    assert us.remote_payload == hello
    assert cipher.send_nonce == cipher.receive_nonce == len(SIZES)
