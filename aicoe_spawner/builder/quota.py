"""Admission of active builds, atomic across concurrent requests and builder replicas.

One ConfigMap (``aicoe-image-builder-quota``) lists the admitted, not yet finished builds
(``{build id: [requester, admitted at]}``, plus ``"shared"`` for a build that follows another
requester's Job: it counts for its requester, not for the service-wide limit of Jobs).
Admitting reads it, counts, and writes it back on the condition that it is still the version
read (resourceVersion): of two requests racing for the last slot, one write wins and the other
re-reads and is refused. A build leaves the ledger when it finishes; entries whose record never
appeared or is no longer active are pruned."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from .backends.kubernetes import MANAGED_BY
from .requests import BuildRequestError

NAME = "aicoe-image-builder-quota"
KEY = "active.json"
ATTEMPTS = 200


class LimitError(BuildRequestError):
    def __init__(self, why: str) -> None:
        super().__init__("limit", why, 429)


def check(
    entries: dict[str, list], user: str, per_user: int, total: int, shared: bool = False
) -> None:
    """Raise :class:`LimitError` when one more build of ``user`` would exceed a limit (a
    ``shared`` build, which starts no Job of its own, only the requester's)."""
    mine = sum(1 for entry in entries.values() if entry[0] == user)
    if mine >= per_user:
        raise LimitError(
            f"{user} has {mine} builds running (limit {per_user}); "
            "wait for one to finish or cancel one"
        )
    jobs = sum(1 for entry in entries.values() if len(entry) < 3)
    if not shared and jobs >= total:
        raise LimitError(f"{jobs} builds are running (service limit {total}); retry later")


class QuotaLedger:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

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

    async def precheck(self, user: str, per_user: int, total: int) -> None:
        """The cheap check before slow work (git): raises :class:`LimitError` when full."""
        entries, _ = await self._read()
        check(entries, user, per_user, total)

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
