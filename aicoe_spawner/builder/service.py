"""The builder's core, without HTTP: submit (validate, limits, resolve, dedup), reconcile
(backend state -> record -> ImageStream), cancel, cleanup. Records are per requester; the
records of identical builds (same ``content_id``) of different requesters follow one Job
(``spec.job_id``, the build that started it). Every replica runs the same
level-triggered reconcile loop over the active records in Kubernetes (O(active builds)).
Status writes carry the resourceVersion they were decided on; on a conflict the record is
read again and the decision made again, so a cancel is never undone and a terminal phase
never changes. Logs of running builds stay in memory (read from the pod); the record keeps a
tail, written on phase changes and at most every ``log_tail_interval_seconds``, and the full
log is kept once at the end."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from kubernetes_asyncio.client.rest import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import git, repo_files
from .backends import BackendState
from .ci_config import parse_ci_configs
from .environment import build_view, wanted_files
from .quota import LimitError, QuotaLedger
from .registration import OwnershipError
from .requests import (
    BuildDefaults,
    BuildRequest,
    BuildRequestError,
    BuildSpec,
    RepoPolicy,
    RepoView,
    Resolver,
    needs_view,
    parse_build_request,
    resolve_spec,
    system_resolver,
)
from .store import TAIL_LIMIT, Build, BuildStore, Conflict, now, tail

log = logging.getLogger("aicoe_spawner.builder")

__all__ = ["BuildService", "LimitError", "Limits", "Metrics"]


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
        ledger: QuotaLedger | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.registrar = registrar
        self.policy = policy
        self.defaults = defaults
        self.limits = limits or Limits()
        self.resolver = resolver
        self.metrics = metrics or Metrics()
        self.ledger = ledger or QuotaLedger(store.core.api_client, store.namespace)
        self.builds: dict[str, Build] = {}  # active builds (and recently finished ones)
        self.log_lines: dict[str, list[str]] = {}  # running builds' logs, read from the pod
        self._log_text: dict[str, str] = {}
        self._tail_written: dict[str, float] = {}
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
        returned nor replaced. The quota is checked before the slow git work and admitted
        atomically (ledger) after it."""
        limits = self.limits
        try:  # before the slow git work; the atomic admission comes after it
            await self.ledger.precheck(user, limits.per_user, limits.total)
        except LimitError:
            self.metrics.requests.labels("limited").inc()
            raise
        commit, kind = await git.resolve_ref(request.repo, request.ref)
        ci_text = await git.read_file_at(request.repo, commit, request.ref, ".aicoe-ci.yaml")
        configs = [(ci, needs_view(request, ci)) for ci in parse_ci_configs(ci_text)]
        seen: RepoView | None = None
        if any(needed for _, needed in configs):  # detection reads the commit's files once

            def context(ci) -> str:
                return request.context_dir if request.context_dir is not None else ci.context_dir

            seen = await repo_files.read_view(
                request.repo,
                commit,
                request.ref,
                lambda paths: set().union(
                    *(wanted_files(paths, ci.overlay, context(ci)) for ci, n in configs if n)
                ),
            )
        specs = []
        for ci, needed in configs:
            view = build_view(seen, ci.overlay) if needed and seen is not None else None
            spec = resolve_spec(request, commit, kind, ci, self.defaults, user, view=view)
            spec = await self._writable(spec, request, commit, kind, ci, user, view)
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

    async def _writable(
        self, spec: BuildSpec, request, commit, kind, ci, user, view=None
    ) -> BuildSpec:
        """``spec``, or with the hashed default name when the short one is another repo's;
        OwnershipError (409) when the chosen stream is not the builder's for this repo."""
        why = await self.registrar.check(spec)
        if why is not None and spec.name_field == "repo":
            spec = resolve_spec(
                request, commit, kind, ci, self.defaults, user, hashed_name=True, view=view
            )
            why = await self.registrar.check(spec)
        if why is not None:
            self.metrics.requests.labels("refused").inc()
            raise OwnershipError(spec, why)
        return spec

    async def _followers(self, job_id: str, but: str = "") -> list[Build]:
        """The active records (other than ``but``) that follow the Job ``job_id``."""
        return [
            b
            for b in await self.store.list(active_only=True)
            if b.spec.job_id == job_id and b.id != but and b.active
        ]

    async def _submit_spec(self, spec: BuildSpec, user: str) -> tuple[int, Build]:
        """The requester's own build of ``spec``: their existing one (200); else a record of
        their own that follows the same build of another requester (200, no second Job);
        else a new build (202). An admission in the quota ledger is taken before the record
        is created and released on any failure; a record is never left behind by a refused
        (409) request."""
        limits = self.limits
        existing = await self.store.get(spec.id)
        if existing is not None and existing.phase not in ("failed", "cancelled"):
            self.metrics.requests.labels("dedup").inc()
            return 200, existing
        if existing is not None:  # the same requester retries their failed/cancelled build
            if not await self._followers(existing.spec.job_id, but=existing.id):
                await self.backend.cleanup(existing.spec)  # the Job this retry replaces
            await self.store.delete(existing.id)
            self.builds.pop(existing.id, None)
            self._forget(existing.id)
        shared = next(
            (
                b
                for b in await self.store.of_image(spec.stream, spec.tag)
                if b.spec.content_id == spec.content_id
                and b.id != spec.id
                and b.phase not in ("failed", "cancelled")
            ),
            None,
        )
        if shared is not None and shared.phase == "ready":
            return 200, await self._follow_ready(replace(spec, job_id=shared.spec.job_id), shared)
        try:
            await self.ledger.admit(
                spec.id, user, limits.per_user, limits.total, shared=shared is not None
            )
        except LimitError:
            self.metrics.requests.labels("limited").inc()
            raise
        build: Build | None = None
        try:
            if shared is not None:
                self.metrics.requests.labels("shared").inc()
                spec = replace(spec, job_id=shared.spec.job_id)
                build, created = await self.store.create(Build(spec=spec, created=now()))
                if not created:  # a parallel request created it (and holds the admission)
                    self.metrics.requests.labels("dedup").inc()
                    return 200, build
                await self._cache(build)
                return 200, build
            build, created = await self.store.create(Build(spec=spec, created=now()))
            if not created:  # a parallel request created it (and holds the admission)
                self.metrics.requests.labels("dedup").inc()
                return 200, build
            # before the build runs: a stream taken meanwhile refuses it (409)
            await self.registrar.mark(spec, "pending")
        except BaseException:
            if build is not None:  # created by this request: never left behind
                await self.store.delete(build.id)
            await self.ledger.release(spec.id)
            raise
        self.metrics.requests.labels("created").inc()
        self.metrics.builds.labels("pending").inc()
        try:
            build = await self._reconcile(build)  # creates the Job
        except Exception:
            log.exception("submitting build %s failed; the reconcile loop retries", build.id)
        await self._cache(build)
        return 202, build

    async def _follow_ready(self, spec: BuildSpec, shared: Build) -> Build:
        """A record of the requester's own for the finished build ``shared`` (same content,
        another requester): ready with the same digest and log, no Job. Removed again when
        the stream is not writable (409)."""
        self.metrics.requests.labels("shared").inc()
        build, created = await self.store.create(Build(spec=spec, created=now()))
        if not created:
            return build
        try:
            kept = await self.store.save_log(build, await self.full_log(shared))
            build = await self._write(
                build,
                lambda b: (
                    {
                        "phase": "ready",
                        "message": shared.message,
                        "started": shared.started,
                        "finished": shared.finished or now(),
                        "digest": shared.digest,
                        "submitted": True,
                        "log_tail": shared.log_tail,
                        "log_config_map": kept,
                    }
                    if b.active
                    else None
                ),
            )
            await self.registrar.ready(spec, build.digest)
        except BaseException:
            await self.store.delete(build.id)
            raise
        build = await self._finish(build)
        await self._cache(build)
        return build

    # -- reads ----------------------------------------------------------------------------

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

    async def cancel(self, build: Build) -> Build:
        """Cancel ``build``; its Job stops unless another requester's build follows it."""
        if not build.active:
            return build

        def decide(b: Build) -> dict | None:
            if not b.active:
                return None
            return {"phase": "cancelled", "message": "cancelled", "finished": now()}

        # the status first: a reconcile that finds the Job gone meanwhile can no longer
        # decide "failed" on a record that is not cancelled
        new = await self._write(build, decide)
        if new.phase == "cancelled":
            if not await self._followers(new.spec.job_id, but=new.id):
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

    async def _write(self, build: Build, decide: Callable[[Build], dict | None]) -> Build:
        """Apply ``decide(record)`` (changes, or None) with optimistic concurrency: on a
        conflict, read the record again and decide again. A terminal phase never changes."""
        for _ in range(50):
            changes = decide(build)
            if not changes or (not build.active and "phase" in changes):
                return build
            try:
                return await self.store.write_status(build, **changes)
            except Conflict:
                fresh = await self.store.get(build.id)
                if fresh is None:
                    raise
                build = fresh
        raise RuntimeError(f"build {build.id}: too many conflicting writes")

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
        if build.phase == "failed" and not text:
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
            self.version += 1
            async with self.changed:
                self.changed.notify_all()

    async def reconcile_once(self) -> None:
        builds = await self.store.list(active_only=True)
        seen = set()
        for build in builds:
            seen.add(build.id)
            log_changed = False
            try:
                before = self._log_text.get(build.id)
                build = await self._reconcile(build)
                log_changed = self._log_text.get(build.id) != before
            except Exception:
                log.exception("reconciling build %s failed", build.id)
            await self._cache(build, log_changed)
        # builds this replica still thinks active but another replica finished (or someone
        # deleted): read them once, so that event streams see the end
        for gone in [i for i, b in self.builds.items() if i not in seen and b.active]:
            fresh = await self.store.get(gone)
            if fresh is None:
                self.builds.pop(gone, None)
                self._forget(gone)
            else:
                await self._cache(fresh)
        for done in [i for i, b in self.builds.items() if i not in seen and not b.active]:
            if _seconds_since(self.builds[done].finished) > 300:
                self.builds.pop(done, None)
                self._forget(done)
        counts = {"pending": 0, "building": 0}
        for b in builds:
            if b.phase in counts:
                counts[b.phase] += 1
        for p, n in counts.items():
            self.metrics.active.labels(p).set(n)
        self.metrics.queue.set(counts["pending"])
        self.synced.set()

    async def _submit(self, build: Build) -> Build:
        """Create the build's Job (or Build) unless it exists; a refusal by the API server is
        counted, and fails the build after ``submit_attempts``."""
        spec = build.spec
        try:
            if not await self.backend.exists(spec):
                await self.backend.submit(spec)
        except ApiException as e:
            if not 400 <= (e.status or 0) < 500 or e.status in (408, 409, 429):
                raise  # unavailable, not refused: try again later
            attempts = build.submit_attempts + 1
            reason = f"{e.status} {str(e.reason or '')[:300]}"
            log.warning("build %s: the API server refused its Job (%s)", build.id, reason)

            def refused(b: Build) -> dict | None:
                if not b.active or b.submitted:
                    return None
                if attempts < self.limits.submit_attempts:
                    return {"submit_attempts": attempts}
                return {
                    "phase": "failed",
                    "message": f"the API server refused the build job {attempts} times: {reason}",
                    "finished": now(),
                    "submit_attempts": attempts,
                }

            new = await self._write(build, refused)
            if new.phase == "failed" and build.active:
                try:
                    await self.registrar.mark(spec, "failed", "the build could not be started")
                except OwnershipError as e:
                    log.warning("build %s failed; its stream is not writable: %s", build.id, e)
                self.metrics.builds.labels("failed").inc()
                new = await self._finish(new)
            return new
        new = await self._write(
            build, lambda b: {"submitted": True} if b.active and not b.submitted else None
        )
        if new.phase == "cancelled" and not await self._followers(spec.job_id, but=new.id):
            await self.backend.cleanup(spec)  # cancelled while the Job was made: take it back
        return new

    async def _reconcile(self, build: Build) -> Build:
        if not build.active:
            return await self._finish(build)  # finishing steps left half-done
        if not build.submitted:
            build = await self._submit(build)
            if not build.active or not build.submitted:
                return build
        spec = build.spec
        state = await self.backend.state(spec)
        if state.log is not None:
            self._remember_log(build.id, state.log)
        if state.phase == "pending" and not await self.backend.exists(spec):
            state = BackendState(
                "failed",
                "the build job is gone before its result was read (deleted, or expired while "
                "the builder was down); submit the build again",
            )
        try:
            if state.phase == "building" and build.phase == "pending":
                # the catalog says building once the build runs (pending until then)
                await self.registrar.mark(spec, "building")
            elif state.phase == "ready":
                await self.registrar.ready(spec, state.digest, state.software, state.dependencies)
            elif state.phase == "failed":
                await self.registrar.mark(spec, "failed", state.message)
        except OwnershipError as e:
            # the stream was taken meanwhile: this build may not write it
            log.warning("build %s: %s", build.id, e)
            running = state.phase in ("pending", "building")
            if running and not await self._followers(spec.job_id, but=build.id):
                await self.backend.cancel(spec)
            state = BackendState("failed", str(e))
        text = self._log_text.get(build.id) or ""
        terminal = state.phase in ("ready", "failed", "cancelled")
        kept = ""
        if terminal:
            final = text or (state.message if state.phase == "failed" else "")
            kept = await self.store.save_log(build, final)
        clock = time.monotonic()

        def decide(b: Build) -> dict | None:
            if not b.active:
                return None
            changes: dict = {}
            if state.phase != b.phase:
                changes["phase"] = state.phase
                changes["message"] = state.message
                if state.phase == "building" and not b.started:
                    changes["started"] = now()
                if terminal:
                    changes["finished"] = now()
                    changes["log_config_map"] = kept
                    if not b.started:
                        changes["started"] = changes["finished"]
            if state.phase == "ready" and state.digest != b.digest:
                changes["digest"] = state.digest
            new_tail = tail(text, TAIL_LIMIT) if text else b.log_tail
            if new_tail != b.log_tail and (
                changes
                or clock - self._tail_written.get(b.id, 0.0)
                >= self.limits.log_tail_interval_seconds
            ):
                changes["log_tail"] = new_tail
            return changes or None

        new = await self._write(build, decide)
        if "log_tail" in _changed(build, new):
            self._tail_written[build.id] = clock
        if new.phase != build.phase:
            self.metrics.builds.labels(new.phase).inc()
            if new.phase in ("ready", "failed"):
                self.metrics.duration.observe(max(0.0, _seconds_since(new.created)))
            log.info("build %s (%s): %s -> %s", new.id, spec.image, build.phase, new.phase)
        if not new.active:
            new = await self._finish(new)
        return new

    # -- cleanup -------------------------------------------------------------------------

    async def cleanup_once(self) -> dict[str, list]:
        """Expired branch images (spec and status tags, a stream left empty, and the records
        of their builds), records past their retention, finished build Jobs/Builds past
        theirs, old webhook deliveries and stale quota admissions. Safe to run on every
        replica at once (deletes of what is gone are no-ops). Reads the active records and
        the metadata of finished ones, never the whole history."""
        namespace = self.store.namespace
        removed = await self.registrar.expire(namespace)
        deleted_records = []
        retention = self.limits.record_retention_seconds
        doomed: dict[str, Build | None] = {}
        for r in removed:  # the records of expired tags: a rebuild really rebuilds
            if r["tag"]:
                for build in await self.store.of_image(r["stream"], r["tag"]):
                    if not build.active:
                        doomed[build.id] = build
        for build_id, finished in await self.store.finished_ids():  # metadata only
            if finished and _seconds_since(finished) > retention:
                doomed.setdefault(build_id, None)
        records = await self.store.list(active_only=True)
        active_jobs = {b.spec.job_id for b in records if b.active}
        for build_id, build in doomed.items():
            build = build or await self.store.get(build_id)
            if build is None or build.active:
                continue
            if build.spec.job_id not in active_jobs:  # no active build follows its Job
                await self.backend.cleanup(build.spec)
            await self.store.delete(build.id)
            self.builds.pop(build.id, None)
            self._forget(build.id)
            deleted_records.append(build.id)
        active = {b.id for b in records if b.active}
        deleted_objects = []
        for name, finished in await self.backend.finished_objects(namespace):
            if name.removeprefix("imgbuild-") in active_jobs:
                continue  # reconcile has not read its result yet
            if _seconds_since_any(finished) > self.limits.cleanup_after_seconds:
                await self.backend.delete_object(namespace, name)
                deleted_objects.append(name)
        pruned = await self.ledger.prune(active, self.limits.quota_grace_seconds)
        deliveries = await self.store.expire_deliveries(retention)
        if removed or deleted_objects or deleted_records or pruned or deliveries:
            log.info(
                "cleanup: expired %s; deleted records %s and build objects %s; "
                "pruned admissions %s; forgot %d webhook deliveries",
                [f"{r['stream']}:{r['tag']}" if r["tag"] else r["stream"] for r in removed],
                deleted_records,
                deleted_objects,
                pruned,
                len(deliveries),
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


def _changed(old: Build, new: Build) -> set[str]:
    return {
        f for f in ("phase", "message", "log_tail", "digest") if getattr(old, f) != getattr(new, f)
    }
