"""Keep the puller DaemonSet's init containers in step with the catalog (the I/O part).

Level-triggered: on every catalog change (debounced) and every ``resync`` seconds, read the
DaemonSet, compute the wanted init containers from the current catalog and patch them in only
when they differ, conditional on the resourceVersion read (a 409 reads and decides again).
Nothing is patched before the catalog's first full list, so a restart never empties the list.
"""

from __future__ import annotations

import asyncio
import logging

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from ..builder.kube import raw_json, retry_on_conflict
from ..watch import ImageStreamWatch
from .daemonset import patch_for
from .plan import Limits, PullImage, plan
from .sizes import ImageSizes

MERGE = "application/merge-patch+json"

log = logging.getLogger("aicoe_spawner.prepuller")


class PullerController:
    """Follows ``watch``'s catalog into DaemonSet ``namespace/name``."""

    def __init__(
        self,
        api: client.ApiClient,
        watch: ImageStreamWatch,
        namespace: str,
        name: str,
        limits: Limits,
        *,
        sizes: ImageSizes | None = None,
        resync: float = 60.0,
        debounce: float = 0.2,
        log: logging.Logger = log,
    ) -> None:
        self.apps = client.AppsV1Api(api)
        self.watch = watch
        self.namespace = namespace
        self.name = name
        self.limits = limits
        self.sizes = sizes
        self.resync = resync
        self.debounce = debounce
        self.log = log
        self.patches = 0  # DaemonSet patches sent (tests and metrics read it)
        self.wanted: list[PullImage] = []

    async def reconcile(self) -> bool:
        """One pass; True when the DaemonSet was patched."""
        catalog = self.watch.catalog
        known = None
        if self.sizes is not None and self.limits.max_bytes:
            # the sizes of every candidate, so that a smaller image can take a large one's place
            candidates = plan(
                catalog,
                Limits(
                    len(catalog.images) * max(self.limits.tags_per_image, 1),
                    0,
                    self.limits.tags_per_image,
                ),
            )
            await self.sizes.update(c.image_ref for c in candidates)
            known = self.sizes.known
        self.wanted = plan(catalog, self.limits, known)

        async def attempt() -> tuple[bool, bool]:
            daemonset = await raw_json(
                self.apps.read_namespaced_daemon_set(
                    self.name, self.namespace, _preload_content=False
                )
            )
            patch = patch_for(daemonset, self.wanted)
            if patch is None:
                return True, False
            await raw_json(
                self.apps.patch_namespaced_daemon_set(
                    self.name, self.namespace, patch, _content_type=MERGE, _preload_content=False
                )
            )
            self.patches += 1
            self.log.info(
                "DaemonSet %s/%s now pulls %d image(s): %s",
                self.namespace,
                self.name,
                len(self.wanted),
                ", ".join(f"{i.stream}:{i.tag}" for i in self.wanted) or "none",
            )
            return True, True

        return await retry_on_conflict(attempt, backoff=0.05, cap=1.0, what="puller DaemonSet")

    async def run(self) -> None:
        """Reconcile until cancelled; API errors are logged and retried with backoff."""
        while not await self.watch.wait_synced(30):
            self.log.info("waiting for the first list of ImageStreams")
        backoff = 1.0
        while True:
            seen = self.watch.version
            try:
                await self.reconcile()
                backoff = 1.0
                timeout = self.resync
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                self.log.warning(
                    "cannot update DaemonSet %s/%s: %s %s",
                    self.namespace,
                    self.name,
                    e.status,
                    (e.reason or "")[:200],
                )
                timeout, backoff = backoff, min(backoff * 2, 30.0)
            except Exception:
                self.log.exception("reconcile failed")
                timeout, backoff = backoff, min(backoff * 2, 30.0)
            version = await self.watch.wait_for_change(seen, timeout)
            if version != seen:
                await asyncio.sleep(self.debounce)  # one patch for a burst of changes
