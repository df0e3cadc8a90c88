"""The chaos checker on hand-made logs: it must catch each kind of violation, and only those."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.checker import check


def _write(workdir: Path, name: str, lines: list[str], cut: str = "") -> None:
    (workdir / name).write_text("".join(line + "\n" for line in lines) + cut)


def test_a_clean_run_has_no_violation(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "n0.0.log",
        [
            "S 1.0 n0.0.a.1 c0 n1 0",
            "O 1.1 n0.0.a.1 R",
            "S 1.2 n0.0.a.2 c16 n1 16",
            "O 1.2 n0.0.a.2 L",
            "S 1.3 n0.0.a.3 c16 n1 16",
            "O 1.3 n0.0.a.3 U",
        ],
        cut="S 1.4 n0.0.a.",  # the line a kill cut
    )
    _write(tmp_path, "n1.0.log", ["V 1.05 n0.0.a.1 c0 n1", "V 1.35 n0.0.a.3 c16 n1"])
    report = check(tmp_path)
    assert report.violations == 0, report.table()
    assert report.cut_lines == 1
    assert report.sends == 3
    assert report.outcomes["U"] == 1
    assert report.received_by_outcome["U"] == 1


def test_each_violation_is_caught(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "n0.0.log",
        [
            "S 1.0 n0.0.a.1 c0 n1 0",  # returned, received twice
            "O 1.1 n0.0.a.1 R",
            "S 1.2 n0.0.a.2 c0 n1 0",  # returned, never received
            "O 1.3 n0.0.a.2 R",
            "S 1.4 n0.0.a.3 c16 n1 16",  # PeerLost, received
            "O 1.5 n0.0.a.3 L",
            "S 1.6 n0.0.a.4 c16 n1 16",  # cancelled, received
            "O 1.7 n0.0.a.4 X",
            "S 1.8 n0.0.b.5 c0 n1 0",  # a select: both cases received
            "S 1.8 n0.0.b.6 c1 n2 1",
            "P 1.8 n0.0.b.5 n0.0.b.6",
            "O 1.9 n0.0.b.5 R",
            "O 1.9 n0.0.b.6 N",
        ],
    )
    _write(
        tmp_path,
        "n1.0.log",
        [
            "V 1.05 n0.0.a.1 c0 n1",
            "V 1.06 n0.0.a.1 c0 n1",
            "V 1.45 n0.0.a.3 c16 n1",
            "V 1.65 n0.0.a.4 c16 n1",
            "V 1.85 n0.0.b.5 c0 n1",
            "V 1.86 n0.0.b.6 c1 n2",
            "V 1.87 n9.0.z.1 c0 n1",  # never sent
        ],
    )
    report = check(tmp_path)
    assert report.violation_kinds == {
        "received more than once": 1,
        "returned but never received": 1,
        "PeerLost send was received": 1,
        "cancelled (deadline) send was received": 1,
        "select case not taken send was received": 1,
        "both cases of one select happened": 1,
        "received a value never sent": 1,
    }, report.table()


def test_losses_explained_by_kills(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "n0.0.log",
        [
            "S 1.0 n0.0.a.1 c16 n1 16",  # its home n1 is killed at 5.0
            "O 1.0 n0.0.a.1 R",
            "S 1.0 n0.0.b.2 c16 n3 16",  # its sender n0 is killed at 3.0, unconfirmed
            "O 1.0 n0.0.b.2 R",
            "S 1.0 n0.0.c.3 c0 n3 0",  # taken by n2 (killed at 1.5) before it logged
            "O 1.2 n0.0.c.3 R",
        ],
    )
    _write(tmp_path, "n2.0.log", ["V 0.5 n9.0.x.1 c0 n3"])
    _write(tmp_path, "n9.0.log", ["S 0.4 n9.0.x.1 c0 n3 0", "O 0.6 n9.0.x.1 R"])
    _write(tmp_path, "faults.log", ["K 1.5 n2 0", "K 3.0 n0 0", "K 5.0 n1 0"])
    report = check(tmp_path)
    assert report.violations == 0, report.table()
    assert report.explained == {
        "lost with its home": 1,
        "lost with its sender": 1,
        "killed receiver (on its way, or not logged)": 1,
    }


def test_a_value_counted_as_taken_needs_a_fault_that_cut_its_receiver_off(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "n0.0.log", ["S 1.0 n0.0.a.1 c16 n1 16", "O 1.0 n0.0.a.1 R"])
    _write(tmp_path, "n1.0.log", ["Z 4.0 n0.0.a.1 n2"])  # n1 counted it as taken by n2
    _write(tmp_path, "faults.log", ["F 1.5 partition net:n0,net:n2 2.0", "G 3.5 partition x"])
    report = check(tmp_path)
    assert report.violation_kinds == {"counted as taken by a receiver not cut off": 1}
    _write(
        tmp_path,
        "faults.log",
        ["F 1.5 partition net:n2,net:n1 2.0", "G 3.5 partition net:n2,net:n1"],
    )
    report = check(tmp_path)
    assert report.violations == 0, report.table()
    assert report.explained == {"on its way to a receiver away too long": 1}


def test_a_home_killed_while_the_sender_was_frozen_went_unnoticed(tmp_path: Path) -> None:
    # n1 is frozen 10.0-12.5 and sends under credit to n3 the moment it thaws; n3 was killed
    # at 10.2 (2.3 s before the send, but n1 had run for only 0.2 s of them since).
    _write(
        tmp_path,
        "n1.0.log",
        [
            "S 12.5 n1.0.a.1 c1 n3 1",
            "O 12.5 n1.0.a.1 R",
            "S 20.0 n1.0.b.2 c1 n3 1",  # n3 killed again at 17.0: 3 s before, n1 running
            "O 20.0 n1.0.b.2 R",
        ],
    )
    _write(
        tmp_path,
        "faults.log",
        ["F 10.0 stop n1 2.5", "K 10.2 n3 0", "G 12.5 stop n1", "K 17.0 n3 1"],
    )
    report = check(tmp_path)
    assert report.explained == {"lost with its home": 1}, report.table()
    assert report.violation_kinds == {"returned but never received": 1}, report.table()
