"""The quick "is this task's cancel scope cancelled?" test on asyncio agrees with anyio's own.

``qchan._operation`` reads anyio's cancel-scope state directly on the path of every remote
send (anyio's public checkpoint costs three times as much). It must say "cancelled" exactly
when anyio would, in every shape of nesting; and where anyio is laid out otherwise the public
checkpoint is used instead. Here the verdict is compared with anyio's public
``current_effective_deadline()``, which is ``-inf`` exactly when a cancellation applies.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import anyio
import pytest

from qchan import _operation

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def anyio_says_cancelled() -> bool:
    return anyio.current_effective_deadline() == -math.inf


def quick_says_cancelled() -> bool:
    assert _operation._anyio_task_states is not None, "anyio's state was not found"
    return _operation.cancel_pending()


async def check(expected: bool) -> None:
    assert anyio_says_cancelled() is expected
    assert quick_says_cancelled() is expected


async def test_this_anyio_is_laid_out_as_expected() -> None:
    # (If an anyio release moves its internals, this fails, and qchan still works, slower.)
    assert _operation._anyio_task_states is not None


async def test_no_scope_is_not_cancelled() -> None:
    await check(False)


async def test_a_cancelled_scope() -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await check(True)


async def test_an_inner_scope_of_a_cancelled_one() -> None:
    with anyio.CancelScope() as outer:
        with anyio.CancelScope(), anyio.CancelScope():
            outer.cancel()
            await check(True)


async def test_a_shield_inside_a_cancelled_scope() -> None:
    with anyio.CancelScope() as outer:
        outer.cancel()
        with anyio.CancelScope(shield=True):
            await check(False)
            with anyio.CancelScope() as inner:
                inner.cancel()
                await check(True)  # its own cancellation counts before the shield above


async def test_a_cancelled_shielded_scope() -> None:
    with anyio.CancelScope(shield=True) as scope:
        scope.cancel()
        await check(True)


async def test_an_expired_deadline() -> None:
    with anyio.move_on_after(0) as scope:  # a deadline already passed cancels on entry
        await check(True)
    assert scope.cancel_called


async def test_in_a_task_group_child() -> None:
    seen: list[tuple[bool, bool]] = []

    async def child(cancel: Callable[[], None]) -> None:
        cancel()
        seen.append((anyio_says_cancelled(), quick_says_cancelled()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(child, lambda: None)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(child, scope.cancel)
    assert seen == [(False, False), (True, True)]


async def test_a_plain_asyncio_task_outside_anyio() -> None:
    # A task anyio never saw has no scope: nothing can be cancelled by anyio.
    async def plain() -> tuple[bool, bool]:
        return anyio_says_cancelled(), quick_says_cancelled()

    result: Awaitable[tuple[bool, bool]] = asyncio.get_running_loop().create_task(plain())
    assert await result == (False, False)


async def test_a_remote_style_checkpoint_raises_in_a_cancelled_scope() -> None:
    went_on = False
    with anyio.CancelScope() as scope:
        scope.cancel()
        await _operation.checkpoint_if_cancelled()
        went_on = True
    assert scope.cancelled_caught
    assert not went_on


async def test_a_remote_style_checkpoint_does_not_yield_when_not_cancelled() -> None:
    ran = False

    async def other() -> None:
        nonlocal ran
        ran = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        await _operation.checkpoint_if_cancelled()
        assert not ran  # no other task ran: it did not yield
