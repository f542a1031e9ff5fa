"""The fast tier's kubelet: the one stand-in that writes pods' status there (the real node's
kubelet is the other tier's).

It watches pods in all namespaces and decides per pod how to run it:

- a pod a Job owns runs to completion in the :class:`ContainerRuntime` registered for its
  namespace (tests register :class:`~aicoe_devcluster.hostruntime.HostProcessRuntime`, which
  runs the containers as processes here): init containers, then containers, one after the
  other; the kubelet reports each step (Pending while init containers run, Running, then
  Succeeded or Failed with each container's terminated state) and stops a deleted pod's
  containers. In a namespace with no runtime such a pod is left alone: a test that finishes
  Jobs by hand writes its status with this module's builders (:func:`pod_status`);
- every other pod (a notebook server) starts on paper: Running and Ready with ``pod_ip``,
  after an optional ``on_pod`` hook (which may return the pod's IP).

A pod is started once and never revived once Succeeded or Failed. Every start posts a core/v1
"Started" Event per container. Status writes carry the field manager :data:`FIELD_MANAGER`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from .cluster import api_client

log = logging.getLogger("aicoe.devcluster.kubelet")

Pod = dict[str, Any]
PodHook = Callable[[Pod], Awaitable[str | None]]
SecretReader = Callable[[str], Awaitable[dict[str, bytes]]]

FIELD_MANAGER = "fake-kubelet"
MERGE = "application/merge-patch+json"
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


def now() -> str:
    """A timestamp as the API server writes them (whole seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- status shapes: the one place they are written ------------------------------------------


def running(started_at: str) -> dict[str, Any]:
    """A container state: running since ``started_at``."""
    return {"running": {"startedAt": started_at}}


def terminated(
    exit_code: int, message: str, started_at: str, finished_at: str, reason: str | None = None
) -> dict[str, Any]:
    """A container state: exited with ``exit_code`` and termination ``message``."""
    return {
        "terminated": {
            "exitCode": exit_code,
            "message": message,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "startedAt": started_at,
            "finishedAt": finished_at,
        }
    }


def _exit_code(state: dict[str, Any] | None) -> int | None:
    return ((state or {}).get("terminated") or {}).get("exitCode")


def pod_phase(pod: Pod, states: dict[str, dict[str, Any]]) -> str:
    """The phase of a pod whose containers are in ``states`` (name -> state; absent: not
    started), as a kubelet derives it for restartPolicy Never: a failed container fails the
    pod once none runs."""
    spec = pod["spec"]
    init = [c["name"] for c in spec.get("initContainers") or []]
    main = [c["name"] for c in spec.get("containers") or []]
    is_running = any("running" in states.get(n, {}) for n in main)
    if not is_running and any(_exit_code(states.get(n)) not in (None, 0) for n in init + main):
        return "Failed"
    if main and all(_exit_code(states.get(n)) == 0 for n in main):
        return "Succeeded"
    return "Running" if is_running else "Pending"


def pod_status(
    pod: Pod,
    states: dict[str, dict[str, Any]],
    *,
    pod_ip: str = "127.0.0.1",
    start_time: str | None = None,
) -> dict[str, Any]:
    """The ``status`` a kubelet reports for ``pod`` whose containers are in ``states``
    (name -> :func:`running`/:func:`terminated`; absent: waiting): phase, conditions, podIP and
    a status per init container and container."""
    stamp = now()
    spec, uid = pod["spec"], pod["metadata"].get("uid", "")
    init = spec.get("initContainers") or []
    main = spec.get("containers") or []
    initialized = all(_exit_code(states.get(c["name"])) == 0 for c in init)
    ready = bool(main) and all("running" in states.get(c["name"], {}) for c in main)

    def container_status(c: dict[str, Any], waiting_reason: str) -> dict[str, Any]:
        state = states.get(c["name"]) or {"waiting": {"reason": waiting_reason}}
        return {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": c.get("image", ""),
            "ready": "running" in state,
            "started": "running" in state,
            "restartCount": 0,
            "state": state,
            "containerID": f"fake://{uid}/{c['name']}",
        }

    def condition(kind: str, true: bool) -> dict[str, Any]:
        return {"type": kind, "status": str(true), "lastTransitionTime": stamp}

    status: dict[str, Any] = {
        "phase": pod_phase(pod, states),
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "hostIP": "127.0.0.1",
        "startTime": start_time or stamp,
        "conditions": [
            condition("PodScheduled", True),
            condition("Initialized", initialized),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ],
        "containerStatuses": [
            container_status(c, "PodInitializing" if init else "ContainerCreating") for c in main
        ],
    }
    if init:
        status["initContainerStatuses"] = [container_status(c, "PodInitializing") for c in init]
    return status


def running_status(pod: Pod, pod_ip: str) -> dict[str, Any]:
    """The ``status`` of a pod whose containers all started (a notebook server on paper)."""
    stamp = now()
    containers = pod["spec"].get("containers") or []
    return pod_status(pod, {c["name"]: running(stamp) for c in containers}, pod_ip=pod_ip)


def owned_by_job(pod: Pod) -> bool:
    """Whether a Job owns ``pod`` (its ownerReference, or the Job controller's label)."""
    meta = pod["metadata"]
    if any(ref.get("kind") == "Job" for ref in meta.get("ownerReferences") or []):
        return True
    return any(label in (meta.get("labels") or {}) for label in JOB_NAME_LABELS)


class ContainerRuntime(Protocol):
    """What runs a run-to-completion pod's containers for the kubelet."""

    async def create_sandbox(self, pod: Pod, read_secret: SecretReader) -> Any:
        """Prepare the pod (its volumes); what :meth:`run_container` gets back."""

    async def run_container(self, sandbox: Any, container: dict[str, Any]) -> tuple[int, str]:
        """Run one container to its end: (exit code, termination message). Cancelled: stop it."""


class FakeKubelet:
    """Watches pods in all namespaces and runs them: Job pods in their namespace's runtime,
    the others on paper."""

    def __init__(
        self,
        kubeconfig: str | Path,
        *,
        pod_ip: str = "127.0.0.1",
        on_pod: PodHook | None = None,
        on_delete: Callable[[Pod], Awaitable[None]] | None = None,
    ):
        self.kubeconfig = kubeconfig
        self.pod_ip = pod_ip
        self.on_pod = on_pod
        self.on_delete = on_delete
        #: "namespace/name" of every pod started, in order
        self.started_pods: list[str] = []
        #: namespace -> the runtime that runs its Job pods
        self.runtimes: dict[str, ContainerRuntime] = {}
        self._started: set[str] = set()  # uids
        self._running: dict[str, tuple[str, asyncio.Task]] = {}  # uid -> (namespace, task)
        self._loop: asyncio.AbstractEventLoop | None = None

    def add_runtime(self, namespace: str, runtime: ContainerRuntime) -> None:
        """Run the Job pods of ``namespace`` in ``runtime`` from now on (from any thread)."""
        self.runtimes[namespace] = runtime

    async def remove_runtime(self, namespace: str) -> None:
        """Stop running ``namespace``'s Job pods: the running ones are stopped (their status
        is left as it was). Awaitable from any event loop."""
        self.runtimes.pop(namespace, None)
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._stop(namespace), loop))

    async def _stop(self, namespace: str | None = None, uid: str | None = None) -> None:
        tasks = [
            task
            for key, (ns, task) in list(self._running.items())
            if (namespace is None or ns == namespace) and (uid is None or key == uid)
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        """List and watch pods forever, reconnecting after errors and API server restarts."""
        self._loop = asyncio.get_running_loop()
        api = await api_client(self.kubeconfig)
        core = client.CoreV1Api(api)
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
            await self._stop()
            await api.close()

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
                if event["type"] == "DELETED" or pod["metadata"].get("deletionTimestamp"):
                    await self._stop(uid=pod["metadata"].get("uid"))
                    if self.on_delete is not None:
                        await self.on_delete(pod)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    await self._maybe_start(core, pod)

    async def _maybe_start(self, core: client.CoreV1Api, pod: Pod) -> None:
        meta = pod["metadata"]
        phase = (pod.get("status") or {}).get("phase")
        # Started once; never revived after Succeeded/Failed (the API server refuses the
        # transition back anyway).
        uid = meta.get("uid", "")
        if uid in self._started or meta.get("deletionTimestamp"):
            return
        if phase in ("Running", "Succeeded", "Failed"):
            return
        if not owned_by_job(pod):
            if await self._start_on_paper(core, pod):
                self._started.add(uid)
            return
        runtime = self.runtimes.get(meta["namespace"])
        if runtime is None:
            return  # no runtime here: the test finishes this Job's pod by hand
        self._started.add(uid)
        task = asyncio.create_task(self._run_to_completion(core, pod, runtime))
        self._running[uid] = (meta["namespace"], task)
        task.add_done_callback(lambda _: self._running.pop(uid, None))

    async def _start_on_paper(self, core: client.CoreV1Api, pod: Pod) -> bool:
        """Running and Ready at once; False if the pod is gone."""
        pod_ip = self.pod_ip
        if self.on_pod is not None:
            pod_ip = await self.on_pod(pod) or pod_ip
        if not await self._write(core, pod, running_status(pod, pod_ip)):
            return False
        self._record_start(pod)
        for c in pod["spec"].get("containers") or [{"name": "notebook"}]:
            await self._event(core, pod, c["name"])
        return True

    async def _run_to_completion(
        self, core: client.CoreV1Api, pod: Pod, runtime: ContainerRuntime
    ) -> None:
        """Each init container, then each container, in ``runtime``; the status after each
        step. The first that fails ends the pod."""
        meta, spec = pod["metadata"], pod["spec"]
        start = now()
        states: dict[str, dict[str, Any]] = {}

        async def read_secret(name: str) -> dict[str, bytes]:
            secret = await core.read_namespaced_secret(name, meta["namespace"])
            return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

        try:
            sandbox = await runtime.create_sandbox(pod, read_secret)
        except Exception as e:  # as a volume that cannot be set up: the pod never starts
            log.exception("fake kubelet: no sandbox for %s/%s", meta["namespace"], meta["name"])
            first = (spec.get("initContainers") or spec["containers"])[0]["name"]
            states[first] = terminated(128, str(e), start, now(), "StartError")
            await self._write(core, pod, self._status(pod, states, start))
            return
        self._record_start(pod)
        for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
            name, started_at = container["name"], now()
            states[name] = running(started_at)
            if not await self._write(core, pod, self._status(pod, states, start)):
                return  # deleted meanwhile
            await self._event(core, pod, name)
            try:
                code, message = await runtime.run_container(sandbox, container)
                reason = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the runtime could not start it
                log.exception("fake kubelet: %s of %s failed to start", name, meta["name"])
                code, message, reason = 128, str(e), "StartError"
            states[name] = terminated(code, message, started_at, now(), reason)
            if code != 0:
                break
        await self._write(core, pod, self._status(pod, states, start))

    def _status(self, pod: Pod, states: dict[str, dict[str, Any]], start: str) -> dict[str, Any]:
        return pod_status(pod, states, pod_ip=self.pod_ip, start_time=start)

    def _record_start(self, pod: Pod) -> None:
        self.started_pods.append(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")

    async def _write(self, core: client.CoreV1Api, pod: Pod, status: dict[str, Any]) -> bool:
        """Patch ``pods/status``; False if the pod is gone."""
        meta = pod["metadata"]
        try:
            await core.patch_namespaced_pod_status(
                meta["name"],
                meta["namespace"],
                {"status": status},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE,
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    async def _event(self, core: client.CoreV1Api, pod: Pod, container: str) -> None:
        """A "Started container" Event for ``container`` of ``pod``."""
        meta, stamp = pod["metadata"], now()
        name, namespace = meta["name"], meta["namespace"]
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
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
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
