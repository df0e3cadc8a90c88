"""The chaos checker: reads every log of a run and proves what docs/guide.md promises.

Inputs: ``<name>.<inc>.log`` of every node process (:mod:`tests.chaos.driver` records) and
``faults.log`` (the runner's: ``K t name inc`` for each SIGKILL). A line cut by a kill (the
last line of a file, without its newline, or malformed) is counted and skipped.

For every value whose send started (``S``), with ``n`` the number of receipts (``V``):

- ``n > 1`` is a violation: nothing is ever received twice;
- outcome ``L`` (PeerLost), ``C`` (ChannelClosed), ``X`` (cancelled by a deadline), ``N`` (a
  select's case not taken) or ``E:*``: ``n = 0``, or a violation (the value was certainly not
  taken, did not happen, or is unexplained);
- outcome ``R`` (returned): ``n = 1``, unless it is explained (each counted on its own):

  - ``lost with its home``: a buffered channel whose home was SIGKILLed after the send
    started, or so shortly before that the sending node had not yet noticed (its buffer, and
    the credited sends on their way to it, die with it): within 1.5 s (``peer_timeout`` and
    some) of the sending node *running* (time it spent frozen by SIGSTOP does not count: a
    frozen node notices nothing, and may send under credit the moment it thaws),
    and before a value sent later by the same sending task on that channel was received
    (+ 5 s): values of one sender leave the buffer in order, so by then this one had left it,
    or was on its way to a receiver whose link then died: parked in the home until that
    receiving node says whether it took it or is gone (2 x ``peer_timeout``), then back in
    the buffer, first.
  - ``lost with its sender``: a buffered channel, and the sending node was SIGKILLed after
    the send started and within 10 s of its return, and no value its sending task sent later
    on that channel was received (values of one sender reach the home in order, so a later
    one received proves this one reached the home). A credited send returns once queued on
    the link; until the home confirms it, only the sender can send it again.
  - ``on its way to a receiver away too long``: the value's home logged (``Z``) that it
    counted the value as taken by a remote receiving node to which it was on its way when
    their link was lost, because that node stayed away for more than 2 x peer_timeout
    (guide.md: "only if it is gone for good ... does the value count as taken (it may have
    been): then it is lost if it was not"). The checker does not take the library's word for
    it: a fault that cut the two apart (a kill or freeze of either, a link down, a partition
    or one-way drop between them, a proxy fault on a proxied pair) must have been in force
    within the 6 s before.
  - ``killed receiver (on its way, or not logged)``: a node that receives from that channel
    was SIGKILLed while the value could have been on its way to it or to one of its tasks:
    the home logged (``Z``) that it counted the value as taken by that node, which was killed
    between the send's start and then (guide.md: a receiving node that "comes back as a new
    process"); or, without a ``Z``, the kill came between the send's start and 0.5 s after
    its return (capacity 0), or 0.5 s after a later value of the same sending task on that
    channel was received (buffered): the value was taken, but the process died before its
    log line (a limit of the harness).

  Anything else is a violation, a ``Z`` without such a fault included.
- outcome ``U`` (DeliveryUncertain): counted, received or not; no outcome at all (the sending
  process was killed mid-send): counted, received or not.

Also a violation: a receipt of a value never sent; both cases of one select received.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter, defaultdict
from pathlib import Path

__all__ = ["Report", "check"]

OUTCOME_NAMES = {
    "R": "returned",
    "L": "PeerLost",
    "U": "DeliveryUncertain",
    "C": "ChannelClosed",
    "X": "cancelled (deadline)",
    "N": "select case not taken",
    "-": "no outcome (sender killed)",
}
NOT_TAKEN = ("L", "C", "X", "N")
EXPLANATIONS = (
    "lost with its home",
    "lost with its sender",
    "on its way to a receiver away too long",
    "killed receiver (on its way, or not logged)",
)
SENDER_GRACE = 10.0
AWAY_WINDOW = 6.0
RECEIVER_GRACE = 0.5
HOME_GRACE = 5.0
HOME_UNNOTICED = 1.5


@dataclasses.dataclass
class Report:
    sends: int = 0
    received: int = 0  # receipts logged
    outcomes: Counter[str] = dataclasses.field(default_factory=Counter)
    outcomes_buffered: Counter[str] = dataclasses.field(default_factory=Counter)
    received_by_outcome: Counter[str] = dataclasses.field(default_factory=Counter)
    explained: Counter[str] = dataclasses.field(default_factory=Counter)
    violation_kinds: Counter[str] = dataclasses.field(default_factory=Counter)
    examples: list[str] = dataclasses.field(default_factory=list)
    kills: int = 0
    cut_lines: int = 0
    warnings: Counter[str] = dataclasses.field(default_factory=Counter)
    processes: int = 0
    dropped: int = 0  # buffered values a home counted as taken by a lost receiver (Z)

    @property
    def violations(self) -> int:
        return sum(self.violation_kinds.values())

    @property
    def uncertain_rate(self) -> float:
        decided = sum(n for k, n in self.outcomes.items() if k != "-")
        return self.outcomes["U"] / decided if decided else 0.0

    def violate(self, kind: str, example: str) -> None:
        self.violation_kinds[kind] += 1
        if len(self.examples) < 30:
            self.examples.append(f"{kind}: {example}")

    def table(self) -> str:
        lines = [
            f"node processes: {self.processes}   SIGKILLs: {self.kills}   "
            f"values sent: {self.sends}   receipts: {self.received}",
            f"{'send outcome':<28}{'capacity 0':>12}{'buffered':>12}{'total':>12}{'received':>12}",
        ]
        for key, label in OUTCOME_NAMES.items():
            total = self.outcomes[key]
            if not total and key not in ("R", "L", "U"):
                continue
            buffered = self.outcomes_buffered[key]
            lines.append(
                f"{label:<28}{total - buffered:>12}{buffered:>12}{total:>12}"
                f"{self.received_by_outcome[key]:>12}"
            )
        for key, total in sorted(self.outcomes.items()):
            if key.startswith("E:"):
                lines.append(f"{key:<28}{'':>12}{'':>12}{total:>12}")
        lines.append(f"DeliveryUncertain rate: {self.uncertain_rate:.4%}")
        lines.append("returned but not received, explained:")
        for key in EXPLANATIONS:
            lines.append(f"  {key:<42}{self.explained[key]:>8}")
        lines.append(
            f"buffered values counted as taken by a receiver lost on the way (Z): {self.dropped}"
        )
        lines.append(f"cut log lines: {self.cut_lines}   warnings: {sum(self.warnings.values())}")
        for text, count in self.warnings.most_common(5):
            lines.append(f"  {count:>6} x {text}")
        lines.append(f"violations: {self.violations}")
        for kind, count in sorted(self.violation_kinds.items()):
            lines.append(f"  {kind:<44}{count:>8}")
        lines.extend(f"  e.g. {e}" for e in self.examples[:10])
        return "\n".join(lines)


@dataclasses.dataclass(slots=True)
class _Send:
    t: float
    chan: str
    home: str
    cap: int
    node: str
    outcome: str = "-"
    t_out: float = math.nan


def _kills(workdir: Path, report: Report) -> dict[str, list[float]]:
    kills: dict[str, list[float]] = defaultdict(list)
    path = workdir / "faults.log"
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] in ("K", "C"):
                kills[fields[2]].append(float(fields[1]))
                report.kills += fields[0] == "K"
    for times in kills.values():
        times.sort()
    return kills


def proxied(a: str, b: str) -> bool:
    """Node n(2k) dials n(2k+1) through the proxy (tests/chaos/runner.py)."""
    try:
        i, j = sorted((int(a[1:]), int(b[1:])))
    except ValueError:
        return False
    return i % 2 == 0 and j == i + 1


def _faults(workdir: Path) -> list[tuple[str, frozenset[str], float, float]]:
    """Every fault of the run: (kind, targets, start, end)."""
    path = workdir / "faults.log"
    if not path.exists():
        return []
    done: list[tuple[str, frozenset[str], float, float]] = []
    open_: dict[tuple[str, str], list[float]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] not in ("F", "G"):
            continue
        t, kind, targets = float(fields[1]), fields[2], fields[3]
        if fields[0] == "F" and kind == "reset":
            done.append((kind, frozenset(targets.split(",")), t, t))
        elif fields[0] == "F":
            open_[(kind, targets)].append(t)
        elif open_[(kind, targets)]:
            done.append((kind, frozenset(targets.split(",")), open_[(kind, targets)].pop(0), t))
    for (kind, targets), starts in open_.items():
        done.extend((kind, frozenset(targets.split(",")), t, math.inf) for t in starts)
    return done


def _cut_apart(
    faults: list[tuple[str, frozenset[str], float, float]], a: str, b: str, t0: float, t1: float
) -> bool:
    """Was a fault that cuts nodes ``a`` and ``b`` apart in force at some time in [t0, t1]?"""
    for kind, targets, start, end in faults:
        if end < t0 or start > t1:
            continue
        if kind in ("kill", "stop") and targets & {a, b}:
            return True
        if kind == "link" and targets & {f"net:{a}", f"net:{b}"}:
            return True
        if kind in ("partition", "oneway") and targets == {f"net:{a}", f"net:{b}"}:
            return True
        if kind in ("delay", "stall", "reset") and proxied(a, b):
            return True
    return False


def _before(t: float) -> tuple[float, float]:
    return t - AWAY_WINDOW, t


def _unnoticed_since(
    faults: list[tuple[str, frozenset[str], float, float]], node: str, t: float
) -> float:
    """The time from which ``node`` had run for less than HOME_UNNOTICED seconds by ``t``
    (periods it was frozen by SIGSTOP do not count)."""
    frozen = sorted(
        (start, end)
        for kind, targets, start, end in faults
        if kind == "stop" and node in targets and start < t
    )
    budget, cursor = HOME_UNNOTICED, t
    for start, end in reversed(frozen):
        running = cursor - min(end, cursor)
        if running >= budget:
            break
        budget -= running
        cursor = min(start, cursor)
    return cursor - budget


def _killed_between(kills: dict[str, list[float]], node: str, start: float, end: float) -> bool:
    times = kills.get(node, [])
    i = bisect.bisect_left(times, start)
    return i < len(times) and times[i] <= end


def check(workdir: Path) -> Report:
    """Read every log under ``workdir`` and check it (see the module docstring)."""
    report = Report()
    dropped: dict[str, tuple[float, str]] = {}
    kills = _kills(workdir, report)
    faults = _faults(workdir)
    sends: dict[str, _Send] = {}
    receipts: dict[str, list[tuple[float, str]]] = defaultdict(list)
    receivers: dict[tuple[str, str], set[str]] = defaultdict(set)
    pairs: list[tuple[str, str]] = []
    for path in sorted(workdir.glob("*.log")):
        if path.name == "faults.log":
            continue
        report.processes += 1
        node = path.name.split(".")[0]
        data = path.read_bytes().decode("utf-8", errors="replace")
        lines = data.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        elif lines:
            lines.pop()  # cut by a kill in the middle of a write
            report.cut_lines += 1
        for line in lines:
            fields = line.split(" ")
            try:
                kind, t = fields[0], float(fields[1])
                if kind == "S":
                    sends[fields[2]] = _Send(t, fields[3], fields[4], int(fields[5]), node)
                elif kind == "O":
                    send = sends[fields[2]]
                    send.outcome, send.t_out = fields[3], t
                elif kind == "V":
                    receipts[fields[2]].append((t, node))
                    receivers[(fields[3], fields[4])].add(node)
                elif kind == "Z":
                    dropped[fields[2]] = (t, fields[3] if len(fields) > 3 else "?")
                elif kind == "P":
                    pairs.append((fields[2], fields[3]))
                elif kind == "W":
                    report.warnings[" ".join(fields[2:])[:60]] += 1
            except (IndexError, ValueError, KeyError):
                report.cut_lines += 1
    report.sends = len(sends)
    report.dropped = len(dropped)
    report.received = sum(len(r) for r in receipts.values())

    # Per sending task and channel, the values in the order they were sent (for the bound on
    # when a buffered value could have been taken).
    order: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for vid, send in sends.items():
        if send.cap and send.outcome == "R":
            task = vid.rsplit(".", 1)[0]
            order[(task, send.chan, send.home)].append(vid)
    position: dict[str, tuple[tuple[str, str, str], int]] = {}
    for group, vids in order.items():
        for i, vid in enumerate(vids):
            position[vid] = (group, i)

    def later_received(vid: str) -> float:
        """When the first value its sending task sent later on the same channel was received
        (inf: none was). Values of one sender reach the home in order, so this one had
        reached it by then, and had left the buffer soon after (unless refused)."""
        group, i = position[vid]
        for later in order[group][i + 1 :]:
            got = receipts.get(later)
            if got:
                return min(t for t, _ in got)
        return math.inf

    for vid, send in sends.items():
        got = receipts.get(vid, [])
        n = len(got)
        outcome = send.outcome
        report.outcomes[outcome] += 1
        if send.cap:
            report.outcomes_buffered[outcome] += 1
        if n:
            report.received_by_outcome[outcome] += 1
        where = f"{vid} to {send.chan}@{send.home} (capacity {send.cap}), outcome {outcome}"
        if n > 1:
            report.violate("received more than once", f"{where}, received by {got}")
        if outcome in NOT_TAKEN or outcome.startswith("E:"):
            if n:
                label = OUTCOME_NAMES.get(outcome, outcome)
                report.violate(f"{label} send was received", f"{where}, received by {got}")
        elif outcome == "R" and n == 0:
            if send.cap and _killed_between(
                kills,
                send.home,
                _unnoticed_since(faults, send.node, send.t),
                later_received(vid) + HOME_GRACE,
            ):
                report.explained["lost with its home"] += 1
            elif (
                send.cap
                and vid in dropped
                and _killed_between(kills, dropped[vid][1], send.t, dropped[vid][0] + 0.5)
            ):
                report.explained["killed receiver (on its way, or not logged)"] += 1
            elif (
                send.cap
                and vid in dropped
                and _cut_apart(
                    faults,
                    send.home,
                    dropped[vid][1],
                    dropped[vid][0] - AWAY_WINDOW,
                    dropped[vid][0],
                )
            ):
                report.explained["on its way to a receiver away too long"] += 1
            elif send.cap and vid in dropped:
                report.violate("counted as taken by a receiver not cut off", where)
            elif (
                send.cap
                and _killed_between(kills, send.node, send.t, send.t_out + SENDER_GRACE)
                and later_received(vid) == math.inf
            ):
                report.explained["lost with its sender"] += 1
            elif any(
                _killed_between(
                    kills,
                    receiver,
                    send.t,
                    (later_received(vid) if send.cap else send.t_out) + RECEIVER_GRACE,
                )
                for receiver in receivers[(send.chan, send.home)]
            ):
                report.explained["killed receiver (on its way, or not logged)"] += 1
            else:
                report.violate("returned but never received", where)
    for vid in receipts.keys() - sends.keys():
        report.violate("received a value never sent", f"{vid} received by {receipts[vid]}")
    for a, b in pairs:
        if a in receipts and b in receipts:
            report.violate("both cases of one select happened", f"{a} and {b}")
    return report
