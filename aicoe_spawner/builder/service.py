"""The builder's core, without HTTP: submit (validate, resolve, dedup, limits), reconcile
(backend state -> record -> ImageStream), cancel, cleanup. Every replica runs the same
reconcile loop over the records in Kubernetes; all writes are idempotent."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import git
from .ci_config import parse_ci_configs
from .registration import OwnershipError
from .requests import (
    BuildDefaults,
    BuildRequest,
    BuildRequestError,
    BuildSpec,
    RepoPolicy,
    Resolver,
    parse_build_request,
    resolve_spec,
    system_resolver,
)
from .store import Build, BuildStore, now

log = logging.getLogger("aicoe_spawner.builder")


class LimitError(BuildRequestError):
    def __init__(self, why: str) -> None:
        super().__init__("limit", why, 429)


@dataclass
class Limits:
    per_user: int = 2
    total: int = 10
    branch_ttl_seconds: int = 0  # 0 = images built from branches never expire
    cleanup_after_seconds: int = 600  # finished Jobs/pods (Builds) are deleted after this
    cleanup_interval_seconds: float = 60.0  # how often the periodic cleanup runs


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


def _seconds_since(stamp: str) -> float:
    try:
        t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return 0.0
    return (datetime.datetime.now(datetime.UTC) - t).total_seconds()


def _seconds_since_any(stamp: str) -> float:
    """Seconds since an API server timestamp (``...Z`` with or without fractions)."""
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            t = datetime.datetime.strptime(stamp, fmt).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
        return (datetime.datetime.now(datetime.UTC) - t).total_seconds()
    return 0.0


class BuildService:
    def __init__(
        self,
        store: BuildStore,
        backend,
        registrar,
        *,
        policy: RepoPolicy,
        defaults: BuildDefaults,
        limits: Limits | None = None,
        resolver: Resolver = system_resolver,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.registrar = registrar
        self.policy = policy
        self.defaults = defaults
        self.limits = limits or Limits()
        self.resolver = resolver
        self.metrics = metrics or Metrics()
        self.builds: dict[str, Build] = {}  # cache of the records, refreshed by reconcile
        self.version = 0
        self.changed = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self.synced = asyncio.Event()

    # -- submit ------------------------------------------------------------------------------

    async def submit(self, body, user: str) -> tuple[int, Build]:
        """(200 existing | 202 new, build); raises BuildRequestError (4xx)."""
        request = parse_build_request(body, self.policy, self.resolver)
        return await self.submit_request(request, user)

    async def submit_request(self, request: BuildRequest, user: str) -> tuple[int, Build]:
        """:meth:`submit_all`, answering with the first image's build."""
        status, builds = await self.submit_all(request, user)
        return status, builds[0]

    async def submit_all(self, request: BuildRequest, user: str) -> tuple[int, list[Build]]:
        """One build per image of the repo (one per ``.aicoe-ci.yaml`` overlay): 202 when one
        was created, else 200 with the existing ones. ``user`` is the requester identity
        (see :mod:`.identity`); builds are per requester, so another user's build is never
        returned nor replaced."""
        commit, kind = await git.resolve_ref(request.repo, request.ref)
        ci_text = await git.read_file_at(request.repo, commit, request.ref, ".aicoe-ci.yaml")
        specs = []
        for ci in parse_ci_configs(ci_text):
            spec = resolve_spec(request, commit, kind, ci, self.defaults, user)
            spec = await self._writable(spec, request, commit, kind, ci, user)
            validate = getattr(self.backend, "validate", None)
            if validate is not None:
                validate(spec)  # BuildRequestError (400) for what this backend cannot build
            specs.append(spec)
        if len({(s.stream, t) for s in specs for t in (s.tag, *s.extra_tags)}) < sum(
            1 + len(s.extra_tags) for s in specs
        ):
            raise BuildRequestError(
                ".aicoe-ci.yaml overlays", "two overlays name the same image stream and tag"
            )
        results = [await self._submit_spec(spec, user) for spec in specs]
        status = 202 if any(code == 202 for code, _ in results) else 200
        return status, [build for _, build in results]

    async def _writable(self, spec: BuildSpec, request, commit, kind, ci, user) -> BuildSpec:
        """``spec``, or with the hashed default name when the short one is another repo's;
        OwnershipError (409) when the chosen stream is not the builder's for this repo."""
        why = await self.registrar.check(spec)
        if why is not None and spec.name_field == "repo":
            spec = resolve_spec(request, commit, kind, ci, self.defaults, user, hashed_name=True)
            why = await self.registrar.check(spec)
        if why is not None:
            self.metrics.requests.labels("refused").inc()
            raise OwnershipError(spec, why)
        return spec

    async def _submit_spec(self, spec: BuildSpec, user: str) -> tuple[int, Build]:
        """The requester's own build of ``spec``: their existing one (200); else a record of
        their own that follows the same build of another requester (200, no second Job);
        else a new build (202)."""
        existing = await self.store.get(spec.id)
        if existing is not None and existing.phase not in ("failed", "cancelled"):
            self.metrics.requests.labels("dedup").inc()
            return 200, existing
        if existing is not None:  # the same requester retries their failed/cancelled build
            await self.store.delete(existing.id)
        records = await self.store.list()
        shared = next(
            (
                b
                for b in records
                if b.spec.content_id == spec.content_id and b.phase not in ("failed", "cancelled")
            ),
            None,
        )
        active = [b for b in records if b.active]
        mine = [b for b in active if b.spec.requester == user]
        if len(mine) >= self.limits.per_user:
            self.metrics.requests.labels("limited").inc()
            raise LimitError(
                f"{user} has {len(mine)} builds running (limit {self.limits.per_user}); "
                "wait for one to finish or cancel one"
            )
        if shared is None and len(active) >= self.limits.total:
            self.metrics.requests.labels("limited").inc()
            raise LimitError(
                f"{len(active)} builds are running (service limit {self.limits.total}); retry later"
            )
        if shared is not None:
            return 200, await self._follow(replace(spec, job_id=shared.spec.job_id), shared)
        build, created = await self.store.create(Build(spec=spec, created=now()))
        if not created:
            self.metrics.requests.labels("dedup").inc()
            return 200, build
        try:
            # before the build runs: a stream taken meanwhile refuses it (409)
            await self.registrar.mark(spec, "building")
        except OwnershipError:
            await self.store.delete(build.id)
            raise
        self.metrics.requests.labels("created").inc()
        self.metrics.builds.labels("pending").inc()
        if existing is not None or await self.backend.exists(spec):
            await self.backend.cleanup(spec)  # the failed Job this retry replaces
        await self.backend.submit(spec)
        await self._cache(build)
        return 202, build

    async def _follow(self, spec: BuildSpec, shared: Build) -> Build:
        """A record of the requester's own for the build ``shared`` (same content, another
        requester): it follows the same Job, or is ready with the same digest."""
        self.metrics.requests.labels("shared").inc()
        if shared.phase == "ready":
            build = Build(
                spec=spec,
                phase="ready",
                created=now(),
                started=shared.started,
                finished=shared.finished,
                digest=shared.digest,
                log=shared.log,
            )
        else:
            build = Build(spec=spec, created=now())
        build, _ = await self.store.create(build)
        if build.phase == "ready":
            await self.registrar.ready(spec, build.digest)
        await self._cache(build)
        return build

    # -- reads ----------------------------------------------------------------------------

    async def get(self, build_id: str) -> Build | None:
        return await self.store.get(build_id)

    async def cancel(self, build: Build) -> Build:
        """Cancel ``build``; its Job stops unless another requester's build follows it."""
        if not build.active:
            return build
        others = [
            b
            for b in await self.store.list(active_only=True)
            if b.spec.job_id == build.spec.job_id and b.id != build.id
        ]
        if not others:
            await self.backend.cancel(build.spec)
        build = await self.store.update(
            build, phase="cancelled", message="cancelled", finished=now()
        )
        try:
            if not others:
                await self.registrar.mark(build.spec, "cancelled")
        except OwnershipError as e:
            log.warning("build %s cancelled; its stream is not writable: %s", build.id, e)
        self.metrics.builds.labels("cancelled").inc()
        await self._cache(build)
        return build

    # -- reconcile -----------------------------------------------------------------------

    async def _cache(self, build: Build) -> None:
        old = self.builds.get(build.id)
        self.builds[build.id] = build
        if old is None or (old.phase, old.log, old.message) != (
            build.phase,
            build.log,
            build.message,
        ):
            self.version += 1
            async with self.changed:
                self.changed.notify_all()

    async def reconcile_once(self) -> None:
        builds = await self.store.list()
        seen = set()
        for build in builds:
            seen.add(build.id)
            try:
                build = await self._reconcile(build)
            except Exception:
                log.exception("reconciling build %s failed", build.id)
            await self._cache(build)
        for gone in set(self.builds) - seen:
            self.builds.pop(gone, None)
        by_phase = {p: 0 for p in ("pending", "building", "ready", "failed", "cancelled")}
        for b in self.builds.values():
            by_phase[b.phase] = by_phase.get(b.phase, 0) + 1
        for p, n in by_phase.items():
            self.metrics.active.labels(p).set(n)
        self.metrics.queue.set(by_phase["pending"])
        self.synced.set()

    async def _reconcile(self, build: Build) -> Build:
        if not build.active:
            if (
                build.finished
                and _seconds_since(build.finished) > self.limits.cleanup_after_seconds
            ):
                if await self.backend.exists(build.spec):
                    await self.backend.cleanup(build.spec)
            return build
        if build.phase == "pending" and not await self.backend.exists(build.spec):
            # the replica that created the record died before the Job: create it
            await self.backend.submit(build.spec)
        state = await self.backend.state(build.spec)
        changes: dict = {}
        if state.log is not None and state.log != build.log:
            changes["log"] = state.log
        if state.phase != build.phase:
            changes["phase"] = state.phase
            changes["message"] = state.message
            if state.phase == "building" and not build.started:
                changes["started"] = now()
            if state.phase in ("ready", "failed"):
                changes["finished"] = now()
                if not build.started:
                    changes["started"] = changes["finished"]
                if state.phase == "failed" and not (state.log or build.log):
                    changes["log"] = state.message
        if state.phase == "ready":
            await self.registrar.ready(build.spec, state.digest)
            changes["digest"] = state.digest
        elif state.phase == "failed":
            await self.registrar.mark(build.spec, "failed", state.message)
        if not changes:
            return build
        new = await self.store.update(build, **changes)
        if "phase" in changes:
            self.metrics.builds.labels(new.phase).inc()
            if new.phase in ("ready", "failed"):
                self.metrics.duration.observe(max(0.0, _seconds_since(new.created)))
            log.info("build %s (%s): %s -> %s", new.id, new.spec.image, build.phase, new.phase)
        return new

    # -- cleanup -------------------------------------------------------------------------

    async def cleanup_once(self) -> dict[str, list]:
        """Expired branch images (spec and status tags, a stream left empty, and the records
        of their builds) and finished build Jobs/Builds past their retention. Safe to run on
        every replica at once (deletes of what is gone are no-ops)."""
        namespace = self.store.namespace
        removed = await self.registrar.expire(namespace)
        records = await self.store.list()
        deleted_records = []
        expired_tags = {(r["stream"], r["tag"]) for r in removed if r["tag"]}
        for build in records:
            if build.active or (build.spec.stream, build.spec.tag) not in expired_tags:
                continue
            await self.backend.cleanup(build.spec)
            await self.store.delete(build.id)
            self.builds.pop(build.id, None)
            deleted_records.append(build.id)
        active = {b.spec.job_id for b in records if b.active}
        deleted_objects = []
        for name, finished in await self.backend.finished_objects(namespace):
            if name.removeprefix("imgbuild-") in active:
                continue  # reconcile has not read its result yet
            if _seconds_since_any(finished) > self.limits.cleanup_after_seconds:
                await self.backend.delete_object(namespace, name)
                deleted_objects.append(name)
        if removed or deleted_objects:
            log.info(
                "cleanup: expired %s; deleted records %s and build objects %s",
                [f"{r['stream']}:{r['tag']}" if r["tag"] else r["stream"] for r in removed],
                deleted_records,
                deleted_objects,
            )
        return {"expired": removed, "records": deleted_records, "objects": deleted_objects}

    async def run(self, interval: float = 1.0) -> None:
        last_cleanup = 0.0
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile failed; retrying")
            if time.monotonic() - last_cleanup >= self.limits.cleanup_interval_seconds:
                last_cleanup = time.monotonic()
                try:
                    await self.cleanup_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("cleanup failed; retrying later")
            await asyncio.sleep(interval)

    def start(self, interval: float = 1.0) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(interval), name="builder-reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

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
