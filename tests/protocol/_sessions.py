"""A node's operation layer (a real :class:`~qchan._session.Session`) on a link that only
records what it is asked to send: the home's answers to a requester's frames, exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import anyio
import msgpack

from qchan import Channel, PeerLost
from qchan._channel import ChannelState
from qchan._client import RemoteEndpoint
from qchan._home import CreditAccount
from qchan._operation import Operation
from qchan._peer import Peer
from qchan._refs import ChannelRef
from qchan._session import Session
from qchan.node import Node
from qchan.protocol import Frame, Kind, Mode, Rights

from ._helpers import CLUSTER_KEY, INITIATOR_HELLO, INITIATOR_KEY, RESPONDER_HELLO, RESPONDER_KEY


def link_id(number: int) -> bytes:
    """The name of the ``number``-th link between alpha and beta (both ends know it)."""
    return number.to_bytes(8, "big")


class RecordingLink:
    """Just enough of a transport link for a Session: it records what the session sends.

    Closing it is a test failure (a protocol error, say) unless ``may_close`` is set; then the
    reason is recorded and the test ends the link with :func:`lose`.
    """

    initiator = False

    def __init__(self, number: int) -> None:
        self.sent: list[list[Any]] = []
        self.link_id = link_id(number)
        self.may_close = False
        self.closed_for: tuple[object, ...] | None = None

    def send(self, frame: list[Any]) -> None:
        self.sent.append(frame)

    def close(self, *args: object) -> None:
        if not self.may_close:
            raise AssertionError(f"the link was closed: {args}")
        self.closed_for = args

    def pause_reading(self) -> None:
        raise AssertionError("paused")

    def resume_reading(self) -> None:
        raise AssertionError("resumed")


def lose(session: Session) -> None:
    """The link under ``session`` ends (a Peer notes when, on the event loop's clock)."""

    async def lost() -> None:
        session.on_closed(PeerLost("connection reset by the peer"))

    anyio.run(lost)


def packed(value: object) -> bytes:
    return msgpack.packb(value)  # type: ignore[no-any-return]


CHAN: Final = 1
"""The chan id of the home's channel: its first exported one."""


class Home:
    """beta, home of one buffered channel, and alpha, a requester holding a reference to it.

    Each call feeds beta's Session the frames of one read from alpha and returns beta's answers.
    """

    def __init__(
        self, capacity: float, rights: Rights = Rights.SEND, *, peer_timeout: float = 3.0
    ) -> None:
        self.node = Node(
            cluster_key=CLUSTER_KEY,
            key=RESPONDER_KEY,
            name=RESPONDER_HELLO.name,
            heartbeat_interval=peer_timeout / 3,
            peer_timeout=peer_timeout,
        )
        self.channel: Channel[str] = Channel(capacity)
        state = self.channel._endpoint
        assert isinstance(state, ChannelState)
        self.state = state
        self.alpha = self.node._peers[INITIATOR_KEY.public] = Peer(self.node, INITIATOR_KEY.public)
        self.alpha.adopt_incarnation(INITIATOR_HELLO.incarnation)
        self.rights = rights
        self.ref = self.node.exports.ref(state, rights, self.alpha.key)
        assert self.ref.chan == CHAN
        self.links = 0
        self.connect()

    def connect(self) -> None:
        """A (new) link from alpha is up: ``link_id(self.links)``."""
        self.links += 1
        self.link = RecordingLink(self.links)
        self.session = Session(self.node, self.alpha, self.link)  # type: ignore[arg-type]
        self.alpha.attach(self.session)
        # On a link after the first, beta (a requester of alpha's channels too) first says which
        # values it took on each lost link (SETTLE: none); the tests look at what follows.
        self.settled, self.link.sent = self.link.sent, []

    def lose(self) -> None:
        lose(self.session)

    def housekeep(self, seconds: float, until: Callable[[], object] | None = None) -> None:
        """Let beta's periodic housekeeping run for ``seconds``, or until ``until()`` is true
        (TimeoutError if it is not by then)."""

        async def run() -> None:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self.node._housekeeping)
                if until is None:
                    await anyio.sleep(seconds)
                else:
                    with anyio.fail_after(seconds):
                        while not until():  # noqa: ASYNC110 - housekeeping changes it
                            await anyio.sleep(0.01)
                tasks.cancel_scope.cancel()

        anyio.run(run)

    def says(self, *frames: Frame) -> list[Frame]:
        self.session.on_frames(list(frames))
        answers, self.link.sent = self.link.sent, []
        return answers

    def opening(self) -> Frame:
        return [Kind.OPEN, CHAN, self.rights, self.ref.tokens(self.rights)]

    def open(self) -> list[Frame]:
        return self.says(self.opening())

    def send(self, op: int, value: str) -> list[Frame]:
        """A plain SEND (what a requester without a window does)."""
        return self.says([Kind.SEND, op, CHAN, Mode.PLAIN, packed(value)])

    def push(self, *seqs: int) -> list[Frame]:
        """``PUSH`` es of the values ``"v<seq>"``, all in one read."""
        return self.says(*([Kind.PUSH, CHAN, seq, packed(f"v{seq}")] for seq in seqs))

    @property
    def account(self) -> CreditAccount:
        return self.alpha.credit_accounts[CHAN]

    def buffer(self) -> list[Any]:
        return list(self.state.buffer)

    def check_reserved(self) -> None:
        """The slots the channel holds for alpha are exactly its unused window."""
        account = self.alpha.credit_accounts.get(CHAN)
        unused = 0 if account is None else max(account.window - account.last_seq, 0)
        assert self.state.reserved == unused, (self.state.reserved, account and vars_of(account))


def vars_of(account: CreditAccount) -> dict[str, int]:
    return {"last_seq": account.last_seq, "window": account.window}


class Requester:
    """alpha, a requester holding ``ref`` (a reference to a channel of beta's), and beta as
    alpha sees it: alpha's side of the links, recording what alpha sends.

    Each call feeds alpha's Session the frames of one read from beta and returns alpha's
    answers. Nothing dials: :meth:`connect` is a new link coming up.
    """

    def __init__(self, ref: ChannelRef) -> None:
        self.node = Node(cluster_key=CLUSTER_KEY, key=INITIATOR_KEY, name=INITIATOR_HELLO.name)
        self.beta = self.node._peers[RESPONDER_KEY.public] = Peer(self.node, RESPONDER_KEY.public)
        self.beta.adopt_incarnation(ref.incarnation)
        self.endpoint: RemoteEndpoint = self.beta.endpoint(ref)  # (held: a handle's endpoint)
        self.links = 0
        self.connect()

    def connect(self) -> None:
        """A (new) link to beta is up, ``link_id(self.links)`` (what alpha sends on it first:
        :meth:`sent`)."""
        self.links += 1
        self.link = RecordingLink(self.links)
        self.session = Session(self.node, self.beta, self.link)  # type: ignore[arg-type]
        self.beta.attach(self.session)

    def lose(self) -> None:
        lose(self.session)

    def sent(self) -> list[Frame]:
        """What alpha has sent since the last look."""
        sent, self.link.sent = self.link.sent, []
        return sent

    def hears(self, *frames: Frame) -> list[Frame]:
        self.session.on_frames(list(frames))
        return self.sent()

    def receive(self) -> Operation:
        """A task at alpha starts receiving from beta's channel (a RECV goes out)."""
        op = Operation()
        self.endpoint.wait_receive(op, 0)
        return op
