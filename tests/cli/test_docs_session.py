"""The session of docs/cli.md, on one machine: its workers.py, its channels, its commands."""

from __future__ import annotations

import re
from pathlib import Path

from tests.cli._helpers import NodeProcess, run_script
from tests.cli.conftest import Keys

DOC = Path(__file__).parents[2] / "docs" / "cli.md"


def test_the_documented_worker_session(tmp_path: Path, keys: Keys) -> None:
    match = re.search(r"```python\n(# workers\.py\n.*?)```", DOC.read_text(), re.S)
    assert match, "docs/cli.md has no workers.py block"
    (tmp_path / "workers.py").write_text(match.group(1))
    alpha = NodeProcess(
        tmp_path, "alpha", keys.cluster, "--channel", "jobs:100", "--channel", "results:inf"
    )
    beta = None
    try:
        beta = NodeProcess(
            tmp_path, "beta", keys.cluster, "--peer", alpha.address, "--run", "workers:serve",
            cwd=tmp_path,
        )  # fmt: skip
        env = {"QCHAN_CLUSTER_KEY": str(keys.cluster)}
        for job in ('{"id": 1, "text": "the quick brown fox"}', '{"id": 2, "text": "jumps"}'):
            assert run_script("send", "jobs", job, "--peer", alpha.address, env=env).code == 0
        got = run_script("recv", "results", "-n", "2", "--peer", beta.address, env=env)
        assert got.code == 0, got.err
        assert got.out == '{"id": 1, "words": 4}\n{"id": 2, "words": 1}\n'
    finally:
        if beta is not None:
            beta.stop()
        alpha.stop()
