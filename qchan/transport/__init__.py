"""The only code in qchan that touches sockets: links between nodes over TCP and Unix sockets.

Theory of operation
-------------------
A :class:`Link` carries one :class:`qchan.protocol.Connection` (the sans-IO state machine:
handshake, framing, encryption, heartbeats) over a socket. The node enters one
:class:`Transport`, listens and dials through it, and talks to each peer through its link::

    async with Transport() as transport:
        listener = await transport.listen(address, key=..., cluster_key=..., hello=...,
                                          on_link=node_got_a_link)
        link = await transport.connect(peer, key=..., cluster_key=..., hello=...)
        link.start(on_frames, on_closed)     # frames in, synchronously, a whole read at a time
        link.send(frame)                     # queued; written together at the end of the turn

Two backends, chosen with ``sniffio`` when the Transport is entered, share everything that
decides something (:mod:`._link`): on asyncio and uvloop a link is an ``asyncio.Protocol``
(no tasks, one ``call_soon`` flush per turn, one ``call_at`` timer); on trio a link runs a
reader, a writer and a timer task in a task group the Transport owns.

Errors: every OS, anyio or trio exception is turned into a qchan error in one place
(:mod:`._errors`): :class:`~qchan.PeerLost` for a link that ends or a peer that cannot be
reached, :class:`~qchan.AuthenticationError` for a refused handshake; a listener that cannot
bind raises ``OSError`` with the address in its message.
"""

from qchan.transport._address import Address, parse_address
from qchan.transport._link import Link
from qchan.transport._listener import Listener
from qchan.transport._transport import Transport

__all__ = ["Address", "Link", "Listener", "Transport", "parse_address"]
