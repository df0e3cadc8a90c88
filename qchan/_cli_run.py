"""``--channel NAME[:CAPACITY]`` and ``--run MODULE:FUNCTION``: parsed, imported, checked.

Both are checked before the node starts, so a typo fails at once with a one-line error and
never after the node has bound its port and announced itself.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, final

from qchan._cli_common import CONFIG, USAGE, CliError

__all__ = ["ChannelSpec", "RunTarget", "import_target", "parse_channel", "parse_run"]


@final
@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A channel ``node start`` creates and registers: ``jobs``, ``jobs:4``, ``jobs:inf``."""

    name: str
    capacity: float

    def __str__(self) -> str:
        capacity = "inf" if self.capacity == math.inf else str(int(self.capacity))
        return f"{self.name} (capacity {capacity})"


def parse_channel(spec: str) -> ChannelSpec:
    """Parse ``NAME[:CAPACITY]`` (capacity an int >= 0 or ``inf``; default 0)."""
    name, colon, capacity_text = spec.partition(":")
    bad = f"bad --channel {spec!r}: "
    if not name or "@" in name:
        raise CliError(bad + "expected NAME[:CAPACITY], a name without '@'", USAGE)
    capacity: float = 0
    if colon:
        if capacity_text == "inf":
            capacity = math.inf
        elif capacity_text.isascii() and capacity_text.isdigit():
            capacity = int(capacity_text)
        else:
            raise CliError(bad + "CAPACITY must be an integer >= 0 or 'inf'", USAGE)
    return ChannelSpec(name, capacity)


@final
@dataclass(frozen=True, slots=True)
class RunTarget:
    """``MODULE:FUNCTION``, where ``FUNCTION(node)`` is an async callable."""

    module: str
    attribute: str

    def __str__(self) -> str:
        return f"{self.module}:{self.attribute}"


def parse_run(spec: str) -> RunTarget:
    """Parse ``MODULE:FUNCTION`` (``FUNCTION`` may be dotted: ``app:Server.serve``)."""
    module, colon, attribute = spec.partition(":")
    names = [*module.split("."), *attribute.split(".")]
    if not colon or not all(name.isidentifier() for name in names):
        raise CliError(
            f"bad --run {spec!r}: expected MODULE:FUNCTION, e.g. myapp.workers:serve", USAGE
        )
    return RunTarget(module, attribute)


def _is_async_callable(obj: object) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or (
        callable(obj) and inspect.iscoroutinefunction(getattr(obj, "__call__", None))  # noqa: B004
    )


def import_target(target: RunTarget) -> Callable[[Any], Awaitable[Any]]:
    """Import ``target``'s module (the current directory first on ``sys.path``, as
    ``python -m`` does) and return its async callable; a :class:`CliError` otherwise."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(target.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if target.module == missing or target.module.startswith(missing + "."):
            raise CliError(
                f"--run {target}: no module named {missing!r} "
                f"(looked in the current directory {cwd} and on sys.path)",
                CONFIG,
            ) from None
        raise CliError(f"--run {target}: importing {target.module} failed: {exc}", CONFIG) from None
    except Exception as exc:
        raise CliError(
            f"--run {target}: importing {target.module} raised {type(exc).__name__}: {exc}",
            CONFIG,
        ) from None
    obj: object = module
    for name in target.attribute.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise CliError(
                f"--run {target}: {target.module} has no attribute {target.attribute!r}", CONFIG
            ) from None
    if not _is_async_callable(obj):
        what = "a function" if callable(obj) else f"an object of type {type(obj).__name__}"
        raise CliError(
            f"--run {target}: {target.attribute} is {what}, not an async callable "
            "(define it as `async def " + target.attribute.rsplit(".", 1)[-1] + "(node): ...`)",
            CONFIG,
        )
    function: Callable[[Any], Awaitable[Any]] = obj  # type: ignore[assignment]
    return function
