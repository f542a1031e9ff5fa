"""The builder's one Kubernetes helper: raw JSON answers, not-found / already-exists /
conflict as values, and the optimistic-concurrency loop (read, decide, write on the condition
that the object is still the version read; on a 409 read and decide again).

kubernetes_asyncio with ``_preload_content=False`` (raw JSON, no model conversion) does not
raise for error statuses: :func:`raw_json` does."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kubernetes_asyncio.client.rest import ApiException

T = TypeVar("T")


async def raw_json(coro) -> Any:
    response = await coro
    if not 200 <= response.status <= 299:
        text = await response.text()
        response.release()
        raise ApiException(status=response.status, reason=text[:500])
    return await response.json()


def is_not_found(e: BaseException) -> bool:
    return isinstance(e, ApiException) and e.status == 404


def is_conflict(e: BaseException) -> bool:
    """409: already exists (create) or changed since read (update with a resourceVersion)."""
    return isinstance(e, ApiException) and e.status == 409


async def or_none(coro: Awaitable[T]) -> T | None:
    """The answer of a read, or None when the object does not exist (404)."""
    try:
        return await coro
    except ApiException as e:
        if is_not_found(e):
            return None
        raise


async def ignore_not_found(coro: Awaitable[Any]) -> bool:
    """Run a delete (or another call where a missing object is the goal); False on 404."""
    try:
        await coro
    except ApiException as e:
        if is_not_found(e):
            return False
        raise
    return True


async def create_once(coro: Awaitable[T]) -> T | None:
    """The created object, or None when it exists already (409: another replica, or an
    earlier attempt, created it)."""
    try:
        return await coro
    except ApiException as e:
        if is_conflict(e):
            return None
        raise


class TooManyConflicts(RuntimeError):
    """:func:`retry_on_conflict` gave up."""


async def retry_on_conflict(
    attempt: Callable[[], Awaitable[tuple[bool, T]]],
    *,
    attempts: int = 20,
    backoff: float = 0.0,
    cap: float = 0.05,
    jitter: bool = True,
    what: str = "object",
) -> T:
    """Optimistic concurrency: call ``attempt()`` (read, decide, conditional write) until it
    reports done, ``(True, result)``. A lost write, ``(False, _)`` or a 409 raised by
    ``attempt()``, means read and decide again, after a pause of ``backoff * attempt number``
    seconds (at most ``cap``; ``jitter``: a random part of it; ``backoff`` 0: at once).
    After ``attempts``: the last 409 is raised, or :class:`TooManyConflicts`."""
    for n in range(attempts):
        try:
            done, result = await attempt()
        except ApiException as e:
            if not is_conflict(e) or n == attempts - 1:
                raise
            done = False
        if done:
            return result
        if backoff and n < attempts - 1:
            pause = min(cap, backoff * (n + 1))
            await asyncio.sleep(random.uniform(0, pause) if jitter else pause)
    raise TooManyConflicts(f"{what}: too many conflicting writes")
