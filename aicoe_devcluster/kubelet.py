"""A fake kubelet: makes every new pod Running and Ready, as KubeSpawner expects.

For each pod that is not yet running it patches ``pods/status`` (phase Running, podIP,
Initialized/Ready/ContainersReady conditions, a ready container status per container) and
posts a core/v1 "Started container" Event. An optional ``on_pod`` hook runs before the pod is
marked ready (the demo starts the pod's command as a local process there).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from .cluster import api_client

log = logging.getLogger("aicoe.devcluster.kubelet")

PodHook = Callable[[dict[str, Any]], Awaitable[str | None]]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running_status(pod: dict[str, Any], pod_ip: str) -> dict[str, Any]:
    """The ``status`` a kubelet reports for a pod whose containers all started."""
    now = _now()
    containers = pod["spec"].get("containers", [])
    return {
        "phase": "Running",
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "hostIP": "127.0.0.1",
        "startTime": now,
        "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ],
        "containerStatuses": [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": c.get("image", ""),
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
                "containerID": f"fake://{uuid.uuid4().hex}",
            }
            for c in containers
        ],
    }


class FakeKubelet:
    """Watches pods in all namespaces and starts them (on paper)."""

    def __init__(
        self,
        kubeconfig: str | Path,
        *,
        pod_ip: str = "127.0.0.1",
        on_pod: PodHook | None = None,
        on_delete: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ):
        self.kubeconfig = kubeconfig
        self.pod_ip = pod_ip
        self.on_pod = on_pod
        self.on_delete = on_delete
        self.started_pods: list[str] = []
        self._api: client.ApiClient | None = None

    async def run(self) -> None:
        """List and watch pods forever, reconnecting after errors and API server restarts."""
        self._api = await api_client(self.kubeconfig)
        core = client.CoreV1Api(self._api)
        try:
            while True:
                try:
                    pods = await core.list_pod_for_all_namespaces(_preload_content=False)
                    data = await pods.json()
                    for pod in data["items"]:
                        await self._maybe_start(core, pod)
                    await self._watch(core, data["metadata"]["resourceVersion"])
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # reconnect on anything: restarts, 410 Gone, drops
                    log.info("fake kubelet: watch ended (%s); reconnecting", e)
                    await asyncio.sleep(0.3)
        finally:
            await self._api.close()

    async def _watch(self, core: client.CoreV1Api, resource_version: str) -> None:
        w = watch.Watch()
        async with w.stream(
            core.list_pod_for_all_namespaces,
            resource_version=resource_version,
            allow_watch_bookmarks=False,
            timeout_seconds=300,
            _preload_content=False,
        ) as stream:
            async for event in stream:
                if event["type"] == "ERROR":
                    raise RuntimeError(f"watch error: {event['raw_object']}")
                pod = event["raw_object"]
                deleting = event["type"] == "DELETED" or pod["metadata"].get("deletionTimestamp")
                if deleting and self.on_delete is not None:
                    await self.on_delete(pod)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    await self._maybe_start(core, pod)

    async def _maybe_start(self, core: client.CoreV1Api, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        status = pod.get("status") or {}
        # A kubelet never revives a pod that ran to completion (the API server refuses the
        # Succeeded/Failed -> Running transition anyway): build pods finished by the
        # builder's job runner stay finished.
        if meta.get("deletionTimestamp") or status.get("phase") in (
            "Running",
            "Succeeded",
            "Failed",
        ):
            return
        name, namespace = meta["name"], meta["namespace"]
        pod_ip = self.pod_ip
        if self.on_pod is not None:
            pod_ip = await self.on_pod(pod) or pod_ip
        try:
            await core.patch_namespaced_pod_status(
                name, namespace, {"status": running_status(pod, pod_ip)}
            )
        except ApiException as e:
            if e.status == 404:
                return
            raise
        self.started_pods.append(f"{namespace}/{name}")
        now = _now()
        container = (pod["spec"].get("containers") or [{"name": "notebook"}])[0]["name"]
        event = {
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:10]}", "namespace": namespace},
            "involvedObject": {
                "kind": "Pod",
                "name": name,
                "namespace": namespace,
                "uid": meta.get("uid"),
                "apiVersion": "v1",
                "fieldPath": f"spec.containers{{{container}}}",
            },
            "reason": "Started",
            "message": f"Started container {container}",
            "type": "Normal",
            "source": {"component": "kubelet", "host": "fake-node"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await core.create_namespaced_event(namespace, event)
        except ApiException as e:
            log.warning(
                "fake kubelet: could not post event for %s/%s: %s", namespace, name, e.reason
            )


class BackgroundLoop:
    """Runs a coroutine factory on an event loop in a daemon thread, so it keeps running
    while the caller blocks (tests, demo)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._tasks: list[asyncio.Future] = []

    def start(self, coro_factory: Callable[[], Awaitable[Any]]) -> None:
        async def runner():
            try:
                await coro_factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed", coro_factory)
                raise

        self._tasks.append(asyncio.run_coroutine_threadsafe(runner(), self.loop))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
