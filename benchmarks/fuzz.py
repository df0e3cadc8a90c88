"""Run the fuzz targets of tests/fuzz for as long as asked, with atheris (or hypothesis).

    .venv/bin/python benchmarks/fuzz.py --target NAME --seconds N [--engine atheris|hypothesis]
        [--findings DIR] [--work DIR] [--stop-on-finding] [--avoid-known] [--libfuzzer ARG...]
    .venv/bin/python benchmarks/fuzz.py --list
    .venv/bin/python benchmarks/fuzz.py --make-seeds
    .venv/bin/python benchmarks/fuzz.py --target NAME --replay FILE...
    .venv/bin/python benchmarks/fuzz.py --target NAME --minimize FILE [--out FILE]

Targets (tests/fuzz/_targets.py): frames, codec, handshake, connection, session. A target takes
bytes and raises only for a bug. With atheris (``pip install atheris``; coverage-guided, qchan's
Python instrumented) the run starts from ``tests/fuzz/corpus/<NAME>`` and keeps what it learns
in ``--work`` (default ``/tmp/qchan-fuzz/<NAME>``). Unlike plain libFuzzer it does not stop at
the first bug: each distinct finding (exception type, where it was raised, and for broken
invariants the kind of break) is printed once and its input written to ``--findings``
(default ``/tmp/qchan-fuzz/findings/<NAME>``); ``--minimize`` then shrinks one for the corpus.
``--engine hypothesis`` runs where atheris cannot (random bytes, no coverage feedback).
``--avoid-known`` steers the session target clear of the bugs already known (see
tests/fuzz/test_regressions.py), so a long run looks for new ones; ``--libfuzzer`` passes
options on (``--libfuzzer=-len_control=0``, say).

At the end (and every 10 s, to ``<work>/stats.json``) it reports executions and findings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
sys.path.insert(0, str(ROOT))


def _finding_key(exc: BaseException) -> str:
    """What makes two failures the same bug: the type, where raised, the kind of break."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/qchan/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    what = str(exc).split(" | ")[0] if isinstance(exc, AssertionError) else ""
    return f"{type(exc).__name__} at {where} {what[:120]}".strip()


class Runner:
    """Runs one target, counting executions and collecting distinct findings."""

    def __init__(self, name: str, run: Callable[[bytes], None], findings: Path, work: Path) -> None:
        self.name = name
        self.run = run
        self.findings_dir = findings
        self.work = work
        self.executions = 0
        self.findings: dict[str, str] = {}  # key -> file
        self.started = time.monotonic()
        self.last_report = self.started
        self.stop_on_finding = False

    def one(self, data: bytes) -> None:
        self.executions += 1
        try:
            self.run(data)
        except Exception as exc:
            key = _finding_key(exc)
            if key not in self.findings:
                self.findings_dir.mkdir(parents=True, exist_ok=True)
                path = self.findings_dir / f"crash-{hashlib.sha1(data).hexdigest()[:16]}"
                path.write_bytes(data)
                self.findings[key] = str(path)
                print(f"\n=== NEW FINDING in {self.name}: {key}\n    input: {path}", flush=True)
                print("".join(traceback.format_exception(exc)[-6:]), flush=True)
                self.report()
            if self.stop_on_finding:
                raise
        now = time.monotonic()
        if now - self.last_report >= 10:
            self.last_report = now
            self.report()

    def report(self) -> dict[str, Any]:
        stats = {
            "target": self.name,
            "executions": self.executions,
            "seconds": round(time.monotonic() - self.started, 1),
            "findings": self.findings,
        }
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "stats.json").write_text(json.dumps(stats, indent=1))
        return stats


def _load_targets(instrument: bool) -> Any:
    if instrument:
        import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

        with atheris.instrument_imports(include=["qchan"]):
            import qchan  # noqa: F401
            from tests.fuzz import _session_target, _targets  # noqa: F401
    from tests.fuzz import _targets

    return _targets.TARGETS


def _atheris(target: Any, runner: Runner, seconds: int, extra: list[str]) -> None:
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    runner.work.mkdir(parents=True, exist_ok=True)
    learned = runner.work / "corpus"
    learned.mkdir(exist_ok=True)
    argv = [
        sys.argv[0],
        str(learned),
        str(CORPUS / target.name),
        f"-max_total_time={seconds}",
        f"-max_len={target.max_len}",
        "-timeout=30",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        f"-artifact_prefix={runner.findings_dir}/",
        *extra,  # (last: they override the above)
    ]
    runner.findings_dir.mkdir(parents=True, exist_ok=True)
    atheris.Setup(argv, runner.one)
    try:
        atheris.Fuzz()
    finally:
        print(json.dumps(runner.report(), indent=1), flush=True)


