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

from kubernetes_asyncio.client.rest import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import git, repo_files
from . import transitions as rules
from .backends.base import Backend
from .ci_config import parse_ci_configs
from .environment import build_view, wanted_files
from .kube import retry_on_conflict
from .publish import content_options, is_webhook, publisher_of, refusal
from .quota import LimitError, QuotaLedger
from .registration import ANOTHER_REPO, OwnershipError, PublishError, ownership, tag_names
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
from .store import Build, BuildStore, Conflict
from .transitions import Clock
from .vocabulary import BuildPhase, job_id_of, now, seconds_since

log = logging.getLogger("aicoe_spawner.builder")
T = TypeVar("T")

__all__ = ["BuildObserver", "BuildService", "LimitError", "Limits", "Metrics", "Redelivery"]


class BuildObserver(Protocol):
    """Told of every phase a build enters (``previous`` "" for a new build), once: by the
    replica whose status write made the change. Runs in the background; its errors are
    logged (e.g. :class:`~aicoe_spawner.builder.github.GitHubReporter`)."""

    async def build_changed(self, build: Build, previous: str) -> None: ...


class Redelivery(Exception):
    """:meth:`BuildService.submit_once`: the delivery was handled before (``build``: the
    build it started, None when it started none or that one is gone)."""

    def __init__(self, build: Build | None) -> None:
        super().__init__("delivered before")
        self.build = build


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


