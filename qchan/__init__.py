"""qchan: Go channels across machines, for Python.

Channels with Go semantics (rendezvous, buffers, close with drain, ``select``), locally and,
through :class:`Node`, across an encrypted cluster of peer nodes. See README.md and docs/.
"""

from qchan._channel import Channel, ChannelStatistics, ReceiveChannel, SendChannel
from qchan._codec import register_type
from qchan._errors import (
    AuthenticationError,
    ChannelClosed,
    DeliveryUncertain,
    MessageTooLarge,
    NotFound,
    PeerLost,
    PermissionDenied,
    ProtocolError,
    QchanError,
    WouldBlock,
)
from qchan._select import RecvCase, SendCase, recv, select, send
from qchan._version import __version__
from qchan.crypto.keys import ClusterKey, NodeKey
from qchan.node import Node, PeerInfo

__all__ = [
    "AuthenticationError",
    "Channel",
    "ChannelClosed",
    "ChannelStatistics",
    "ClusterKey",
    "DeliveryUncertain",
    "MessageTooLarge",
    "Node",
    "NodeKey",
    "NotFound",
    "PeerLost",
    "PeerInfo",
    "PermissionDenied",
    "ProtocolError",
    "QchanError",
    "ReceiveChannel",
    "RecvCase",
    "SendCase",
    "SendChannel",
    "WouldBlock",
    "__version__",
    "recv",
    "register_type",
    "select",
    "send",
]
