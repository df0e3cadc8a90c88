"""Every fuzz target, in CI: the whole corpus replayed through every target (fast and
deterministic), then a bounded hypothesis run per target.

The long runs are ``benchmarks/fuzz.py`` (atheris). A crasher it finds goes, minimised, into
``corpus/<target>/crash-<what>`` and stays there once fixed, with a test of its own in
test_regressions.py; until its bug is fixed it is listed in :data:`KNOWN_BUGS` (a strict xfail
here), and the hypothesis run does not count a finding of that kind against CI. (The six
``crash-*`` files of the session target are such bugs, all fixed.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._session_target import Finding
from ._targets import TARGETS

CORPUS: Final = Path(__file__).parent / "corpus"
CORPUS_FILES: Final = sorted(path for path in CORPUS.glob("*/*") if path.is_file())

#: Crashers of bugs not fixed yet: (target, file name) -> the bug.
KNOWN_BUGS: Final[dict[tuple[str, str], str]] = {}

#: What those bugs look like to the session target's invariants (``Finding`` texts start so).
KNOWN_FINDINGS: Final[tuple[str, ...]] = ()


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)  # (each refused frame logs a warning: thousands here)
    yield
    logging.disable(logging.NOTSET)


def test_every_target_has_a_corpus() -> None:
    for name in TARGETS:
        assert any((CORPUS / name).glob("seed-*")), name
    for target, file in KNOWN_BUGS:
        assert (CORPUS / target / file).is_file(), file


def _cases() -> Iterator[object]:
    for name in TARGETS:
        for path in CORPUS_FILES:
            bug = KNOWN_BUGS.get((name, path.name)) if path.parent.name == name else None
            marks = (
                [pytest.mark.xfail(strict=True, raises=AssertionError, reason=bug)] if bug else []
            )
            yield pytest.param(name, path, id=f"{name}:{path.parent.name}/{path.name}", marks=marks)


@pytest.mark.parametrize(("target", "path"), list(_cases()))
def test_corpus_replays_cleanly(target: str, path: Path) -> None:
    TARGETS[target].run(path.read_bytes())


def _run_tolerating_known_bugs(target: str, data: bytes) -> None:
    try:
        TARGETS[target].run(data)
    except Finding as finding:
        if not str(finding).startswith(KNOWN_FINDINGS):
            raise


def _bounded(target: str, examples: int, min_size: int, max_size: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    # (a length drawn first: plain st.binary stays a few bytes long, too short to reach far)
    @given(st.integers(min_size, max_size).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
    def run(data: bytes) -> None:
        _run_tolerating_known_bugs(target, data)

    run()


def test_frames_hypothesis() -> None:
    _bounded("frames", 2000, 4, 3000)


def test_codec_hypothesis() -> None:
    _bounded("codec", 2000, 1, 1000)


def test_handshake_hypothesis() -> None:
    _bounded("handshake", 1000, 1, 400)


def test_connection_hypothesis() -> None:
    _bounded("connection", 1500, 16, 3000)


def test_session_hypothesis() -> None:
    _bounded("session", 1000, 24, 600)
