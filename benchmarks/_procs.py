"""Process plumbing for the two-process benchmarks: spawn roles, talk to them, always clean up.

A *role* is a plain function ``role(ctl, params) -> None`` run in a child process started with
the ``spawn`` context. It talks to the parent only through its :class:`Ctl` (small picklable
messages ``(kind, data)``); whatever it raises goes to the parent as an ``error`` message with
the traceback. Every wait on either side has a timeout, a child exits on its own when the
parent dies or its time is up, and :class:`Pair` (a context manager) terminates, then kills,
whatever is still running when it exits, error or not.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

__all__ = ["ChildFailed", "Ctl", "Pair", "Role", "current_rss", "profiler_path", "run_on_loop"]

Message = tuple[str, dict[str, Any]]
Role = Callable[["Ctl", dict[str, Any]], None]

_CTX = multiprocessing.get_context("spawn")
_EXIT_ORPHANED = 70
_EXIT_TIMED_OUT = 71
_MAX_ERROR_TEXT = 6000


class ChildFailed(RuntimeError):
    """A child process raised, died, or did not answer in time."""


class Ctl:
    """A child's line to the parent."""

    def __init__(self, conn: Connection, name: str) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.name = name

    def send(self, kind: str, **data: Any) -> None:
        with self._lock:
            self._conn.send((kind, data))

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` seconds for the parent's message ``kind``."""
        if not self._conn.poll(timeout):
            raise TimeoutError(f"{self.name}: no {kind!r} from the parent within {timeout} s")
        got, data = self._conn.recv()
        if got != kind:
            raise RuntimeError(f"{self.name}: expected {kind!r} from the parent, got {got!r}")
        return data  # type: ignore[no-any-return]

    def stop_requested(self) -> bool:
        """True if the parent has said ``stop`` (never blocks)."""
        if not self._conn.poll(0):
            return False
        got, _ = self._conn.recv()
        if got != "stop":
            raise RuntimeError(f"{self.name}: expected 'stop' from the parent, got {got!r}")
        return True

    async def aexpect(self, kind: str, within: float) -> dict[str, Any]:
        """:meth:`expect` from async code, without blocking the event loop."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self.expect, kind, within)


def run_on_loop(
    p: dict[str, Any], fn: Callable[[Ctl, dict[str, Any]], Awaitable[None]], ctl: Ctl
) -> None:
    """Run a child's role ``fn(ctl, p)`` on the event loop ``p["loop"]`` names (asyncio,
    uvloop or trio)."""
    import anyio  # (only the children need it)

    if p["loop"] == "trio":
        anyio.run(fn, ctl, p, backend="trio")
    else:
        options = {"use_uvloop": p["loop"] == "uvloop"}
        anyio.run(fn, ctl, p, backend="asyncio", backend_options=options)


def current_rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _watchdog(limit: float) -> None:
    # Exit when the parent dies (it cannot clean up after a SIGKILL) or when time is up.
    parent = multiprocessing.parent_process()
    sentinels = [parent.sentinel] if parent is not None else []
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os._exit(_EXIT_TIMED_OUT)
        if sentinels and multiprocessing.connection.wait(sentinels, timeout=min(left, 1.0)):
            os._exit(_EXIT_ORPHANED)
        if not sentinels:
            time.sleep(min(left, 1.0))


def _child_main(role: Role, params: dict[str, Any], conn: Connection, name: str) -> None:
    threading.Thread(
        target=_watchdog, args=(params.get("child_limit", 300.0),), daemon=True
    ).start()
    ctl = Ctl(conn, name)
    try:
        role(ctl, params)
    except BaseException as exc:
        try:
            ctl.send("error", text=f"{name}: {exc!r}\n{traceback.format_exc()}")
        except OSError:
            pass
        sys.stdout.flush()
        os._exit(1)
    ctl.send("exit")
    conn.close()


class Child:
    """The parent's view of one running role."""

    def __init__(self, name: str, process: Any, conn: Connection) -> None:
        self.name = name
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def send(self, kind: str, **data: Any) -> None:
        try:
            self.conn.send((kind, data))
        except OSError as exc:
            raise ChildFailed(f"{self.name} is gone (exit code {self.process.exitcode})") from exc

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The child's next message, which must be ``kind``; ChildFailed otherwise."""
        ready = multiprocessing.connection.wait([self.conn, self.process.sentinel], timeout)
        if self.conn in ready or (ready and self.conn.poll(0)):
            try:
                got, data = self.conn.recv()
            except EOFError:
                got, data = "died", {}
            if got == "error":
                text = data["text"]
                if len(text) > _MAX_ERROR_TEXT:  # (an ExceptionGroup of 10,000 errors, say)
                    text = f"{text[: _MAX_ERROR_TEXT // 2]}\n...\n{text[-_MAX_ERROR_TEXT // 2 :]}"
                raise ChildFailed(text)
            if got != kind:
                raise ChildFailed(f"{self.name}: expected {kind!r}, got {got!r}")
            return data  # type: ignore[no-any-return]
        if ready:
            raise ChildFailed(f"{self.name} died (exit code {self.process.exitcode})")
        raise ChildFailed(f"{self.name}: no {kind!r} within {timeout} s")


class Pair:
    """Children of one measurement; all of them end when the ``with`` block does."""

    def __init__(self, timeout: float, profile: str | None = None, verbose: bool = False) -> None:
        self.timeout = timeout
        self.profile = profile
        self.verbose = verbose
        self.children: list[Child] = []
        self._profilers: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, role: Role, params: dict[str, Any], *, profile: bool = False
    ) -> Child:
        parent_end, child_end = _CTX.Pipe()
        params = {**params, "child_limit": self.timeout * 4}
        process = _CTX.Process(
            target=_child_main, args=(role, params, child_end, name), name=name, daemon=True
        )
        process.start()
        child_end.close()
        child = Child(name, process, parent_end)
        self.children.append(child)
        if self.verbose:
            print(f"  .. {name} pid {child.pid}: {role.__name__}", file=sys.stderr, flush=True)
        if profile and self.profile:
            self._start_profiler(child)
        return child

    def _start_profiler(self, child: Child) -> None:
        assert self.profile is not None
        exe = profiler_path()
        if exe is None:
            print("py-spy not found: not profiling", file=sys.stderr)
            return
        out = f"{self.profile}-{child.name}.txt"
        command = [exe, "record", "--pid", str(child.pid), "--format", "raw", "--rate", "250"]
        command += ["--idle", "-o", out]  # blocking: nonblocking reads drop busy samples
        self._profilers.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    def finish(self) -> None:
        """Stop the children one by one, the last started first (clients before servers)."""
        for child in reversed(self.children):
            if child.process.is_alive():
                try:
                    child.send("stop")
                except ChildFailed:
                    pass
            child.expect("exit", self.timeout)
            child.process.join(self.timeout)

    def __enter__(self) -> Pair:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for child in self.children:
            process = child.process
            if process.is_alive():
                process.terminate()
        for child in self.children:
            process = child.process
            process.join(3.0)
            if process.is_alive():
                process.kill()
                process.join(3.0)
            child.conn.close()
        for profiler in self._profilers:
            try:
                profiler.wait(10.0)  # py-spy ends with the process it samples
            except subprocess.TimeoutExpired:
                profiler.send_signal(signal.SIGINT)
                try:
                    profiler.wait(5.0)
                except subprocess.TimeoutExpired:
                    profiler.kill()
                    profiler.wait(5.0)


def profiler_path() -> str | None:
    """py-spy next to this interpreter, or on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return local if os.path.exists(local) else shutil.which("py-spy")
