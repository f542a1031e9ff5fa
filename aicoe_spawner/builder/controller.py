"""What drives a :class:`.service.BuildService`: watches, one leader, a work queue.

Every replica watches the active build records: its cache (``service.builds``) and the event
streams it serves follow them, and it takes part in the leader election (:mod:`.leader`).
The replica holding the Lease also watches the backend's objects (Jobs and their pods, or
OpenShift Builds), and every change of a record or of an object puts the builds it belongs to
on a work queue keyed by build id; a few workers reconcile them (:meth:`reconcile_one`), one
build at a time each. A resync every ``resync_interval_seconds`` queues every active build
(the safety net for a missed event) and the cleanup runs on the leader only. The leader follows
the logs of running builds (``follow=true``) instead of reading them whole.

Submissions are any replica's: the one that takes a request creates the record and the Job
under the quota ledger, as before; nothing here changes what a request sees."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .informer import Informer
from .leader import LeaseElector
from .store import ACTIVE_LABEL, GROUP, PLURAL, SELECTOR, VERSION, Build, parse_record
from .vocabulary import BuildPhase

if TYPE_CHECKING:
    from .service import BuildService

log = logging.getLogger("aicoe_spawner.builder")

LEASE_NAME = "aicoe-image-builder"


def identity() -> str:
    """This replica's name in the Lease: the pod's name (hostname) and a per-process id."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class Controller:
    """Runs ``service`` until :meth:`stop`; ``retry``: seconds before a failed reconcile of
    a build is tried again."""

    workers = 4

    def __init__(self, service: BuildService, retry: float = 1.0) -> None:
        self.service = service
        self.retry = retry
        limits = service.limits
        api = service.store.core.api_client
        namespace = service.store.namespace
        self.records = Informer(
            "build records",
            service.store.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            handler=self._record_changed,
            label_selector=f"{SELECTOR},{ACTIVE_LABEL}=true",
        )
        self.objects = [
            Informer(
                w.what,
                w.list_call,
                *w.args,
                handler=self._object_changed(w.job_id),
                **w.kwargs,
            )
            for w in service.backend.watched(namespace)
        ]
        self.elector = LeaseElector(
            api,
            namespace,
            LEASE_NAME,
            identity(),
            duration=limits.lease_duration_seconds,
            renew=limits.lease_renew_seconds,
            on_start=self._lead,
            on_stop=self._follow,
        )
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._leading: list[asyncio.Task] = []
        self._logs: dict[str, asyncio.Task] = {}
        self.reconciles = 0  # reconciles run (benchmarks and tests count them)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.records.start()
        asyncio.get_running_loop().create_task(self._synced())
        self.elector.start()

    async def _synced(self) -> None:
        await self.records.synced.wait()
        self.service.synced.set()

    async def stop(self) -> None:
        await self.elector.stop()  # stops leading first (releases the Lease)
        await self._follow()
        await self.records.stop()

    async def _lead(self) -> None:
        """Became the leader: watch the backend's objects, run the queue, resync, clean up."""
        for informer in self.objects:
            informer.start()
        loop = asyncio.get_running_loop()
        self._leading = [
            *(
                loop.create_task(self._work(), name="builder-reconcile")
                for _ in range(self.workers)
            ),
            loop.create_task(self._resync(), name="builder-resync"),
            loop.create_task(self._cleanup(), name="builder-cleanup"),
        ]

    async def _follow(self) -> None:
        """Not (or no more) the leader: stop everything only the leader does."""
        tasks = [*self._leading, *self._logs.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._leading = []
        self._logs.clear()
        self.service.log_followed.clear()
        for informer in self.objects:
            await informer.stop()
        self._queued.clear()
        self._again.clear()
        self._queue = asyncio.Queue()

    # -- events ------------------------------------------------------------------------------

    async def _record_changed(self, kind: str, obj: dict[str, Any]) -> None:
        build = parse_record(obj)
        if build is None:
            return
        service = self.service
        known = service.builds.get(build.id)
        if kind == "DELETED" and build.active:
            # deleted, or finished while the watch was down (a relist): read what is there
            fresh = await service.store.get(build.id)
            if fresh is None:
                service.builds.pop(build.id, None)
                service._forget(build.id)
                await service._cache_changed()
                return
            build = fresh
        elif kind == "DELETED":  # finished: the label changed, the record is the last one
            build = replace(build, labelled_active=False)
        newer = known is None or _version(known) < _version(build)
        if newer:  # an older version than this replica's own write is not news
            await service._cache(build)
        if newer and build.active and self.elector.is_leader:
            self.enqueue(build.id)
        service.prune()
        service.count_active()

    def _object_changed(self, job_id_of):
        async def changed(kind: str, obj: dict[str, Any]) -> None:
            job_id = job_id_of(obj)
            if job_id is None:
                return
            for build in list(self.service.builds.values()):
                if build.active and build.spec.job_id == job_id:
                    self.enqueue(build.id)

        return changed

    # -- the work queue ----------------------------------------------------------------------

    def enqueue(self, build_id: str) -> None:
        if build_id not in self._queued:
            self._queued.add(build_id)
            self._queue.put_nowait(build_id)

    async def _work(self) -> None:
        while True:
            build_id = await self._queue.get()
            self._queued.discard(build_id)
            if build_id in self._busy:  # another worker has it: once more after that one
                self._again.add(build_id)
                continue
            self._busy.add(build_id)
            try:
                self.reconciles += 1
                build = await self.service.reconcile_one(build_id)
                self._logs_of(build, build_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling build %s failed; again in %.0f s", build_id, self.retry)
                asyncio.get_running_loop().call_later(self.retry, self.enqueue, build_id)
            finally:
                self._busy.discard(build_id)
                if build_id in self._again:
                    self._again.discard(build_id)
                    self.enqueue(build_id)

    async def _resync(self) -> None:
        interval = self.service.limits.resync_interval_seconds
        while True:
            try:
                active = await self.service.store.list(active_only=True)
                for build in active:
                    self.enqueue(build.id)
                # held active here, not active there: read once so that event streams end
                listed = {b.id for b in active}
                for build in [b for b in self.service.builds.values() if b.id not in listed]:
                    if build.active:
                        fresh = await self.service.store.get(build.id)
                        if fresh is None:
                            self.service.builds.pop(build.id, None)
                            self.service._forget(build.id)
                        else:
                            await self.service._cache(fresh)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # soon, not after the interval: the first pass of a new leader is what finds
                # the builds no event brings (a record whose finishing steps were cut short)
                again = min(self.retry, interval)
                log.warning("resync failed (%s); again in %.0f s", _short(e), again)
                await asyncio.sleep(again)
                continue
            await asyncio.sleep(interval)

    async def _cleanup(self) -> None:
        while True:
            await asyncio.sleep(0)  # the first pass at once, as before
            try:
                await self.service.cleanup_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cleanup failed; retrying later")
            await asyncio.sleep(self.service.limits.cleanup_interval_seconds)

    # -- logs --------------------------------------------------------------------------------

    def _logs_of(self, build: Build | None, build_id: str) -> None:
        """Follow a running build's log; stop following one that ended."""
        following = self._logs.get(build_id)
        if build is None or not build.active:
            if following is not None:
                following.cancel()
                del self._logs[build_id]
            self.service.log_followed.discard(build_id)
            return
        running = build.submitted and build.phase == BuildPhase.BUILDING  # its pod is there
        if following is None and running and self.service.backend.follows_logs:
            self.service.log_followed.add(build_id)
            task = asyncio.get_running_loop().create_task(self._stream(build))
            self._logs[build_id] = task

    async def _stream(self, build: Build) -> None:
        service = self.service
        interval = service.limits.log_tail_interval_seconds
        try:
            async for text in service.backend.follow_log(build.spec):
                if build.id not in service.log_followed:
                    return  # the final log was read whole: a late chunk must not replace it
                if service._remember_log(build.id, text):
                    await service._cache(service.builds.get(build.id, build), log_changed=True)
                    written = service._tail_written.get(build.id, 0.0)
                    if time.monotonic() - written >= interval:
                        self.enqueue(build.id)  # the record's tail is due
        except asyncio.CancelledError:
            raise
        except Exception as e:  # followed again at the next reconcile; read whole meanwhile
            log.warning("following the log of build %s: %s", build.id, e)
            if self._logs.get(build.id) is asyncio.current_task():
                del self._logs[build.id]
                service.log_followed.discard(build.id)
        finally:
            # ended by itself (the pod ended or is gone): the state read the rest
            if self._logs.get(build.id) is asyncio.current_task():
                service.log_followed.discard(build.id)


def _short(e: Exception) -> str:
    """An API error by its status and reason (not its headers and body)."""
    status = getattr(e, "status", None)
    return f"{status} {getattr(e, 'reason', '')}" if status else f"{type(e).__name__}: {e}"


def _version(build: Build) -> int:
    try:
        return int(build.resource_version or 0)
    except ValueError:
        return 0
