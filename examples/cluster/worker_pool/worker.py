"""A worker of the worker-pool example, run inside a node by ``qchan node start --run``::

    qchan node start --cluster-key ck --name w1 --listen 127.0.0.1:0 \\
        --run examples.cluster.worker_pool.worker:serve

It registers with whichever pool reads the registry channel ``qchan.workers`` (waiting for one
if there is none yet, and registering again when a pool goes away), and counts primes for it.
"""

from __future__ import annotations

import os

import qchan
from examples.cluster.worker_pool.jobs import count_primes
from qchan.cluster import serve_worker

__all__ = ["serve"]

#: Jobs a worker takes at once. The handler is plain CPU work run on the node's event loop, so
#: two slots do not compute in parallel; they overlap one job's reply with the next one's
#: arrival. QCHAN_EXAMPLE_SLOTS overrides it.
SLOTS = int(os.environ.get("QCHAN_EXAMPLE_SLOTS", "2"))


async def serve(node: qchan.Node) -> None:
    """``FUNCTION(node)`` for ``qchan node start --run``: serve jobs until the node stops."""
    await serve_worker(node, count_primes, registry="qchan.workers", concurrency=SLOTS)
