"""Time qchan's crypto layer in-process: full handshakes and transport messages.

    .venv/bin/python benchmarks/handshake.py [-n HANDSHAKES] [-m MESSAGES]

A handshake here is both sides, all three messages, from construction to both transport
ciphers: what one connection costs the two machines together. A transport round is one
``encrypt`` and the matching ``decrypt``. Reference points from DESIGN.md: PyNaCl's
ChaCha20-Poly1305 seal+open is ~9 us; a full handshake must take at most 2 ms.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from qchan.crypto import ClusterKey, NodeKey, NoiseHandshake, TransportCipher
from qchan.crypto.noise import CipherState

CLUSTER_KEY = ClusterKey.generate()
KEYS = (NodeKey.generate(), NodeKey.generate())


def handshake() -> tuple[TransportCipher, TransportCipher]:
    initiator = NoiseHandshake(
        initiator=True, static_key=KEYS[0], cluster_key=CLUSTER_KEY, payload=b"i" * 40
    )
    responder = NoiseHandshake(
        initiator=False, static_key=KEYS[1], cluster_key=CLUSTER_KEY, payload=b"r" * 40
    )
    message2 = responder.receive(initiator.start())
    assert message2 is not None
    message3 = initiator.receive(message2)
    assert message3 is not None
    responder.receive(message3)
    return initiator.transport(), responder.transport()


def per_call_us(function: Callable[[], object], count: int) -> float:
    """Best of three runs of ``count`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(count):
            function()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--handshakes", type=int, default=500)
    parser.add_argument("-m", "--messages", type=int, default=20_000)
    args = parser.parse_args()

    sender, receiver = handshake()
    send, receive = CipherState(bytes(32)), CipherState(bytes(32))
    rows = [("full handshake, both sides", per_call_us(handshake, args.handshakes), 0)]
    for size, count in ((100, args.messages), (60_000, max(args.messages // 20, 1))):
        plaintext = bytes(size)

        def transport(p: bytes = plaintext) -> bytes:
            return receiver.decrypt(sender.encrypt(p))

        # The bare engine, to show what the TransportCipher layer costs on top of it.
        def engine(p: bytes = plaintext) -> bytes:
            return receive.decrypt_with_ad(b"", send.encrypt_with_ad(b"", p))

        rows.append((f"transport encrypt+decrypt {size} B", per_call_us(transport, count), size))
        rows.append((f"  bare CipherState, {size} B", per_call_us(engine, count), size))

    print(f"{'what':<36} {'us/op':>10} {'ops/s':>10} {'MB/s':>8}")
    for what, us, size in rows:
        throughput = f"{size / us:8.0f}" if size else f"{'':8}"
        print(f"{what:<36} {us:10.1f} {1e6 / us:10.0f} {throughput}")


if __name__ == "__main__":
    main()
