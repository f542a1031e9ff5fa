"""Submitting builds (part of :class:`.service.BuildService`): validate and resolve a request,
hold the requester's place in the quota ledger while git works, check who may publish where,
then deduplicate (the requester's own build, another requester's identical one) or create the
record and its Job. Webhook deliveries are claimed once across replicas (:meth:`submit_once`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from . import git, repo_files
from . import transitions as rules
from .ci_config import parse_ci_configs
from .environment import build_view, wanted_files
from .imagestream import ANOTHER_REPO, OwnershipError, PublishError, ownership
from .publish import content_options, is_webhook, refusal
from .quota import LimitError
from .requests import (
    BuildRequest,
    BuildRequestError,
    BuildSpec,
    RepoView,
    needs_view,
    parse_build_request,
    resolve_spec,
)
from .store import Build
from .transitions import Clock
from .vocabulary import BuildPhase, now

log = logging.getLogger("aicoe_spawner.builder")
T = TypeVar("T")


class Redelivery(Exception):
    """:meth:`Submission.submit_once`: the delivery was handled before (``build``: the
    build it started, None when it started none or that one is gone)."""

    def __init__(self, build: Build | None) -> None:
        super().__init__("delivered before")
        self.build = build


class Submission:
    """The submit half of :class:`.service.BuildService` (a mixin: its state is the
    service's)."""

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
