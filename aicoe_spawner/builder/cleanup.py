"""Cleanup (part of :class:`.service.BuildService`; the leader runs it periodically)."""

from __future__ import annotations

import logging

from . import transitions as rules
from .imagestream import tag_names
from .store import Build
from .vocabulary import job_id_of

log = logging.getLogger("aicoe_spawner.builder")


class Cleanup:
    """Retention and expiry (a mixin of :class:`.service.BuildService`)."""

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
