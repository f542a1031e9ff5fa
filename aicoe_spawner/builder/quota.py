"""Admission of active builds, atomic across concurrent requests and builder replicas.

One ConfigMap (``aicoe-image-builder-quota``) lists the admitted, not yet finished builds
(``{build id: [requester, admitted at]}``, plus ``"shared"`` for a build that follows another
requester's Job: it counts for its requester, not for the service-wide limit of Jobs).
Admitting reads it, counts, and writes it back on the condition that it is still the version
read (resourceVersion): of two requests racing for the last slot, one write wins and the other
re-reads and is refused. A build leaves the ledger when it finishes; entries whose record never
appeared or is no longer active are pruned.

A request in its git phase (resolving the ref, reading the repository) counts for its
requester too: :meth:`QuotaLedger.git_phase` refuses it (429) before any git process starts
when the requester's builds and requests in progress, on this replica (counted in memory,
no API call) and on every replica (an entry ``[requester, at, "git"]`` in the ledger, which
counts for the requester only), reach the limit; the entry goes when the phase ends."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from .backends.kubernetes import MANAGED_BY
from .requests import BuildRequestError

log = logging.getLogger("aicoe_spawner.builder.quota")

NAME = "aicoe-image-builder-quota"
KEY = "active.json"
ATTEMPTS = 200
GIT = "git"  # the kind of a ledger entry for a request in its git phase


class LimitError(BuildRequestError):
    def __init__(self, why: str) -> None:
        super().__init__("limit", why, 429)


def check(
    entries: dict[str, list], user: str, per_user: int, total: int, shared: bool = False
) -> None:
    """Raise :class:`LimitError` when one more build of ``user`` would exceed a limit (a
    ``shared`` build, which starts no Job of its own, only the requester's)."""
    mine = [entry for entry in entries.values() if entry[0] == user]
    if len(mine) >= per_user:
        reading = sum(1 for entry in mine if entry[2:3] == [GIT])
        builds = len(mine) - reading
        running = f"{builds} build{'s' * (builds != 1)} running"
        if reading:
            running += f" and {reading} request{'s' * (reading != 1)} reading a repository"
        raise LimitError(
            f"{user} has {running} (limit {per_user}); wait for one to finish or cancel one"
        )
    jobs = sum(1 for entry in entries.values() if len(entry) < 3)
    if not shared and jobs >= total:
        raise LimitError(f"{jobs} builds are running (service limit {total}); retry later")


class QuotaLedger:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.in_git: dict[str, int] = {}  # requests of each requester in their git phase here

    async def _read(self) -> tuple[dict[str, list], str | None]:
        try:
            cm = await self.core.read_namespaced_config_map(NAME, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return {}, None
            raise
        try:
            entries = json.loads((cm.data or {}).get(KEY) or "{}")
        except ValueError:
            entries = {}
        return (entries if isinstance(entries, dict) else {}), cm.metadata.resource_version

    async def _write(self, entries: dict[str, Any], version: str | None) -> bool:
        """False when someone else wrote first (409)."""
        body = {
            "metadata": {
                "name": NAME,
                "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
                **({"resourceVersion": version} if version else {}),
            },
            "data": {KEY: json.dumps(entries, sort_keys=True)},
        }
        try:
            if version is None:
                await self.core.create_namespaced_config_map(self.namespace, body)
            else:
                await self.core.replace_namespaced_config_map(NAME, self.namespace, body)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    async def _change(self, decide) -> Any:
        """Read, ``decide(entries)`` -> (new entries or None for no write, result), write with
        the precondition; on a conflict read again and decide again."""
        for attempt in range(ATTEMPTS):
            entries, version = await self._read()
            new, result = decide(dict(entries))
            if new is None or await self._write(new, version):
                return result
            await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))
        raise RuntimeError("the build quota ledger is too contended; retry")

    @asynccontextmanager
    async def git_phase(self, user: str, per_user: int, total: int) -> AsyncIterator[None]:
        """Count a request of ``user`` against the limits while the block (its git work)
        runs; raises :class:`LimitError` before it when a limit is reached: first by this
        replica's own count (no API call), then by the ledger (every replica's builds and
        git phases), where an entry holds the place until the block ends."""
        here = self.in_git.get(user, 0)
        if here >= per_user:
            raise LimitError(
                f"{user} has {here} requests reading a repository (limit {per_user}); "
                "wait for one to finish"
            )
        self.in_git[user] = here + 1
        key = f"git-{uuid.uuid4().hex}"
        try:

            def decide(entries):
                check(entries, user, per_user, total)
                entries[key] = [user, time.time(), GIT]
                return entries, None

            await self._change(decide)
            try:
                yield
            finally:
                try:
                    await self.release(key)
                except Exception:  # pruned after the grace period instead
                    log.warning("could not release the quota entry %s", key, exc_info=True)
        finally:
            self.in_git[user] -= 1
            if not self.in_git[user]:
                del self.in_git[user]

    async def admit(
        self, build_id: str, user: str, per_user: int, total: int, shared: bool = False
    ) -> None:
        """Add ``build_id`` for ``user`` unless a limit is reached (:class:`LimitError`);
        ``shared``: it follows another build's Job (see :func:`check`)."""

        def decide(entries):
            if build_id in entries:
                return None, None
            check(entries, user, per_user, total, shared)
            entries[build_id] = [user, time.time(), "shared"] if shared else [user, time.time()]
            return entries, None

        await self._change(decide)

    async def release(self, build_id: str) -> None:
        def decide(entries):
            if build_id not in entries:
                return None, None
            del entries[build_id]
            return entries, None

        await self._change(decide)

    async def prune(self, active: set[str], grace_seconds: float) -> list[str]:
        """Drop entries that are not active builds and were admitted over ``grace_seconds``
        ago (a replica that stopped between admission and the record)."""
        cutoff = time.time() - grace_seconds

        def decide(entries):
            gone = [k for k, entry in entries.items() if k not in active and entry[1] < cutoff]
            for k in gone:
                del entries[k]
            return (entries if gone else None), gone

        return await self._change(decide)

    async def entries(self) -> dict[str, list]:
        return (await self._read())[0]
