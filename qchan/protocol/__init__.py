"""The qchan wire protocol, sans-IO: frames and the per-connection state machine.

Nothing here touches sockets, clocks or tasks (an AST test keeps it so): bytes and ``now`` go
in, bytes, events and deadlines come out. docs/protocol.md is the specification.
"""

from qchan.protocol.connection import (
    PROTOCOL_VERSION,
    Connection,
    ConnectionConfig,
    ConnectionTerminated,
    Event,
    FramesReceived,
    GoawayReceived,
    HandshakeCompleted,
    Hello,
    State,
)
from qchan.protocol.frames import Frame, FrameDecoder, GoawayReason, Kind, Mode, Rights

__all__ = [
    "PROTOCOL_VERSION",
    "Connection",
    "ConnectionConfig",
    "ConnectionTerminated",
    "Event",
    "Frame",
    "FrameDecoder",
    "FramesReceived",
    "GoawayReason",
    "GoawayReceived",
    "HandshakeCompleted",
    "Hello",
    "Kind",
    "Mode",
    "Rights",
    "State",
]
