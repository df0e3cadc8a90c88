"""Documentation that shows a whole program must run as shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _runnable_blocks() -> list[tuple[str, int, str]]:
    """Every ```python block that is a complete program (it calls anyio.run)."""
    blocks = []
    for path in DOCS:
        for number, match in enumerate(re.finditer(r"```python\n(.*?)```", path.read_text(), re.S)):
            code = match.group(1)
            if "anyio.run(" in code:
                blocks.append((path.name, number, code))
    return blocks


def test_there_are_runnable_examples() -> None:
    assert any(name == "README.md" for name, _, _ in _runnable_blocks())


@pytest.mark.parametrize(("doc", "number", "code"), _runnable_blocks())
def test_documented_program_runs(doc: str, number: int, code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, f"{doc} block {number} failed:\n{result.stderr}"
