"""The qchan command: in-process through main(argv), and as the installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import qchan
from qchan._cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"qchan {qchan.__version__}"


def test_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: qchan" in out
    assert "cluster key" in out


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-option"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_console_script_runs() -> None:
    script = shutil.which("qchan", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert script is not None, "the qchan console script is not installed next to python"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"qchan {qchan.__version__}"
