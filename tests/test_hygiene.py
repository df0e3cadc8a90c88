"""The public surface is what API.md says, and every module imports on its own."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import qchan

PACKAGE_DIR = Path(qchan.__file__).parent


def test_all_equals_the_public_names() -> None:
    public = {
        name
        for name, value in vars(qchan).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(qchan.__all__) == public | {"__version__"}
    assert len(qchan.__all__) == len(set(qchan.__all__))


def test_api_contract_names_exist() -> None:
    for name in (
        "Channel", "select", "recv", "send", "QchanError", "ChannelClosed", "WouldBlock",
        "PeerLost", "DeliveryUncertain", "AuthenticationError", "ProtocolError", "NotFound",
        "PermissionDenied",
    ):  # fmt: skip
        assert hasattr(qchan, name), name


def test_every_error_subclasses_qchan_error() -> None:
    errors = [v for v in vars(qchan).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(errors) >= 10
    for error in errors:
        assert issubclass(error, qchan.QchanError)
    assert issubclass(qchan.DeliveryUncertain, qchan.PeerLost)


def _all_modules() -> list[str]:
    found = pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="qchan.")
    return ["qchan", *sorted(info.name for info in found)]


@pytest.mark.parametrize("module", _all_modules())
def test_module_imports_cleanly_in_a_fresh_interpreter(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_public_modules_define_dunder_all() -> None:
    for name in _all_modules():
        module = importlib.import_module(name)
        if not (module.__file__ or "").endswith(".py"):
            continue  # the C extension: its names are those of its stub (.pyi)
        source = Path(module.__file__ or "").read_text()
        tree = ast.parse(source)
        has_code = any(
            not isinstance(node, ast.Expr | ast.Import | ast.ImportFrom) for node in tree.body
        )
        if has_code:
            assert hasattr(module, "__all__"), f"{name} has no __all__"


# The import name of each runtime dependency in pyproject.toml.
_RUNTIME_IMPORTS = {
    "anyio": "anyio",
    "msgpack": "msgpack",
    "zeroconf": "zeroconf",
    "pynacl": "nacl",
    "sniffio": "sniffio",
    "ifaddr": "ifaddr",
}


def test_every_module_level_import_is_stdlib_or_a_declared_dependency() -> None:
    # `pip install qchan` installs only [project] dependencies: a module-level import of
    # anything else (once pulled in by anyio, say) breaks `import qchan` for users.
    # (Backend modules such as trio are imported inside the functions that run on them.)
    import tomllib

    pyproject = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text())
    declared = {
        _RUNTIME_IMPORTS[req.split(">")[0].split("=")[0].split("[")[0].strip().lower()]
        for req in pyproject["project"]["dependencies"]
    }
    undeclared: list[str] = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "qchan" or top in declared:
                    continue
                undeclared.append(f"{path.relative_to(PACKAGE_DIR.parent)}: {name}")
    assert not undeclared, undeclared
