"""Leader election with a ``coordination.k8s.io/v1`` Lease: one replica reconciles, the others
serve the API. Every write of the Lease carries the resourceVersion it was decided on, so two
replicas never both believe they hold it: the loser of a race gets 409 and follows.

Expiry is judged by this replica's own clock, never by the holder's timestamps (clocks of
nodes differ): a Lease whose resourceVersion has not changed for ``duration`` seconds, as seen
here, is expired and may be taken. A holder that cannot renew for ``duration - renew``
seconds stops leading by itself, before any other replica may take over."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from kubernetes_asyncio import client

from .kube import is_conflict, is_not_found

log = logging.getLogger("aicoe_spawner.builder")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Holds (or waits for) the Lease ``name`` in ``namespace`` as ``identity``. Calls
    ``on_start()`` when this replica starts leading and ``on_stop()`` when it stops (lost the
    Lease, could not renew, or :meth:`stop`); ``leading`` is set while it leads."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        duration: float = 15.0,
        renew: float = 5.0,
        on_start: Callable[[], Awaitable[None]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew = renew
        # a leader that could not renew for this long stops, before another may take over
        self.deadline = max(renew, duration - renew)
        self.on_start = on_start
        self.on_stop = on_stop
        self.leading = asyncio.Event()
        self.transitions = 0  # times this replica took the Lease
        self._seen: tuple[str, float] = ("", 0.0)  # (resourceVersion, when first seen here)
        self._renewed = 0.0  # monotonic time of this replica's last successful write
        self._held: client.V1Lease | None = None  # the Lease as this replica last wrote it
        self._task: asyncio.Task | None = None

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="builder-lease")

    async def stop(self) -> None:
        """Stop competing; a leader releases the Lease so another takes over at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.is_leader:
            await self._lose("stopping")
            try:
                await self._release()
            except Exception as e:  # the others take over after the duration
                log.warning("could not release the Lease %s: %s", self.name, e)

    async def _run(self) -> None:
        while True:
            try:
                held = await self._try()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # unreachable API server: keep leading until the deadline
                log.warning("Lease %s: %s", self.name, e)
                self._held = None
                held = self.is_leader and time.monotonic() - self._renewed < self.deadline
            if held and not self.is_leader:
                self.leading.set()
                self.transitions += 1
                log.info("leading (Lease %s/%s as %s)", self.namespace, self.name, self.identity)
                if self.on_start is not None:
                    await self.on_start()
            elif not held and self.is_leader:
                await self._lose("lost the Lease")
            await asyncio.sleep(self.renew)

    async def _lose(self, why: str) -> None:
        self.leading.clear()
        log.info("not leading any more (%s)", why)
        if self.on_stop is not None:
            await self.on_stop()

    def _body(self, lease: client.V1Lease | None, taking: bool) -> dict:
        spec = lease.spec if lease is not None else None
        transitions = (spec.lease_transitions or 0) if spec is not None else 0
        now = _micro_now()
        body: dict = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.duration)),
                "renewTime": now,
                "acquireTime": now if taking else _stamp(spec.acquire_time if spec else None),
                "leaseTransitions": transitions + (1 if taking and lease is not None else 0),
            },
        }
        if lease is not None:
            body["metadata"]["resourceVersion"] = lease.metadata.resource_version
        return body

    async def _try(self) -> bool:
        """One round: create, renew or take the Lease (True: held now). A leader renews the
        version it wrote last (one request); a 409 means it was taken: read it again."""
        if self._held is not None and await self._write(self._held, taking=False):
            return True
        self._held = None
        try:
            lease = await self.api.read_namespaced_lease(self.name, self.namespace)
        except client.ApiException as e:
            if not is_not_found(e):
                raise
            return await self._write(None, taking=True)
        now = time.monotonic()
        version = lease.metadata.resource_version
        if version != self._seen[0]:
            self._seen = (version, now)
        holder = lease.spec.holder_identity if lease.spec else None
        if holder == self.identity:
            return await self._write(lease, taking=False)
        if holder and now - self._seen[1] < self.duration:
            return False  # held by another replica that renews it
        return await self._write(lease, taking=True)

    async def _write(self, lease: client.V1Lease | None, taking: bool) -> bool:
        body = self._body(lease, taking)
        try:
            if lease is None:
                written = await self.api.create_namespaced_lease(self.namespace, body)
            else:
                written = await self.api.replace_namespaced_lease(self.name, self.namespace, body)
        except client.ApiException as e:
            self._held = None
            if is_conflict(e):  # another replica wrote it first (409 on create or replace)
                return False
            raise
        self._held = written
        self._renewed = time.monotonic()
        return True

    async def _release(self) -> None:
        self._held = None
        lease = await self.api.read_namespaced_lease(self.name, self.namespace)
        if lease.spec is None or lease.spec.holder_identity != self.identity:
            return
        body = self._body(lease, taking=False)
        body["spec"]["holderIdentity"] = None
        await self.api.replace_namespaced_lease(self.name, self.namespace, body)


def _stamp(value: datetime | None) -> str:
    if value is None:
        return _micro_now()
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
