"""Sans-IO cryptography for qchan: the Noise handshake, the transport cipher and key files.

Nothing here performs I/O on the network: messages go in and out as bytes (see
:mod:`qchan.crypto.handshake`). Built on PyNaCl and the standard library; :mod:`.noise` is a
small generic Noise engine, :mod:`.handshake` qchan's use of it, :mod:`.cipher` the transport
cipher, and :mod:`.keys` the node and cluster keys with their files.
"""

from qchan.crypto.cipher import MAX_PLAINTEXT_LEN, TransportCipher
from qchan.crypto.handshake import MAX_PAYLOAD_LEN, PROLOGUE, PROTOCOL_NAME, NoiseHandshake
from qchan.crypto.keys import ClusterKey, NodeKey, fingerprint
from qchan.crypto.noise import MAX_MESSAGE_LEN

__all__ = [
    "MAX_MESSAGE_LEN",
    "MAX_PAYLOAD_LEN",
    "MAX_PLAINTEXT_LEN",
    "PROLOGUE",
    "PROTOCOL_NAME",
    "ClusterKey",
    "NodeKey",
    "NoiseHandshake",
    "TransportCipher",
    "fingerprint",
]