def _hypothesis(target: Any, runner: Runner, seconds: int) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    deadline = time.monotonic() + seconds

    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    # (the length drawn first: plain st.binary stays a few bytes long)
    @given(
        st.integers(0, min(target.max_len, 4096)).flatmap(
            lambda n: st.binary(min_size=n, max_size=n)
        )
    )
    def batch(data: bytes) -> None:
        if time.monotonic() < deadline:
            runner.one(data)

    for path in sorted((CORPUS / target.name).iterdir()):
        runner.one(path.read_bytes())
    while time.monotonic() < deadline:
        batch()
    print(json.dumps(runner.report(), indent=1), flush=True)


def _make_seeds() -> None:
    from tests.fuzz._seeds import SEEDS

    for target, seeds in SEEDS.items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for name, data in seeds.items():
            (folder / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(seeds)} seeds in {folder}")


def _minimize(run: Callable[[bytes], None], data: bytes) -> tuple[bytes, str]:
    """The smallest input found (by removing runs, then zeroing bytes) failing the same way."""

    def key(candidate: bytes) -> str | None:
        try:
            run(candidate)
        except Exception as exc:
            return _finding_key(exc)
        return None

    want = key(data)
    if want is None:
        raise SystemExit("this input does not fail")
    chunk = len(data) // 2
    while chunk >= 1:
        position, changed = 0, False
        while position < len(data):
            candidate = data[:position] + data[position + chunk :]
            if key(candidate) == want:
                data, changed = candidate, True
            else:
                position += chunk
        if not changed:
            chunk //= 2
    for position in range(len(data)):
        for value in (0, 1):
            if data[position] > value:
                candidate = data[:position] + bytes([value]) + data[position + 1 :]
                if key(candidate) == want:
                    data = candidate
                    break
    return data, want


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--engine", choices=["atheris", "hypothesis"], default="atheris")
    parser.add_argument("--findings", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--stop-on-finding", action="store_true")
    parser.add_argument("--avoid-known", action="store_true")
    parser.add_argument("--libfuzzer", action="append", default=[], metavar="ARG")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--make-seeds", action="store_true")
    parser.add_argument("--replay", nargs="+", metavar="FILE")
    parser.add_argument("--minimize", metavar="FILE")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # a refused frame logs a warning: millions of them
    if args.avoid_known:
        os.environ["QCHAN_FUZZ_AVOID_KNOWN"] = "1"  # (read when the session target loads)

    if args.make_seeds:
        _make_seeds()
        return 0
    engine = args.engine
    if engine == "atheris" and (args.replay or args.minimize or args.list):
        engine = "hypothesis"  # (no instrumentation needed)
    if engine == "atheris":
        try:
            import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
        except ImportError:
            print("atheris is not installed: falling back to hypothesis", file=sys.stderr)
            engine = "hypothesis"
    targets = _load_targets(instrument=engine == "atheris")
    if args.list:
        for name, target in targets.items():
            print(f"{name:12} max_len={target.max_len}")
        return 0
    if args.target not in targets:
        parser.error(f"--target must be one of {', '.join(targets)}")
    target = targets[args.target]
    if args.minimize:
        data, key = _minimize(target.run, Path(args.minimize).read_bytes())
        out = args.out or Path(args.minimize + ".min")
        out.write_bytes(data)
        print(f"{key}\n{len(data)} bytes: {data.hex()}\nwritten to {out}")
        return 0
    if args.replay:
        failures = 0
        for file in args.replay:
            try:
                target.run(Path(file).read_bytes())
            except Exception:
                failures += 1
                print(f"--- {file}")
                traceback.print_exc()
        print(f"{len(args.replay) - failures} of {len(args.replay)} passed")
        return 1 if failures else 0
    base = Path(os.environ.get("TMPDIR", "/tmp")) / "qchan-fuzz"
    runner = Runner(
        target.name,
        target.run,
        args.findings or base / "findings" / target.name,
        args.work or base / target.name,
    )
    runner.stop_on_finding = args.stop_on_finding
    print(f"fuzzing {target.name} for {args.seconds} s with {engine}", flush=True)
    if engine == "atheris":
        _atheris(target, runner, args.seconds, args.libfuzzer)
    else:
        _hypothesis(target, runner, args.seconds)
    return 1 if runner.findings else 0


if __name__ == "__main__":
    sys.exit(main())
