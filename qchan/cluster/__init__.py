"""Cluster helpers on top of nodes and channels: worker pools (and discovery, used by Node).

``WorkerPool`` dispatches jobs to workers anywhere in the cluster; ``serve_worker`` makes a
task into one. See API.md "Cluster helpers" and :mod:`qchan.cluster.pool`.
"""

from qchan.cluster.pool import (
    JobFailed,
    MapResults,
    NoWorkers,
    PoolStatistics,
    RemoteError,
    WorkerPool,
    WorkersLost,
    WorkerStatistics,
    serve_worker,
)

__all__ = [
    "WorkerPool",
    "serve_worker",
    "JobFailed",
    "RemoteError",
    "WorkersLost",
    "NoWorkers",
    "MapResults",
    "PoolStatistics",
    "WorkerStatistics",
]
