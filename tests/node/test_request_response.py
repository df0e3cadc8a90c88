"""Request/response with reply channels, and self-registering workers, across real nodes.

The two patterns channels-in-messages exist for: a client sends ``(request, reply_channel)``
to a service and waits on its own reply channel; workers announce themselves by sending their
own job channel to a registry, and a dispatcher hands each job (with a reply channel) to
whichever worker announced itself.
"""

from __future__ import annotations

import random
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

import qchan
from tests.node._helpers import make_node

pytestmark = pytest.mark.anyio

BOUND = 15.0


async def _serve(requests: qchan.ReceiveChannel[Any], handled: Counter[str]) -> None:
    """A service task: answer each ``(request, reply)`` with ``("re", request)`` on ``reply``."""
    async for request, reply in requests:
        handled[request[0]] += 1
        await anyio.sleep(random.random() * 0.002)
        await reply.send(("re", request))


@pytest.mark.parametrize("reply_capacity", [0, 1])
async def test_each_client_gets_its_own_replies(reply_capacity: int) -> None:
    clients, per_client, servers = 24, 5, 4
    handled: Counter[str] = Counter()
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            a = await stack.enter_async_context(make_node(ck, "service-node"))
            b = await stack.enter_async_context(make_node(ck, "client-node"))
            await b.connect(a.address)
            service: qchan.Channel[Any] = qchan.Channel(0)
            a.register("service", service)
            requests = await b.lookup("service", timeout=BOUND)
            answers: dict[str, list[Any]] = {}

            async def client(name: str) -> None:
                got = answers.setdefault(name, [])
                for n in range(per_client):
                    reply: qchan.Channel[Any] = qchan.Channel(reply_capacity)
                    await requests.send(((name, n), reply.sender()))
                    got.append(await reply.receive())
                    reply.close()

            async with anyio.create_task_group() as service_tasks:
                for _ in range(servers):
                    service_tasks.start_soon(_serve, service.receiver(), handled)
                async with anyio.create_task_group() as client_tasks:
                    for i in range(clients):
                        client_tasks.start_soon(client, f"client-{i}")
                service.close()
    assert answers == {
        f"client-{i}": [("re", (f"client-{i}", n)) for n in range(per_client)]
        for i in range(clients)
    }
    assert handled == {f"client-{i}": per_client for i in range(clients)}


async def test_a_reply_channel_can_be_hosted_on_a_third_node() -> None:
    """The client on B asks the service on A to answer on a channel hosted on C."""
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            a = await stack.enter_async_context(make_node(ck, "A"))
            b = await stack.enter_async_context(make_node(ck, "B"))
            c = await stack.enter_async_context(make_node(ck, "C"))
            await b.connect(a.address)
            await b.connect(c.address)
            service: qchan.Channel[Any] = qchan.Channel(0)
            a.register("service", service)
            inbox: qchan.Channel[Any] = qchan.Channel(8)
            c.register("inbox", inbox)
            requests = await b.lookup("service", timeout=BOUND)
            reply_to = await b.lookup("inbox", timeout=BOUND)
            handled: Counter[str] = Counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_serve, service.receiver(), handled)
                for n in range(8):
                    await requests.send((("b", n), reply_to.sender()))
                got = [await inbox.receive() for _ in range(8)]
                service.close()
            assert got == [("re", ("b", n)) for n in range(8)]


async def _worker(node: qchan.Node, registry_name: str, jobs_done: Counter[str]) -> None:
    """Announce a job channel to the registry; answer one job; announce again; ...

    Returns when it is sent ``None`` instead of a job.
    """
    registry = await node.lookup(registry_name, timeout=BOUND)
    jobs: qchan.Channel[Any] = qchan.Channel(0)
    while True:
        await registry.send(jobs.sender())
        message = await jobs.receive()
        if message is None:
            return
        job, reply = message
        await anyio.sleep(random.random() * 0.003)
        jobs_done[node.name] += 1
        await reply.send((node.name, job, job * job))


async def test_self_registering_workers_across_three_nodes() -> None:
    job_count = 40
    jobs_done: Counter[str] = Counter()
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            a = await stack.enter_async_context(make_node(ck, "dispatcher"))
            b = await stack.enter_async_context(make_node(ck, "worker-b", peers=[a.address]))
            c = await stack.enter_async_context(make_node(ck, "worker-c", peers=[a.address]))
            registry: qchan.Channel[Any] = qchan.Channel(16)
            a.register("registry", registry)
            results: dict[int, tuple[str, int, int]] = {}

            async def dispatch(job: int, free_workers: qchan.ReceiveChannel[Any]) -> None:
                worker = await free_workers.receive()
                # A worker's job channel arrives send-only: the dispatcher cannot steal jobs.
                assert isinstance(worker, qchan.SendChannel)
                assert not isinstance(worker, qchan.ReceiveChannel)
                reply: qchan.Channel[Any] = qchan.Channel(0)
                await worker.send((job, reply.sender()))
                results[job] = await reply.receive()

            async with anyio.create_task_group() as workers:
                workers.start_soon(_worker, b, "registry", jobs_done)
                workers.start_soon(_worker, c, "registry", jobs_done)
                # Both workers announced themselves before the first job goes out, so the
                # first two jobs go to different nodes whatever happens next.
                while len(registry) < 2:  # noqa: ASYNC110 - remote sends fill it
                    await anyio.sleep(0.005)
                async with anyio.create_task_group() as dispatchers:
                    for job in range(job_count):
                        dispatchers.start_soon(dispatch, job, registry.receiver())
                # Each worker announced itself once more after its last job: stop them.
                for _ in range(2):
                    await (await registry.receive()).send(None)
    assert sorted(results) == list(range(job_count))
    for job, (worker, echoed, square) in results.items():
        assert (echoed, square) == (job, job * job)
        assert worker in ("worker-b", "worker-c")
    assert sum(jobs_done.values()) == job_count
    assert jobs_done["worker-b"] > 0, jobs_done
    assert jobs_done["worker-c"] > 0, jobs_done
    assert Counter(worker for worker, _, _ in results.values()) == jobs_done
