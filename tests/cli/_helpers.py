"""Running ``qchan`` for the tests: in-process through ``main(argv)``, and as the installed
console script in a subprocess (``qchan node start`` always runs there: it serves until a
signal). Every wait here is bounded."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qchan._cli import main

HERE = Path(__file__).parent

SCRIPT = shutil.which("qchan", path=str(Path(sys.executable).parent))

#: The environment for subprocesses: no key variables from the outside, and tests/cli on
#: sys.path for the --run targets (tests/cli/app.py).
BASE_ENV = {
    key: value
    for key, value in os.environ.items()
    if key not in ("QCHAN_KEY", "QCHAN_CLUSTER_KEY", "PYTHONPATH")
}


def script() -> str:
    assert SCRIPT is not None, "the qchan console script is not installed next to python"
    return SCRIPT


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_main(capsys: pytest.CaptureFixture[str], *argv: str, bound: float = 20) -> Result:
    """``main(argv)`` in this process, with what it printed.

    Bounded: after ``bound`` seconds a SIGINT interrupts the command, which then returns 130
    (pytest-timeout's SIGALRM cannot stop a test blocked inside uvloop).
    """
    watchdog = threading.Timer(bound, signal.raise_signal, (signal.SIGINT,))
    watchdog.start()
    try:
        code = main(list(argv))
    finally:
        watchdog.cancel()
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def run_script(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 20
) -> Result:
    """The installed ``qchan`` script in a subprocess, to its end."""
    done = subprocess.run(
        [script(), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**BASE_ENV, **(env or {})},
        cwd=cwd,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Process:
    """A ``qchan`` subprocess with stdout and stderr going to files, read while it runs."""

    def __init__(
        self,
        tmp: Path,
        label: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.out_path = tmp / f"{label}.out"
        self.err_path = tmp / f"{label}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                [script(), *argv],
                stdout=out,
                stderr=err,
                env={**BASE_ENV, **(env or {})},
                cwd=cwd,
            )

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def wait_for_err(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        """Wait until stderr matches ``pattern``; return the match."""
        found: list[re.Match[str]] = []

        def match() -> bool:
            m = re.search(pattern, self.err)
            if m:
                found.append(m)
            elif self.popen.poll() is not None:
                raise AssertionError(f"exited {self.popen.returncode}; stderr:\n{self.err}")
            return bool(m)

        wait_for(match, timeout, f"{pattern!r} in stderr")
        return found[0]

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 10) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        """End it if it still runs: SIGTERM, and SIGKILL if that does not do within 5 s."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


class NodeProcess(Process):
    """``qchan node start`` in a subprocess; :attr:`address` etc. parsed from its banner."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        cluster_key: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 10,
    ) -> None:
        argv = ["node", "start", "--name", name, "--listen", "127.0.0.1:0", "--no-discovery"]
        argv += ["--cluster-key", str(cluster_key), *extra]
        self._start(tmp, name, argv, env, cwd, timeout)

    @classmethod
    def from_argv(
        cls, tmp: Path, name: str, argv: Sequence[str], keys: Any, timeout: float = 10
    ) -> NodeProcess:
        """A node started with exactly ``argv`` (plus ``--cluster-key``)."""
        node = cls.__new__(cls)
        node._start(tmp, name, [*argv, "--cluster-key", str(keys.cluster)], None, None, timeout)
        return node

    def _start(
        self,
        tmp: Path,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None,
        cwd: Path | None,
        timeout: float,
    ) -> None:
        super().__init__(tmp, name, argv, env, cwd or HERE)
        self.name = name
        wait_for(self._started, timeout, f"node {name} to print its address")
        banner = dict(line.split(": ", 1) for line in self.out.splitlines() if ": " in line)
        self.address = banner["address"]
        self.fingerprint = banner["fingerprint"]
        self.public_key = banner["public key"]

    def _started(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"node exited {self.popen.returncode}:\n{self.err}")
        return "address: " in self.out and self.out.endswith("\n")


def interrupt_code(signum: int) -> int:
    return 128 + signum


SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def run_script_unprivileged(*argv: str, timeout: float = 20) -> Result:
    """The ``qchan`` script in a subprocess without root's powers over file permissions.

    As root (CI runs as root) the script runs without the capabilities that bypass file
    modes (util-linux's ``setpriv``), so that a file of mode 000 really is unreadable.
    """
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to test file permissions as root"
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    done = subprocess.run(
        [*prefix, script(), *argv], capture_output=True, text=True, timeout=timeout, env=BASE_ENV
    )
    return Result(done.returncode, done.stdout, done.stderr)
