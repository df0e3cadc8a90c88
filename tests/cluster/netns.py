"""Several hosts on one machine, for tests: network namespaces joined by a bridge.

::

    with Lab(3) as lab:                      # hosts 10.77.0.1 .. 10.77.0.3 on one switch
        proc = lab.hosts[0].run([sys.executable, "-c", "..."], stdout=subprocess.PIPE)
        lab.hosts[2].link_down()             # as if its cable were pulled
        lab.hosts[2].link_up()

Each host is a namespace with ``lo`` and ``eth0`` (its address, /24, a multicast route so mDNS
works). The switch is a bridge in a namespace of its own (with multicast snooping off, so mDNS
reaches every port), so nothing is added to the machine's own network, and deleting the
namespaces removes everything. Names carry the test process's pid and a random part: parallel
runs never collide, and a new lab deletes what crashed runs left behind. Leaving the ``with``
block (error or not) kills the processes started with :meth:`Host.run` and deletes the
namespaces. Needs root and iproute2: :func:`require_netns` skips the test otherwise, or fails
it when the environment variable ``CI`` is ``"true"``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import pytest

__all__ = ["Host", "Lab", "require_netns"]

_PREFIX = "qchan"
_NAME = re.compile(rf"{_PREFIX}-(\d+)-[0-9a-f]{{4}}-(?:sw|h\d+)")


def require_netns() -> None:
    """Skip (locally) or fail (when ``CI=true``) unless namespaces can be made here."""
    if shutil.which("ip") is None:
        pytest.fail("iproute2 (the `ip` command) is missing: .ci/run must install it")
    why = None
    if os.geteuid() != 0:
        why = "network namespace tests need root"
    else:
        probe = f"{_PREFIX}-{os.getpid()}-{secrets.token_hex(2)}-h0"
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if made.returncode != 0:
            why = f"cannot create a network namespace: {made.stderr.strip()}"
        else:
            _ip("netns", "del", probe, check=False)
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI runs as root, so this must work there)")
        pytest.skip(why)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> None:
    """Delete the namespaces of labs whose process is gone (a crashed or killed run)."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ")[0]
        match = _NAME.fullmatch(name)
        if match and not _alive(int(match.group(1))):
            _ip("netns", "del", name, check=False)


class Host:
    """One namespace: ``address`` on its ``eth0``, port ``port`` on the switch."""

    def __init__(self, lab: Lab, index: int) -> None:
        self.lab = lab
        self.index = index
        self.namespace = f"{lab.prefix}-h{index}"
        self.address = f"{lab.subnet}.{index}"
        self.port = f"p{index}"  # its veth end in the switch namespace
        self.processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"<Host {self.namespace} {self.address}>"

    def run(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this host (``ip netns exec``); killed when the lab ends."""
        process = subprocess.Popen(["ip", "netns", "exec", self.namespace, *argv], **popen)
        self.processes.append(process)
        return process

    def link_down(self) -> None:
        """Unplug: the switch port goes down, the host's ``eth0`` loses its carrier."""
        _ip("-n", self.lab.switch, "link", "set", self.port, "down")

    def link_up(self) -> None:
        _ip("-n", self.lab.switch, "link", "set", self.port, "up")


class Lab:
    """``count`` hosts, ``{subnet}.1`` .. ``{subnet}.{count}``, on one switch."""

    def __init__(self, count: int, subnet: str = "10.77.0") -> None:
        if not 1 <= count <= 250:
            raise ValueError("a lab has 1..250 hosts")
        self.prefix = f"{_PREFIX}-{os.getpid()}-{secrets.token_hex(2)}"
        self.subnet = subnet
        self.switch = f"{self.prefix}-sw"
        self.hosts = [Host(self, index) for index in range(1, count + 1)]
        self._made: list[str] = []

    def __enter__(self) -> Lab:
        sweep_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)

    def _build(self) -> None:
        sw = self.switch
        self._namespace(sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", sw, "link", "set", "br0", "up")
        for host in self.hosts:
            ns = host.namespace
            self._namespace(ns)
            # The veth pair is made in the switch namespace, its far end moved into the host
            # as eth0: names need only be unique within each namespace.
            _ip("-n", sw, "link", "add", host.port, "type", "veth", "peer", "name", "eth0",
                "netns", ns)  # fmt: skip
            _ip("-n", sw, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def close(self) -> None:
        """Kill what runs in the hosts, delete every namespace; safe to call twice."""
        for host in self.hosts:
            for process in host.processes:
                if process.poll() is None:
                    process.kill()
            for process in host.processes:
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                for stream in (process.stdin, process.stdout, process.stderr):
                    if stream is not None:
                        stream.close()
            host.processes.clear()
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
        self._made.clear()
