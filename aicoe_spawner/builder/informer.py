"""A list+watch of one kind of object (the builder's ImageBuild records, its Jobs, their pods)
that tells a handler of every change. The same protocol as :mod:`aicoe_spawner.watch` (the hub's
ImageStream cache): list, then watch from the list's resourceVersion; a watch that ends
resumes from the last resourceVersion seen, ``410 Gone`` relists, any other failure (an API
server restart) relists after a backoff. A relist reports what changed meanwhile, deletions
included, so a handler never misses an end state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import watch
from kubernetes_asyncio.client.rest import ApiException

from .kube import raw_json

log = logging.getLogger("aicoe_spawner.builder")

#: ``handler(event, obj)``: event ADDED | MODIFIED | DELETED, obj the raw object (a dict)
Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


class _Relist(Exception):
    """The resourceVersion is too old (410 Gone): list again."""


class Informer:
    """Calls ``handler`` for every change of the objects ``list_call(*args, **kwargs)`` lists
    (a kubernetes_asyncio list method; ``label_selector`` etc. in ``kwargs``). ``objects``
    holds the last seen version of each, by name."""

    def __init__(
        self,
        what: str,
        list_call: Callable[..., Awaitable[Any]],
        *args: Any,
        handler: Handler,
        watch_timeout: int = 300,
        max_backoff: float = 5.0,
        page_size: int = 500,
        **kwargs: Any,
    ) -> None:
        self.what = what
        self.list_call = list_call
        self.args = args
        self.kwargs = kwargs
        self.handler = handler
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.page_size = page_size
        self.objects: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.relists = 0  # lists made (tests and benchmarks count them)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"watch-{self.what}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            self.synced.clear()

    async def _run(self) -> None:
        backoff = 0.1
        version: str | None = None
        failing = False
        while True:
            try:
                if version is None:
                    version = await self._list()
                version = await self._watch(version)
                backoff = 0.1
                if failing:
                    log.info("watch of %s recovered", self.what)
                    failing = False
            except asyncio.CancelledError:
                raise
            except _Relist:
                version = None
            except Exception as e:  # unreachable API server: relist once it is back
                version = None
                if not failing:
                    log.warning("watch of %s failed (%s); retrying", self.what, _why(e))
                    failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _list(self) -> str:
        """A paged list (one consistent snapshot); reports the differences to what was known."""
        fresh: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            self.relists += 1
            extra = {"_continue": token} if token else {}
            # an error answer (a 404 or 503 of an API server still starting) raises: read as
            # a list, it would be one without items, and every known object reported deleted
            page = await raw_json(
                self.list_call(
                    *self.args, limit=self.page_size, _preload_content=False, **self.kwargs, **extra
                )
            )
            for obj in page.get("items") or []:
                fresh[obj["metadata"]["name"]] = obj
            token = page["metadata"].get("continue")
            if not token:
                break
        for name in [n for n in self.objects if n not in fresh]:
            await self._apply("DELETED", self.objects[name])
        for obj in fresh.values():
            old = self.objects.get(obj["metadata"]["name"])
            if old is None or _version(old) != _version(obj):
                await self._apply("MODIFIED" if old else "ADDED", obj)
        self.synced.set()
        return page["metadata"]["resourceVersion"]

    async def _watch(self, version: str) -> str:
        try:
            async with watch.Watch().stream(
                self.list_call,
                *self.args,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,
                **self.kwargs,
            ) as stream:
                async for event in stream:
                    kind, obj = event["type"], event["raw_object"]
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise _Relist()
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    version = _version(obj) or version
                    if kind != "BOOKMARK":
                        await self._apply(kind, obj)
        except ApiException as e:
            if e.status == 410:  # kubernetes_asyncio raises a 410 ERROR event
                raise _Relist() from None
            raise
        return version

    async def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj.get("metadata", {}).get("name")
        if not isinstance(name, str):
            return
        before = self.objects.get(name)
        if kind == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = obj
        try:
            await self.handler(kind, obj)
        except Exception:
            # not handled: undo, so that the relist (after a backoff) reports it again
            if kind == "DELETED":
                self.objects[name] = obj
            elif before is None:
                self.objects.pop(name, None)
            else:
                self.objects[name] = {**obj, "metadata": {**obj["metadata"], "resourceVersion": ""}}
            raise


def _version(obj: dict[str, Any]) -> str:
    return obj.get("metadata", {}).get("resourceVersion") or ""


def _why(e: Exception) -> str:
    if isinstance(e, ApiException):
        return f"{e.status} {e.reason}"
    return f"{type(e).__name__}: {e}"
