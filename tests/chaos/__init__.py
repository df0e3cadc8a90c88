"""The chaos harness: several node processes in network namespaces, faults, and a checker.

- :mod:`tests.chaos.driver`: the workload of one node process (``python -m``), logging every
  send with its outcome and every receipt, one flushed line at a time.
- :mod:`tests.chaos.proxy`: a TCP proxy between some node pairs that delays, stalls and resets.
- :mod:`tests.chaos.runner`: builds the lab, starts the nodes, injects faults, shuts down.
- :mod:`tests.chaos.checker`: reads every log and proves what docs/guide.md promises.

``benchmarks/chaos.py`` runs it for as long as asked; ``tests/chaos/test_chaos.py`` on a CI
budget. docs/reliability.md explains what is checked and why.
"""