class BuildService:
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
        git.configure(policy, resolver)  # the addresses git may connect to
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
        self._task: asyncio.Task | None = None
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

    # -- submit ------------------------------------------------------------------------------

    async def submit(self, body, user: str) -> tuple[int, Build]:
        """(200 existing | 202 new, build); raises BuildRequestError (4xx)."""
        request = parse_build_request(body, self.policy, self.resolver)
        return await self.submit_request(request, user)

    async def submit_request(self, request: BuildRequest, user: str) -> tuple[int, Build]:
        """:meth:`submit_all`, answering with the first image's build."""
        status, builds = await self.submit_all(request, user)
        return status, builds[0]

    async def submit_all(
        self, request: BuildRequest, user: str, *, admin: bool = False
    ) -> tuple[int, list[Build]]:
        """One build per image of the repo (one per ``.aicoe-ci.yaml`` overlay): 202 when one
        was created, else 200 with the existing ones. ``user`` is the requester identity
        (see :mod:`.identity`); builds are per requester, so another user's build is never
        returned nor replaced. Who may publish what to an existing stream: :mod:`.publish`
        (``admin``: a builder admin, who may publish anything). The request counts against
        the requester's limit from before its git work (429 before any git process starts)
        until it ends; builds are admitted atomically (ledger) after it. The same request of
        the same requester while one is in progress on this replica waits for that one's
        answer (200), taking no place of its own (a double submit)."""
        key = (user, request, admin)
        first = self._in_progress.get(key)
        if first is not None:
            _, builds = await asyncio.shield(first)
            return 200, builds
        first = self._in_progress[key] = asyncio.get_running_loop().create_future()
        try:
            result = await self._submit_held(request, user, admin)
        except asyncio.CancelledError:
            first.cancel()
            raise
        except BaseException as e:
            first.set_exception(e)
            first.exception()  # retrieved: nobody need wait for it
            raise
        finally:
            del self._in_progress[key]
        first.set_result(result)
        return result

    async def _submit_held(
        self, request: BuildRequest, user: str, admin: bool
    ) -> tuple[int, list[Build]]:
        limits = self.limits
        try:
            slot = await self.ledger.hold(user, limits.per_user, limits.total)
        except LimitError:
            self.metrics.requests.labels("limited").inc()
            raise
        try:
            return await self._submit_all(request, user, admin)
        finally:
            await self.ledger.free(slot)

    async def _submit_all(
        self, request: BuildRequest, user: str, admin: bool
    ) -> tuple[int, list[Build]]:
        commit, kind = await git.resolve_ref(request.repo, request.ref)
        ci_text = await git.read_file_at(request.repo, commit, request.ref, ".aicoe-ci.yaml")
        # the repository's defaults (publish rule) may need detection where the request not
        plain = replace(request, strategy=None, dockerfile=None, context_dir=None, base_image=None)
        configs = [
            (ci, needs_view(request, ci) or needs_view(plain, ci))
            for ci in parse_ci_configs(ci_text)
        ]
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
        rights = admin or is_webhook(user)
        new_streams = 0
        for ci, needed in configs:
            view = build_view(seen, ci.overlay) if needed and seen is not None else None
            spec = resolve_spec(request, commit, kind, ci, self.defaults, user, view=view)
            spec = replace(spec, publisher_rights=rights)
            reference = content_options(
                resolve_spec(plain, commit, kind, ci, self.defaults, user, view=view)
            )
            spec, created = await self._writable(
                spec, request, commit, kind, ci, user, reference, view
            )
            if created and not admin:
                new_streams += 1
                await self._check_stream_limit(user, new_streams)
            self.backend.validate(spec)  # BuildRequestError (400): this backend cannot build it
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
        self,
        spec: BuildSpec,
        request,
        commit,
        kind,
        ci,
        user,
        reference: dict[str, str],
        view=None,
    ) -> tuple[BuildSpec, bool]:
        """(``spec``, or with the hashed default name when the short one is another repo's;
        whether it creates its stream). OwnershipError (409) when the chosen stream is not
        the builder's for this repo; PublishError (409 naming the option) when its requester
        may not publish this content there (:func:`.publish.refusal`, against the
        repository's defaults ``reference`` for tags that record no options)."""
        stream = await self.registrar.read(spec)
        why = ownership(stream, spec.repo)
        # a default name, or a registry-project whose prefix (the default name) another
        # repository has: the hashed default name
        if why is not None and (
            spec.name_field == "repo" or (spec.name_field != "name" and why == ANOTHER_REPO)
        ):
            spec = replace(
                resolve_spec(
                    request, commit, kind, ci, self.defaults, user, hashed_name=True, view=view
                ),
                publisher_rights=spec.publisher_rights,
            )
            stream = await self.registrar.read(spec)
            why = ownership(stream, spec.repo)
        if why is not None:
            self.metrics.requests.labels("refused").inc()
            raise OwnershipError(spec, why)
        refused = refusal(stream, spec, reference)
        if refused is not None:
            self.metrics.requests.labels("refused").inc()
            raise PublishError(refused)
        return spec, stream is None

    async def _check_stream_limit(self, user: str, adding: int) -> None:
        """LimitError (429) when ``adding`` more streams would exceed what ``user`` may have
        published (``Limits.image_streams_per_user``)."""
        limit = self.limits.image_streams_per_user
        if limit <= 0:
            return
        have = await self.registrar.published(self.defaults.namespace, user)
        if have + adding > limit:
            self.metrics.requests.labels("limited").inc()
            raise LimitError(
                f"{user} has published {have} image streams (limit {limit}); a build that "
                "makes a new one waits until an image of theirs is removed (or rebuild one "
                "of theirs)"
            )

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
        if rules.reusable(existing):
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
                if b.spec.content_id == spec.content_id and b.id != spec.id and rules.reusable(b)
            ),
            None,
        )
        if shared is not None and shared.phase == BuildPhase.READY:
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
                self._notify(build, "")
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
        self._notify(build, "")
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
            clock = Clock.now(time.monotonic())
            build = await self._write(build, lambda b: rules.follow_ready(b, shared, kept, clock))
            await self.registrar.ready(spec, build.digest)
        except BaseException:
            await self.store.delete(build.id)
            raise
        build = await self._finish(build)
        await self._cache(build)
        return build

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
        """The log of ``build`` by lines: a running build's as read so far (memory; none
        before this replica read it), a finished build's kept log."""
        if build.active:
            return self.log_lines.get(build.id) or []
        return (await self.full_log(build)).splitlines()

    async def wait_changed(self, timeout: float) -> bool:
        """Wait until a build this replica follows changes (phase, message, record version or
        log); False after ``timeout`` seconds without one."""
        since = self.version
        return await self.wait_for(lambda: self.version != since, timeout)

    async def submit_once(self, keys: list[str], submit: Callable[[], Awaitable[T]]) -> T:
        """Run ``submit()`` unless one of ``keys`` (a delivery id, a body's hash) was seen
        before, across replicas and restarts: then :class:`Redelivery`. A ``submit()`` that
        fails leaves the keys unclaimed (a redelivery may try again); its answer
        ``(status, builds)`` binds them to the first build, any other answer (handled
        without a build) keeps them unbound."""
        claimed: list[str] = []
        for key in keys:
            first, seen_build = await self.store.claim_delivery(key)
            if not first:
                for k in claimed:
                    await self.store.release_delivery(k)
                raise Redelivery(await self.record(seen_build) if seen_build else None)
            claimed.append(key)
        try:
            answer = await submit()
        except BaseException:
            for k in claimed:
                await self.store.release_delivery(k)
            raise
        if isinstance(answer, tuple):
            _, builds = answer
            for k in claimed:
                await self.store.bind_delivery(k, builds[0].id)
        return answer

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

    async def _write(self, build: Build, decide: Callable[[Build], dict | None]) -> Build:
        """Apply ``decide(record)`` (changes, or None) with optimistic concurrency: on a
        conflict, read the record again and decide again. A terminal phase never changes."""
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
            if rules.forget_cached(self.builds[done]):
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
            if not rules.is_refusal(e.status):
                raise  # unavailable, not refused: try again later
            attempts = build.submit_attempts + 1
            reason = f"{e.status} {str(e.reason or '')[:300]}"
            log.warning("build %s: the API server refused its Job (%s)", build.id, reason)
            clock = Clock.now(time.monotonic())
            limit = self.limits.submit_attempts
            new = await self._write(
                build, lambda b: rules.refused(b, attempts, limit, reason, clock)
            )
            if new.phase == BuildPhase.FAILED and build.active:
                try:
                    await self.registrar.mark(spec, "failed", "the build could not be started")
                except OwnershipError as e:
                    log.warning("build %s failed; its stream is not writable: %s", build.id, e)
                self.metrics.builds.labels("failed").inc()
                new = await self._finish(new)
            return new
        new = await self._write(build, rules.submitted)
        if new.phase == BuildPhase.CANCELLED and not await self._followers(spec.job_id, but=new.id):
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
        if rules.must_exist(state):
            state = rules.job_gone(state, await self.backend.exists(spec))
        try:
            await self._tell_catalog(build, state)
        except OwnershipError as e:
            # the stream was taken meanwhile: this build may not write it
            log.warning("build %s: %s", build.id, e)
            if rules.is_running(state) and not await self._followers(spec.job_id, but=build.id):
                await self.backend.cancel(spec)
            state = rules.lost_stream(str(e))
        text = self._log_text.get(build.id) or ""
        kept = ""
        if rules.is_terminal(state):
            kept = await self.store.save_log(build, rules.final_log(text, state))
        clock = Clock.now(time.monotonic())
        written = self._tail_written.get(build.id, 0.0)
        interval = self.limits.log_tail_interval_seconds
        new = await self._write(
            build,
            lambda b: rules.observe(
                b,
                state,
                text=text,
                kept=kept,
                clock=clock,
                tail_written=written,
                tail_interval=interval,
            ),
        )
        if "log_tail" in _changed(build, new):
            self._tail_written[build.id] = clock.monotonic
        if new.phase != build.phase:
            self.metrics.builds.labels(new.phase).inc()
            if new.phase in (BuildPhase.READY, BuildPhase.FAILED):
                self.metrics.duration.observe(max(0.0, seconds_since(new.created)))
            log.info("build %s (%s): %s -> %s", new.id, spec.image, build.phase, new.phase)
        if not new.active:
            new = await self._finish(new)
        return new

    async def _tell_catalog(self, build: Build, state) -> None:
        """Apply :func:`.transitions.catalog_update` (OwnershipError when the stream is not
        the build's to write)."""
        update = rules.catalog_update(build, state)
        if update is None:
            return
        if update.kind == "ready":
            await self.registrar.ready(build.spec, state.digest, state.software, state.dependencies)
        else:
            await self.registrar.mark(build.spec, update.phase, update.message)

    # -- cleanup -------------------------------------------------------------------------

    async def cleanup_once(self) -> dict[str, list]:
        """Expired branch images (spec and status tags, a stream left empty, and the records
        of their builds), streams that never served an image and no active build writes
        (past the quota grace), records past their retention, finished build Jobs/Builds past
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
            if rules.record_expired(finished, retention):
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
            if job_id_of(name) in active_jobs:
                continue  # reconcile has not read its result yet
            if rules.object_expired(finished, self.limits.cleanup_after_seconds):
                await self.backend.delete_object(namespace, name)
                deleted_objects.append(name)
        pruned = await self.ledger.prune(active, self.limits.quota_grace_seconds)
        written = {(b.spec.stream, t) for b in records if b.active for t in tag_names(b.spec)}
        swept = await self.registrar.sweep(namespace, written, self.limits.quota_grace_seconds)
        deliveries = await self.store.expire_deliveries(retention)
        if removed or deleted_objects or deleted_records or pruned or deliveries or swept:
            log.info(
                "cleanup: expired %s; deleted records %s and build objects %s; "
                "pruned admissions %s; forgot %d webhook deliveries; removed streams that "
                "never served an image %s",
                [f"{r['stream']}:{r['tag']}" if r["tag"] else r["stream"] for r in removed],
                deleted_records,
                deleted_objects,
                pruned,
                len(deliveries),
                swept,
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
