"""One shared list+watch cache of notebook ImageStreams per hub process.

The options form and spawns read :attr:`ImageStreamWatch.catalog` from memory: rendering never
lists from the API server. Each namespace gets a list, then a watch from the list's
resourceVersion; a dropped watch resumes from the last seen resourceVersion, ``410 Gone``
relists, and an unreachable API server is retried with backoff while the last known catalog is
served (``stale`` tells the form to say so).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from .catalog import Catalog, NotebookImage, parse_imagestream

GROUP, VERSION, PLURAL = "image.openshift.io", "v1", "imagestreams"

log = logging.getLogger("aicoe_spawner.watch")


class _Relist(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class ImageStreamWatch:
    """A list+watch cache of the ImageStreams in ``namespaces`` matching ``label_selector``."""

    _shared: dict[tuple, ImageStreamWatch] = {}

    def __init__(
        self,
        custom_api: client.CustomObjectsApi,
        namespaces: tuple[str, ...],
        label_selector: str,
        *,
        watch_timeout: int = 300,
        max_backoff: float = 5.0,
        page_size: int = 250,
        change_log_size: int = 4096,
        log: logging.Logger | logging.LoggerAdapter = log,
    ) -> None:
        self.log = log
        self.api = custom_api
        self.namespaces = namespaces
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.page_size = page_size
        self._images: dict[tuple[str, str], NotebookImage] = {}
        self._catalog: Catalog | None = None
        self._synced_namespaces: set[str] = set()
        self._failing_namespaces: set[str] = set()
        self._first_sync = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.version = 0  # bumped on every change; the form's live updates poll it
        # (version, "namespace/name") of recent changes, oldest first; a relist is recorded
        # as (version, None): "anything may have changed".
        self._changes: deque[tuple[int, str | None]] = deque(maxlen=change_log_size)
        self.changed = asyncio.Condition()
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.api_requests = 0  # lists and watch connections made (benchmarks count them)

    # -- shared instances ------------------------------------------------------------------

    @classmethod
    def shared(
        cls,
        namespaces: tuple[str, ...],
        label_selector: str,
        api_factory: Callable[[], Any],
        log: logging.Logger | logging.LoggerAdapter = log,
    ) -> ImageStreamWatch:
        """The process-wide watch for these namespaces and selector (started on first use)."""
        key = (asyncio.get_running_loop(), tuple(sorted(namespaces)), label_selector)
        existing = cls._shared.get(key)
        if existing is None:
            existing = cls(api_factory(), tuple(sorted(namespaces)), label_selector, log=log)
            existing.start()
            cls._shared[key] = existing
        return existing

    @classmethod
    async def stop_all(cls) -> None:
        for w in list(cls._shared.values()):
            await w.stop()
        cls._shared.clear()

    # -- state -----------------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        """The current catalog (rebuilt lazily after changes)."""
        if self._catalog is None:
            self._catalog = Catalog.of(self._images.values())
        return self._catalog

    @property
    def synced(self) -> bool:
        return self._first_sync.is_set()

    @property
    def stale(self) -> bool:
        """True while some namespace cannot be watched: the catalog may be out of date."""
        return bool(self._failing_namespaces) or not self.synced

    async def wait_synced(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._first_sync.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def changes_since(self, since: int) -> set[str] | None:
        """Keys (``namespace/name``) of the streams that changed after version ``since``;
        None when that is not known (a relist since, or older than the change log)."""
        if since == self.version:
            return set()
        if since > self.version or not self._changes or self._changes[0][0] > since + 1:
            return None
        keys: set[str] = set()
        for version, key in reversed(self._changes):
            if version <= since:
                break
            if key is None:
                return None
            keys.add(key)
        return keys

    async def wait_for_change(self, since: int, timeout: float) -> int:
        """Wait until ``version`` moves past ``since`` (or timeout); return the version."""
        async with self.changed:
            try:
                await asyncio.wait_for(
                    self.changed.wait_for(lambda: self.version != since), timeout
                )
            except TimeoutError:
                pass
        return self.version

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._run(ns), name=f"imagestream-watch-{ns}")
                for ns in self.namespaces
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- list + watch ----------------------------------------------------------------------

    async def _run(self, namespace: str) -> None:
        backoff = 0.1
        resource_version: str | None = None
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._list(namespace)
                resource_version = await self._watch(namespace, resource_version)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except _Relist:
                self.log.info(
                    "ImageStream watch in %s: resourceVersion expired, relisting", namespace
                )
                resource_version = None
            except Exception as e:
                # Relist after any failure: it proves the API server is back and catches up
                # with whatever happened while the watch was down.
                resource_version = None
                self._mark_failing(namespace, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _list(self, namespace: str) -> str:
        """List in pages (a consistent snapshot) so that a large catalog is never decoded in
        one piece; returns the snapshot's resourceVersion."""
        fresh: dict[tuple[str, str], NotebookImage] = {}
        token: str | None = None
        while True:
            self.api_requests += 1
            response = await self.api.list_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                label_selector=self.label_selector,
                limit=self.page_size,
                **({"_continue": token} if token else {}),
            )
            for obj in response.get("items", []):
                obj.setdefault("metadata", {}).setdefault("namespace", namespace)
                image = parse_imagestream(obj)
                if image is not None:
                    fresh[(namespace, image.name)] = image
            token = response["metadata"].get("continue")
            if not token:
                break
        for key in [k for k in self._images if k[0] == namespace]:
            if key not in fresh:
                del self._images[key]
        self._images.update(fresh)
        self._mark_healthy(namespace)
        await self._changed(None)
        return response["metadata"]["resourceVersion"]

    async def _watch(self, namespace: str, resource_version: str) -> str:
        try:
            return await self._watch_events(namespace, resource_version)
        except ApiException as e:
            # kubernetes_asyncio turns a watch's ERROR event into an ApiException: 410 Gone
            # (resourceVersion too old) is expected, not a failure.
            if e.status == 410:
                raise _Relist() from None
            raise

    async def _watch_events(self, namespace: str, resource_version: str) -> str:
        self.api_requests += 1
        w = watch.Watch()
        async with w.stream(
            self.api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            label_selector=self.label_selector,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
        ) as stream:
            async for event in stream:
                kind = event["type"]
                obj = event["raw_object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Relist()
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                self._mark_healthy(namespace)
                resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                if kind == "BOOKMARK":
                    continue
                self._apply(namespace, kind, obj)
                name = obj.get("metadata", {}).get("name")
                await self._changed(f"{namespace}/{name}" if isinstance(name, str) else None)
        return resource_version

    def _apply(self, namespace: str, kind: str, obj: dict[str, Any]) -> None:
        name = obj.get("metadata", {}).get("name")
        if not isinstance(name, str):
            return
        key = (namespace, name)
        if kind == "DELETED":
            self._images.pop(key, None)
            return
        image = parse_imagestream(obj)
        if image is None:
            self._images.pop(key, None)
        else:
            self._images[key] = image

    async def _changed(self, key: str | None) -> None:
        self._catalog = None
        self.version += 1
        self._changes.append((self.version, key))
        async with self.changed:
            self.changed.notify_all()

    def _mark_healthy(self, namespace: str) -> None:
        if namespace in self._failing_namespaces:
            self.log.info("ImageStream watch in %s recovered", namespace)
            self._failing_namespaces.discard(namespace)
        self._synced_namespaces.add(namespace)
        if self._synced_namespaces >= set(self.namespaces):
            self._first_sync.set()

    def _mark_failing(self, namespace: str, error: Exception) -> None:
        if isinstance(error, ApiException):
            message = f"{error.status} {error.reason}"
        else:
            message = f"{type(error).__name__}: {error}"
        if namespace not in self._failing_namespaces:
            self.log.warning("ImageStream watch in %s failed (%s); retrying", namespace, message)
        self._failing_namespaces.add(namespace)
        self.last_error = message
        self.last_error_time = time.time()
