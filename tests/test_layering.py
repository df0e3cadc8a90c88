"""Layers import only downward (DESIGN.md "Layers"), checked on the source's AST.

``qchan/protocol/`` and ``qchan/crypto/`` are sans-IO: bytes and ``now`` in, bytes, events
and deadlines out. They must not import an event loop, a socket, a clock or zeroconf, nor a
layer above them. The local channel core (``_channel``, ``_select``, ``_operation``) must not
reach up into the network layers. Every import counts: top level, inside functions, under
``if TYPE_CHECKING:``, relative, ``from pkg import module``, and ``importlib.import_module`` /
``__import__`` with a literal name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "qchan"

IO_MODULES = frozenset(
    {"anyio", "asyncio", "trio", "socket", "selectors", "ssl", "time", "zeroconf"}
)
NETWORK = ("qchan.transport", "qchan.node", "qchan.cluster")


@dataclass(frozen=True)
class Rule:
    files: str  # a glob under qchan/
    io_modules: frozenset[str]  # top-level modules it must not import
    above: tuple[str, ...]  # qchan modules (and their submodules) it must not import

    def forbidden(self, names: set[str]) -> list[str]:
        return sorted(
            name
            for name in names
            if name.split(".")[0] in self.io_modules
            or any(name == layer or name.startswith(layer + ".") for layer in self.above)
        )


PROTOCOL = Rule("protocol/**/*.py", IO_MODULES, (*NETWORK, "qchan._cli"))
RULES = [
    PROTOCOL,
    Rule("crypto/**/*.py", IO_MODULES, ("qchan.protocol", *NETWORK, "qchan._cli")),
    Rule("_channel.py", frozenset(), NETWORK),
    Rule("_select.py", frozenset(), NETWORK),
    Rule("_operation.py", frozenset(), NETWORK),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module name ``source`` (the text of ``module``) imports, fully qualified.

    ``from a import b`` yields both ``a`` and ``a.b``, since ``b`` may be a module.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            names.add(node.args[0].value)
    return names


def checked_files() -> list[tuple[Path, Rule]]:
    files = []
    for rule in RULES:
        matches = sorted(PACKAGE.glob(rule.files))
        assert matches, f"no file matches qchan/{rule.files}: update RULES"
        files += [(path, rule) for path in matches]
    return files


@pytest.mark.parametrize(
    ("path", "rule"),
    checked_files(),
    ids=[str(path.relative_to(ROOT)) for path, _ in checked_files()],
)
def test_layers_import_only_downward(path: Path, rule: Rule) -> None:
    names = imported_names(
        path.read_text(), module_name(path), is_package=path.name == "__init__.py"
    )
    assert rule.forbidden(names) == [], f"{path.relative_to(ROOT)}: I/O or upward imports"


# --- the checker itself catches every way of writing an import ------------------------------

FORBIDDEN = [
    "import socket",
    "import time",
    "import asyncio.events",
    "import anyio as _a",
    "import os, ssl",
    "from time import monotonic",
    "from ssl import SSLContext",
    "from zeroconf import Zeroconf",
    "from selectors import DefaultSelector",
    "from trio import sleep",
    "def f():\n    import socket\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import anyio\n",
    "try:\n    import trio\nexcept ImportError:\n    pass\n",
    "import importlib\nimportlib.import_module('socket')\n",
    "__import__('time')\n",
    "from qchan import transport",
    "from qchan.transport import _link",
    "import qchan.node",
    "from qchan.cluster import WorkerPool",
    "from .. import transport",
    "from ..transport._link import Link",
    "from ..node import Node",
]
ALLOWED = [
    "import struct",
    "from typing import Final",
    "from qchan._errors import ProtocolError",
    "from qchan.crypto import NodeKey",
    "from . import frames",
    "from .frames import Kind",
    "from .. import _errors",
    "import datetime",  # names that merely contain a forbidden one
    "import timeit",
    "from qchan import transports_are_not_transport",
]


@pytest.mark.parametrize("source", FORBIDDEN)
def test_the_checker_catches_a_forbidden_import(source: str, tmp_path: Path) -> None:
    # A file on disk, read back as the layering test reads the package's files.
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    names = imported_names(probe.read_text(), "qchan.protocol.probe")
    assert PROTOCOL.forbidden(names) != [], (source, names)


@pytest.mark.parametrize("source", ALLOWED)
def test_the_checker_allows_a_downward_import(source: str) -> None:
    names = imported_names(source, "qchan.protocol.connection")
    assert PROTOCOL.forbidden(names) == [], (source, names)


def test_relative_imports_resolve_against_the_package() -> None:
    assert "qchan.transport" in imported_names("from .. import transport", "qchan.protocol.frames")
    assert "qchan.protocol.frames" in imported_names(
        "from . import frames", "qchan.protocol", is_package=True
    )
    assert "qchan.node" in imported_names("from .node import Node", "qchan._channel")
