"""Admission of active builds, atomic across concurrent requests and builder replicas.

One ConfigMap (``aicoe-image-builder-quota``) lists the admitted, not yet finished builds
(``{build id: [requester, admitted at]}``, plus ``"shared"`` for a build that follows another
requester's Job: it counts for its requester, not for the service-wide limit of Jobs).
Admitting reads it, counts, and writes it back on the condition that it is still the version
read (resourceVersion): of two requests racing for the last slot, one write wins and the other
re-reads and is refused. A build leaves the ledger when it finishes; entries whose record never
appeared or is no longer active are pruned.

A request counts for its requester from before its git work (resolving the ref, reading the
repository): :meth:`QuotaLedger.hold` refuses it (429) before any git process starts when the
requester's builds and requests in progress reach the limit, on this replica (counted in
memory, no API call) and on every replica (an entry ``[requester, at, "git"]`` in the ledger,
which counts for the requester only, not as a Job). The request's first admitted build takes
the entry's place (so a request that got a slot is never refused for a later one's); what is
left goes when the request ends."""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from .kube import TooManyConflicts, is_conflict, or_none, retry_on_conflict
from .requests import BuildRequestError
from .vocabulary import MANAGED_BY, MANAGED_BY_LABEL

log = logging.getLogger("aicoe_spawner.builder.quota")

NAME = "aicoe-image-builder-quota"
KEY = "active.json"
ATTEMPTS = 200
GIT = "git"  # the kind of a ledger entry of a request in progress (its git work first)
# the ledger entry held by the request this task serves (see QuotaLedger.hold)
_HELD: ContextVar[str | None] = ContextVar("aicoe_builder_quota_slot", default=None)


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


@dataclass(frozen=True)
class Slot:
    """A request's place (:meth:`QuotaLedger.hold`)."""

    key: str
    user: str
    token: Token


class QuotaLedger:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.in_progress: dict[str, int] = {}  # requests of each requester in progress here

    async def _read(self) -> tuple[dict[str, list], str | None]:
        cm = await or_none(self.core.read_namespaced_config_map(NAME, self.namespace))
        if cm is None:
            return {}, None
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
                "labels": {MANAGED_BY_LABEL: MANAGED_BY},
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
            if is_conflict(e):
                return False
            raise
        return True

    async def _change(self, decide) -> Any:
        """Read, ``decide(entries)`` -> (new entries or None for no write, result), write with
        the precondition; on a conflict read again and decide again."""

        async def attempt() -> tuple[bool, Any]:
            entries, version = await self._read()
            new, result = decide(dict(entries))
            return new is None or await self._write(new, version), result

        try:
            return await retry_on_conflict(attempt, attempts=ATTEMPTS, backoff=0.002, cap=0.05)
        except TooManyConflicts:
            raise RuntimeError("the build quota ledger is too contended; retry") from None

    async def hold(self, user: str, per_user: int, total: int) -> Slot:
        """A place for a request of ``user`` while its git work and admission run (until
        :meth:`free`); raises :class:`LimitError` before them when a limit is reached: first
        by this replica's own count (no API call), then by the ledger (every replica's builds
        and requests in progress), where an entry holds the place until it is freed or
        :meth:`admit` (later in the same task) turns it into a build's."""
        here = self.in_progress.get(user, 0)
        if here >= per_user:
            raise LimitError(
                f"{user} has {here} requests reading a repository (limit {per_user}); "
                "wait for one to finish"
            )
        self.in_progress[user] = here + 1
        key = f"git-{uuid.uuid4().hex}"

        def decide(entries):
            check(entries, user, per_user, total)
            entries[key] = [user, time.time(), GIT]
            return entries, None

        try:
            await self._change(decide)
        except BaseException:
            self._forget(user)
            raise
        return Slot(key, user, _HELD.set(key))

    async def free(self, slot: Slot) -> None:
        """The end of :meth:`hold`'s request: its entry goes unless a build took its place."""
        _HELD.reset(slot.token)
        self._forget(slot.user)
        try:
            await self.release(slot.key)
        except Exception:  # pruned after the grace period instead
            log.warning("could not release the quota entry %s", slot.key, exc_info=True)

    def _forget(self, user: str) -> None:
        self.in_progress[user] -= 1
        if not self.in_progress[user]:
            del self.in_progress[user]

    async def admit(
        self, build_id: str, user: str, per_user: int, total: int, shared: bool = False
    ) -> None:
        """Add ``build_id`` for ``user`` unless a limit is reached (:class:`LimitError`);
        ``shared``: it follows another build's Job (see :func:`check`). After
        :meth:`hold` in the same task, the request's entry is replaced by the build's."""
        held = _HELD.get()

        def decide(entries):
            if build_id in entries:
                return None, None
            if held in entries and entries[held][0] == user:
                del entries[held]
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
