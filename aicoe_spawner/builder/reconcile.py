"""Reconciling builds (part of :class:`.service.BuildService`): read what the backend's
objects say, apply the pure rules of :mod:`.transitions`, write the record (optimistic
concurrency) and the catalog. :meth:`Reconciling.reconcile_one` is one build's step, which the
leader's work queue (:mod:`.controller`) runs whenever a watch reports a change;
:meth:`Reconciling.reconcile_once` is every active build's (the periodic resync)."""

from __future__ import annotations

import logging
import time

from kubernetes_asyncio.client.rest import ApiException

from . import transitions as rules
from .imagestream import OwnershipError
from .store import Build
from .transitions import Clock
from .vocabulary import BuildPhase, seconds_since

log = logging.getLogger("aicoe_spawner.builder")


class Reconciling:
    """The reconcile half of :class:`.service.BuildService` (a mixin: its state is the
    service's)."""

    async def _followers(self, job_id: str, but: str = "") -> list[Build]:
        """The active records (other than ``but``) that follow the Job ``job_id``."""
        return [
            b
            for b in await self.store.list(active_only=True)
            if b.spec.job_id == job_id and b.id != but and b.active
        ]

    async def reconcile_one(self, build_id: str) -> Build | None:
        """Reconcile one build from its current record (None: there is none any more)."""
        build = await self.store.get(build_id)
        if build is None:
            self.builds.pop(build_id, None)
            self._forget(build_id)
            return None
        before = self._log_text.get(build_id)
        try:
            build = await self._reconcile(build)
        finally:
            await self._cache(build, self._log_text.get(build_id) != before)
        return build

    def count_active(self) -> None:
        """The gauges of active builds, from what this replica knows."""
        counts = {"pending": 0, "building": 0}
        for b in self.builds.values():
            if b.active and b.phase in counts:
                counts[b.phase] += 1
        for p, n in counts.items():
            self.metrics.active.labels(p).set(n)
        self.metrics.queue.set(counts["pending"])

    def prune(self, keep: set[str] = frozenset()) -> None:
        """Forget the finished builds held long enough (:func:`.transitions.forget_cached`)."""
        for done in [i for i, b in self.builds.items() if i not in keep and not b.active]:
            if rules.forget_cached(self.builds[done]):
                self.builds.pop(done, None)
                self._forget(done)

    async def reconcile_once(self) -> None:
        """Every active build, then what this replica still held active (the resync)."""
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
        self.prune(seen)
        self.count_active()
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
        followed = build.id in self.log_followed  # the leader streams its log
        state = await (
            self.backend.state(spec, with_log=False) if followed else self.backend.state(spec)
        )
        if state.log is not None:
            self._remember_log(build.id, state.log)
        if rules.must_exist(state):
            state = rules.job_gone(state, await self.backend.exists(spec))
        if followed and rules.is_terminal(state):  # the end the stream may not have reached
            self.log_followed.discard(build.id)  # from here on, the stream's text is stale
            text = await self.backend.read_log(spec)
            if text is not None:
                self._remember_log(build.id, text)
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

        def entered(new: Build, previous: str) -> None:
            # counted by the replica whose write made the change: a reconcile that lost the
            # race (the submitting replica's and the leader's) finds it made and counts nothing
            self.metrics.builds.labels(new.phase).inc()
            if new.phase in (BuildPhase.READY, BuildPhase.FAILED):
                self.metrics.duration.observe(max(0.0, seconds_since(new.created)))
            log.info("build %s (%s): %s -> %s", new.id, spec.image, previous, new.phase)

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
            entered,
        )
        if "log_tail" in _changed(build, new):
            self._tail_written[build.id] = clock.monotonic
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


def _changed(old: Build, new: Build) -> set[str]:
    return {
        f for f in ("phase", "message", "log_tail", "digest") if getattr(old, f) != getattr(new, f)
    }
