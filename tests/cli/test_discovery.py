"""``node start`` with discovery on (the default), and commands with no ``--peer``: they find
the cluster by mDNS. (Nodes listening on 127.0.0.1 run mDNS on the loopback interface.)"""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli._helpers import NodeProcess, run_script
from tests.cli.conftest import Keys


def test_commands_find_a_node_by_mdns(tmp_path: Path, keys: Keys) -> None:
    argv = ["node", "start", "--name", "announced", "--listen", "127.0.0.1:0"]
    node = NodeProcess.from_argv(tmp_path, "announced", [*argv, "--channel", "found:1"], keys)
    env = {"QCHAN_CLUSTER_KEY": str(keys.cluster)}
    try:
        sent = run_script("send", "found", '"by mdns"', "--timeout", "10", env=env)
        assert sent.code == 0, sent.err
        got = run_script("recv", "found", "--timeout", "10", env=env)
        assert (got.code, got.out) == (0, '"by mdns"\n'), got.err
        listed = run_script("peers", "--json", "--wait", "1.5", env=env)
        assert listed.code == 0, listed.err
        assert "announced" in [row["name"] for row in json.loads(listed.out)]
    finally:
        node.stop()
