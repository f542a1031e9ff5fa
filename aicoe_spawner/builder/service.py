"""The builder's core, without HTTP: submit (validate, limits, resolve, dedup), reconcile
(backend state -> record -> ImageStream), cancel, cleanup. Records are per requester; the
records of identical builds (same ``content_id``) of different requesters follow one Job
(``spec.job_id``, the build that started it). Every replica runs the same
level-triggered reconcile loop over the active records in Kubernetes (O(active builds)).
Status writes carry the resourceVersion they were decided on; on a conflict the record is
read again and the decision made again, so a cancel is never undone and a terminal phase
never changes. Logs of running builds stay in memory (read from the pod); the record keeps a
tail, written on phase changes and at most every ``log_tail_interval_seconds``, and the full
log is kept once at the end. The phase rules are the pure functions of :mod:`.transitions`
(this class reads, applies them and writes); the backend is any :class:`.backends.Backend`;
HTTP handlers use the reads below (``record``, ``get``, ``list_builds``, ``latest``,
``lines_of``, ``wait_changed``, ``submit_once``), not its fields."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import git_process
from . import transitions as rules
from .backends.base import Backend
from .cleanup import Cleanup
from .controller import Controller
from .imagestream import OwnershipError
from .kube import retry_on_conflict
from .publish import publisher_of
from .quota import LimitError, QuotaLedger
from .reconcile import Reconciling
from .requests import (
    BuildDefaults,
    BuildRequest,
    BuildSpec,
    RepoPolicy,
    Resolver,
    system_resolver,
)
from .store import Build, BuildStore, Conflict
from .submission import Redelivery, Submission
from .transitions import Clock
from .vocabulary import BuildPhase

log = logging.getLogger("aicoe_spawner.builder")
T = TypeVar("T")

__all__ = ["BuildObserver", "BuildService", "LimitError", "Limits", "Metrics", "Redelivery"]


class BuildObserver(Protocol):
    """Told of every phase a build enters (``previous`` "" for a new build), once: by the
    replica whose status write made the change. Runs in the background; its errors are
    logged (e.g. :class:`~aicoe_spawner.builder.github_reporter.GitHubReporter`)."""

    async def build_changed(self, build: Build, previous: str) -> None: ...


@dataclass
class Limits:
    per_user: int = 2
    total: int = 10
    branch_ttl_seconds: int = 0  # 0 = images built from branches never expire
    cleanup_after_seconds: int = 600  # finished Jobs/pods (Builds) are deleted after this
    cleanup_interval_seconds: float = 60.0  # how often the periodic cleanup runs
    record_retention_seconds: int = 7 * 24 * 3600  # finished build records are deleted after
    log_tail_interval_seconds: float = 30.0  # status.logTail of a running build, at most this
    submit_attempts: int = 3  # a Job the API server refuses this often fails the build
    quota_grace_seconds: float = 300.0  # an admission without a record is dropped after
    image_streams_per_user: int = 20  # ImageStreams a requester may have published (0: any)
    lease_duration_seconds: float = 10.0  # a leader silent this long is replaced
    lease_renew_seconds: float = 2.0  # how often the leader renews its Lease
    resync_interval_seconds: float = 60.0  # the leader reconciles every active build this often


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.builds = Counter(
            "aicoe_builder_builds", "Builds reaching a phase", ["phase"], registry=r
        )
        self.active = Gauge(
            "aicoe_builder_builds_active", "Builds by current phase", ["phase"], registry=r
        )
        self.queue = Gauge(
            "aicoe_builder_queue_length", "Builds pending (not yet running)", registry=r
        )
        self.duration = Histogram(
            "aicoe_builder_build_duration_seconds",
            "Build duration from creation to end",
            buckets=(10, 30, 60, 120, 300, 600, 1200, 3600),
            registry=r,
        )
        self.requests = Counter(
            "aicoe_builder_requests", "Build requests by outcome", ["outcome"], registry=r
        )


class BuildService(Submission, Reconciling, Cleanup):
    """Submit (:mod:`.submission`), reconcile (:mod:`.reconcile`), clean up
    (:mod:`.cleanup`); :meth:`start` runs it (:mod:`.controller`: watches, Lease, queue)."""

    def __init__(
        self,
        store: BuildStore,
        backend: Backend,
        registrar,
        *,
        policy: RepoPolicy,
        defaults: BuildDefaults,
        limits: Limits | None = None,
        resolver: Resolver = system_resolver,
        metrics: Metrics | None = None,
        ledger: QuotaLedger | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.registrar = registrar
        self.policy = policy
        self.defaults = defaults
        self.limits = limits or Limits()
        self.resolver = resolver
        git_process.configure(policy, resolver)  # the addresses git may connect to
        self.metrics = metrics or Metrics()
        self.ledger = ledger or QuotaLedger(store.core.api_client, store.namespace)
        self.builds: dict[str, Build] = {}  # active builds (and recently finished ones)
        # requests in progress here: (requester, request) -> their answer
        self._in_progress: dict[tuple[str, BuildRequest], asyncio.Future] = {}
        self.log_lines: dict[str, list[str]] = {}  # running builds' logs, read from the pod
        self._log_text: dict[str, str] = {}
        self._tail_written: dict[str, float] = {}
        self.version = 0
        self.changed = asyncio.Condition()
        self.controller: Controller | None = None
        self.log_followed: set[str] = set()  # builds whose log the leader streams
        self.synced = asyncio.Event()
        self.observers: list[BuildObserver] = []
        self._observing: set[asyncio.Task] = set()

    # -- observers ---------------------------------------------------------------------------

    def _notify(self, build: Build, previous: str) -> None:
        """Tell the observers, in the background: the reconcile loop never waits for them."""
        for observer in self.observers:
            task = asyncio.get_running_loop().create_task(self._observe(observer, build, previous))
            self._observing.add(task)
            task.add_done_callback(self._observing.discard)

    @staticmethod
    async def _observe(observer: BuildObserver, build: Build, previous: str) -> None:
        try:
            await observer.build_changed(build, previous)
        except Exception as e:  # an observer's own failure (its message, never a traceback)
            log.warning(
                "build %s: %s could not be told %s -> %s: %s %s",
                build.id,
                type(observer).__name__,
                previous or "new",
                build.phase,
                type(e).__name__,
                str(e)[:300],
            )

    async def observed(self) -> None:
        """Wait until the observers have been told everything so far."""
        while self._observing:
            await asyncio.gather(*list(self._observing), return_exceptions=True)

    # -- reads (what the HTTP handlers use) ------------------------------------------------

    async def list_builds(self, requester: str | None = None) -> list[Build]:
        """Every record (``requester``'s only, when given), newest first, without logs."""
        return await self.store.list(requester=requester)

    def latest(self, build: Build) -> Build:
        """The newest version of ``build`` this replica knows (its reconcile's, when that is
        not older than ``build``)."""
        current = self.builds.get(build.id)
        if current is not None and int(current.resource_version or 0) >= int(
            build.resource_version or 0
        ):
            return current
        return build

    async def lines_of(self, build: Build) -> list[str]:
        """The log of ``build`` by lines: a running build's as read so far (memory, on the
        leader; the record's tail on another replica), a finished build's kept log."""
        if build.active:
            return self.log_lines.get(build.id) or build.log_tail.splitlines()
        return (await self.full_log(build)).splitlines()

    async def wait_changed(self, timeout: float) -> bool:
        """Wait until a build this replica follows changes (phase, message, record version or
        log); False after ``timeout`` seconds without one."""
        since = self.version
        return await self.wait_for(lambda: self.version != since, timeout)

    async def record(self, build_id: str) -> Build | None:
        """The record, without its log."""
        return await self.store.get(build_id)

    async def get(self, build_id: str) -> Build | None:
        """The record with its log."""
        build = await self.store.get(build_id)
        if build is None:
            return None
        return replace(build, log=await self.full_log(build))

    async def full_log(self, build: Build) -> str:
        """A running build's log as read from its pod (the record's tail while no replica has
        read it); a finished build's kept log."""
        if build.active:
            return self._log_text.get(build.id) or build.log_tail
        kept = await self.store.read_log(build)
        if kept is not None:
            return kept
        return self._log_text.get(build.id) or build.log_tail

    async def _publishes(self, spec: BuildSpec) -> bool:
        """True when the requester of ``spec`` may publish to its stream whoever else asks:
        its publisher (or a builder admin, the repository's webhook)."""
        if spec.publisher_rights:
            return True
        stream = await self.registrar.read(spec)
        return stream is None or publisher_of(stream) == spec.requester

    async def cancel(self, build: Build) -> Build:
        """Cancel ``build``. A cancel by the stream's publisher ends the build for everyone
        who follows it (their records are cancelled too, and the Job stops); anyone else's
        ends their own record, and the Job stops unless another requester's build follows
        it."""
        if not build.active:
            return build
        clock = Clock.now(time.monotonic())
        # the status first: a reconcile that finds the Job gone meanwhile can no longer
        # decide "failed" on a record that is not cancelled
        new = await self._write(build, lambda b: rules.cancel(b, clock))
        if new.phase == BuildPhase.CANCELLED:
            followers = await self._followers(new.spec.job_id, but=new.id)
            if followers and await self._publishes(new.spec):
                why = f"cancelled by {new.spec.requester}, who publishes {new.spec.image}"
                for other in followers:
                    ended = await self._write(other, lambda b: rules.cancel(b, clock, why))
                    if ended.phase == BuildPhase.CANCELLED:
                        self.metrics.builds.labels("cancelled").inc()
                        await self._cache(await self._finish(ended))
                followers = await self._followers(new.spec.job_id, but=new.id)
            if not followers:
                await self.backend.cancel(new.spec)
                try:
                    await self.registrar.mark(new.spec, "cancelled")
                except OwnershipError as e:
                    log.warning("build %s cancelled; its stream is not writable: %s", new.id, e)
            self.metrics.builds.labels("cancelled").inc()
            new = await self._finish(new)
        await self._cache(new)
        return new

    # -- writes ---------------------------------------------------------------------------

    async def _write(
        self,
        build: Build,
        decide: Callable[[Build], dict | None],
        changed: Callable[[Build, str], None] | None = None,
    ) -> Build:
        """Apply ``decide(record)`` (changes, or None) with optimistic concurrency: on a
        conflict, read the record again and decide again. A terminal phase never changes.
        ``changed(written, previous phase)`` runs when this write changed the phase (never
        when another replica's did: its change is counted there)."""
        seen = [build]

        async def attempt() -> tuple[bool, Build]:
            current = seen[-1]
            changes = decide(current)
            if not rules.admissible(current, changes):
                return True, current
            try:
                written = await self.store.write_status(current, **changes)
                if written.phase != current.phase:
                    self._notify(written, current.phase)
                    if changed is not None:
                        changed(written, current.phase)
                return True, written
            except Conflict:
                fresh = await self.store.get(current.id)
                if fresh is None:
                    raise
                seen.append(fresh)
                return False, current

        return await retry_on_conflict(attempt, attempts=50, what=f"build {build.id}")

    async def _finish(self, build: Build) -> Build:
        """The steps after a terminal phase, each idempotent (a replica that stops half-way
        leaves the record labelled active, so the next reconcile does the rest): keep the log
        once, free the quota, drop the record from the active selector."""
        if not build.log_config_map:
            name = await self.store.save_log(build, self._final_log(build))
            build = await self._write(
                build, lambda b: None if b.log_config_map else {"log_config_map": name}
            )
        await self.ledger.release(build.id)
        if build.labelled_active:
            await self.store.mark_inactive(build)
            build = replace(build, labelled_active=False)
        return build

    def _final_log(self, build: Build) -> str:
        text = self._log_text.get(build.id) or build.log_tail
        if build.phase == BuildPhase.FAILED and not text:
            text = build.message
        return text

    def _remember_log(self, build_id: str, text: str) -> bool:
        if self._log_text.get(build_id) == text:
            return False
        self._log_text[build_id] = text
        self.log_lines[build_id] = text.splitlines()
        return True

    def _forget(self, build_id: str) -> None:
        self._log_text.pop(build_id, None)
        self.log_lines.pop(build_id, None)
        self._tail_written.pop(build_id, None)

    # -- reconcile -----------------------------------------------------------------------

    async def _cache(self, build: Build, log_changed: bool = False) -> None:
        old = self.builds.get(build.id)
        self.builds[build.id] = build
        if (
            log_changed
            or old is None
            or (old.phase, old.message, old.resource_version)
            != (build.phase, build.message, build.resource_version)
        ):
            await self._cache_changed()

    async def _cache_changed(self) -> None:
        self.version += 1
        async with self.changed:
            self.changed.notify_all()

    # -- running -------------------------------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        """Watch, take part in the leader election, reconcile while leading (``interval``:
        seconds before a failed reconcile of a build is tried again)."""
        if self.controller is None:
            self.controller = Controller(self, retry=interval)
            self.controller.start()

    async def stop(self) -> None:
        if self.controller is not None:
            await self.controller.stop()
            self.controller = None

    async def wait_for(
        self, predicate: Callable[[], bool | Awaitable[bool]], timeout: float
    ) -> bool:
        deadline = time.monotonic() + timeout
        async with self.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(self.changed.wait(), remaining)
                except TimeoutError:
                    return False
        return True
