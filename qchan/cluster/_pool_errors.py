"""The exceptions of :mod:`qchan.cluster.pool`.

The tree (all under :class:`qchan.QchanError`)::

    JobFailed                   a job submitted to a WorkerPool did not produce a result
    ├── RemoteError             the handler raised on the worker (never retried)
    ├── WorkersLost             every attempt lost its worker (``max_attempts`` of them)
    └── NoWorkers               no worker was free within the timeout (also a TimeoutError)

``raise ... from``: a :class:`WorkersLost` carries the last ``PeerLost`` (or
``ChannelClosed``) as its ``__cause__``.
"""

from __future__ import annotations

from qchan._errors import QchanError

__all__ = ["JobFailed", "NoWorkers", "RemoteError", "WorkersLost"]


class JobFailed(QchanError):
    """A job submitted to a :class:`~qchan.cluster.WorkerPool` did not produce a result.

    ``attempts`` is how many workers the job was handed to (0 if it never reached one).
    """

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts


class RemoteError(JobFailed):
    """The handler raised an exception on the worker; the job is not retried.

    ``type_name`` and ``message`` are the remote exception's class name and ``str()``;
    ``remote_traceback`` is its formatted traceback (cut to a few kilobytes); ``worker`` names
    the worker (``"node/id"``) that ran it.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        *,
        remote_traceback: str = "",
        worker: str = "",
        attempts: int = 1,
    ) -> None:
        where = f" on {worker}" if worker else ""
        text = f"{type_name}: {message} (raised by the handler{where})"
        super().__init__(text, attempts=attempts)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.worker = worker


class WorkersLost(JobFailed):
    """Every attempt lost its worker (node gone, link lost, worker stopped) before a reply.

    The job may have run, in part or in full, on any of them (at-least-once semantics).
    ``__cause__`` is the last attempt's error.
    """


class NoWorkers(JobFailed, TimeoutError):
    """No worker was free within the ``timeout`` given to ``submit`` (or ``map``)."""
