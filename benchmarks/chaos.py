"""The chaos harness, for as long as asked: node processes in network namespaces, faults, a check.

    sudo .venv/bin/python benchmarks/chaos.py --duration SECONDS [--seed N] [--nodes N]
        [--interval S] [--kinds kill,stop,...] [--workdir DIR] [--keep] [--json FILE] [-v]

``--duration`` is the fault period; the run adds a warm-up, a settle period and the drain.
It prints messages sent, faults injected by kind, outcomes by kind, the DeliveryUncertain rate,
the max RSS of each node process, and the violations (which must be 0: the exit code is 1
otherwise). See docs/reliability.md for what is checked, and tests/chaos/ for the harness.
Needs root (network namespaces, nftables).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos.runner import KINDS, ChaosConfig, describe, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="fault period, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0, help="mean gap between faults")
    parser.add_argument("--kinds", default=",".join(KINDS), help="fault kinds, comma-separated")
    parser.add_argument("--workdir", type=Path, default=None, help="where the logs go")
    parser.add_argument("--keep", action="store_true", help="keep the logs of a clean run")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("chaos.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    if args.workdir is not None and any(args.workdir.glob("*.log")):
        # The checker reads every log there: an earlier run's would be checked as this one's.
        parser.error(f"{args.workdir} holds the logs of an earlier run: give an empty directory")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="qchan-chaos-"))
    config = ChaosConfig(
        workdir=workdir,
        duration=args.duration,
        seed=args.seed,
        nodes=args.nodes,
        mean_interval=args.interval,
        kinds=kinds,
        verbose=args.verbose,
    )
    command = " ".join(["benchmarks/chaos.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"chaos: {command}  (logs in {workdir})", flush=True)
    result = run(config)
    print(result.table())
    if args.json is not None:
        args.json.write_text(json.dumps(describe(result), indent=2) + "\n")
    if result.violations == 0 and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
