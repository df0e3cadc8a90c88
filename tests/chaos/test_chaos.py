"""The chaos harness on a CI budget: 45 s of faults of every kind; no violation allowed.

Four node processes in network namespaces run the workload of tests/chaos/driver.py while the
runner SIGKILLs and restarts them, freezes them, pulls their links, partitions them (both ways
and one way, with nftables), and delays, stalls and resets the proxied links. The checker then
proves from the logs what docs/guide.md promises (docs/reliability.md). Needs root: skipped
locally without it, failed when CI=true.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.chaos.runner import KINDS, ChaosConfig, run
from tests.cluster.netns import require_netns

pytestmark = [pytest.mark.netns, pytest.mark.slow]

FAULT_PERIOD = 45.0
SEED = int(os.environ.get("QCHAN_CHAOS_SEED", "20261121"))


def _require_nft() -> None:
    if shutil.which("nft") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nftables (the `nft` command) is missing: .ci/run must install it")
        pytest.skip("the chaos harness needs nftables (`apt-get install nftables`)")


@pytest.mark.timeout(180)
def test_no_violation_under_every_kind_of_fault(tmp_path: Path) -> None:
    require_netns()
    _require_nft()
    result = run(ChaosConfig(workdir=tmp_path, duration=FAULT_PERIOD, seed=SEED, mean_interval=0.8))
    table = result.table()
    print(table)
    assert result.report.sends > 10_000, table
    missing = [kind for kind in KINDS if result.faults[kind] == 0]
    assert not missing, f"fault kinds never injected: {missing}\n{table}"
    assert result.violations == 0, table
