"""Build Jobs in the fast tier. ``JobRunner`` plays the Job controller for build Jobs (a pod
from each Job's template, the Job's status from the pod's phase) and has the fake kubelet run
those pods' containers here (:class:`~aicoe_devcluster.hostruntime.HostProcessRuntime`); the
kubelet alone writes the pods' status. ``start_pod``/``complete_job`` finish one build's Job by
hand, in a namespace where no ``JobRunner`` runs, with the kubelet's status shapes."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aicoe_devcluster.hostruntime import HostProcessRuntime
from aicoe_devcluster.kubelet import FakeKubelet, now, pod_status, running, terminated

MERGE = "application/merge-patch+json"
#: the field manager of Job status writes (the kubelet's is ``kubelet.FIELD_MANAGER``)
JOB_CONTROLLER = "fake-job-controller"
#: the field manager of the pod status a test writes by hand
BY_HAND = "test-by-hand"
MANAGED = "app.kubernetes.io/managed-by=aicoe-image-builder"


def job_status(succeeded: bool, start: str, end: str) -> dict[str, Any]:
    """The ``status`` the Job controller writes for a Job whose one pod ended."""

    def condition(kind: str, **extra: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": "True",
            "lastProbeTime": end,
            "lastTransitionTime": end,
            **extra,
        }

    if succeeded:
        conditions = [condition("SuccessCriteriaMet"), condition("Complete")]
        return {
            "startTime": start,
            "active": 0,
            "succeeded": 1,
            "completionTime": end,
            "conditions": conditions,
        }
    backoff = {"reason": "BackoffLimitExceeded"}
    conditions = [
        condition("FailureTarget", **backoff),
        condition("Failed", **backoff, message="Job has reached the specified backoff limit"),
    ]
    return {"startTime": start, "active": 0, "failed": 1, "conditions": conditions}


def job_pod(job: dict[str, Any]) -> dict[str, Any]:
    """The pod the Job controller creates for ``job``: ``<job>-run`` from its template, with
    the Job controller's labels and the Job as its controller."""
    meta, template = job["metadata"], job["spec"]["template"]
    labels = {
        **(template.get("metadata") or {}).get("labels", {}),
        "job-name": meta["name"],
        "batch.kubernetes.io/job-name": meta["name"],
    }
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }
    return {
        "metadata": {"name": f"{meta['name']}-run", "labels": labels, "ownerReferences": [owner]},
        "spec": template["spec"],
    }


class JobRunner:
    """Runs the build Jobs of ``namespace``: the Job controller's part here, the pods'
    containers in ``kubelet`` with a :class:`HostProcessRuntime` under ``workdir``. While
    ``paused`` no new Job is picked up."""

    instances: list[JobRunner] = []

    def __init__(
        self, kube: client.ApiClient, namespace: str, workdir: Path, *, kubelet: FakeKubelet
    ) -> None:
        self.batch = client.BatchV1Api(kube)
        self.core = client.CoreV1Api(kube)
        self.namespace = namespace
        self.kubelet = kubelet
        self.runtime = HostProcessRuntime(workdir)
        #: names of the Jobs picked up
        self.seen: set[str] = set()
        self.paused = False
        self.tasks: list[asyncio.Task] = []
        self._loop_task: asyncio.Task | None = None
        JobRunner.instances.append(self)

    @property
    def logs(self) -> dict[str, dict[str, Path]]:
        """pod name -> container name -> its log file."""
        return self.runtime.logs

    @property
    def environments(self) -> dict[str, dict[str, dict[str, str]]]:
        """job name -> container name -> the environment it ran with."""
        return self.runtime.environments

    @property
    def durations(self) -> dict[str, float]:
        """job name -> seconds its pod's containers took."""
        return self.runtime.durations

    def start(self) -> None:
        self.kubelet.add_runtime(self.namespace, self.runtime)
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self in JobRunner.instances:
            JobRunner.instances.remove(self)
        tasks = [t for t in [self._loop_task, *self.tasks] if t]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.kubelet.remove_runtime(self.namespace)

    async def read_log(self, namespace: str, pod: str, container: str | None = None) -> str | None:
        """The log of ``container`` of ``pod`` (all containers' when None), None if none."""
        return await self.runtime.read_log(namespace, pod, container)

    @staticmethod
    async def read_any(namespace: str, pod: str, container: str | None = None) -> str | None:
        """What a replica without the runner reads: the log file the runner wrote on this
        machine (where a real kubelet would serve it to every replica)."""
        for runner in JobRunner.instances:
            text = await runner.read_log(namespace, pod, container)
            if text is not None:
                return text
        return None

    async def _loop(self) -> None:
        while True:
            if not self.paused:
                jobs = await self.batch.list_namespaced_job(
                    self.namespace, label_selector=MANAGED, _preload_content=False
                )
                for job in (await jobs.json())["items"]:
                    name = job["metadata"]["name"]
                    if name not in self.seen:
                        self.seen.add(name)
                        self.tasks.append(asyncio.create_task(self._run(job)))
            await asyncio.sleep(0.2)

    async def _run(self, job: dict[str, Any]) -> None:
        """Create the Job's pod, mark the Job active, wait for the kubelet to end the pod and
        write the Job's status from its phase."""
        name, start = job["metadata"]["name"], now()
        pod = job_pod(job)
        await self.core.create_namespaced_pod(self.namespace, pod)
        try:
            await self._job_status(name, {"startTime": start, "active": 1})
            phase = await self._pod_end(pod["metadata"]["name"])
            if phase is not None:
                await self._job_status(name, job_status(phase == "Succeeded", start, now()))
        except ApiException as e:
            if e.status != 404:  # cancelled meanwhile
                raise

    async def _job_status(self, name: str, status: dict[str, Any]) -> None:
        await self.batch.patch_namespaced_job_status(
            name,
            self.namespace,
            {"status": status},
            field_manager=JOB_CONTROLLER,
            _content_type=MERGE,
        )

    async def _pod_end(self, pod: str) -> str | None:
        """The pod's final phase (Succeeded or Failed), None once it is deleted."""
        while True:
            raw = await self.core.read_namespaced_pod(pod, self.namespace, _preload_content=False)
            if raw.status == 404:
                return None
            raw.raise_for_status()
            phase = ((await raw.json()).get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                return phase
            await asyncio.sleep(0.1)


# -- one build's Job, finished by hand ----------------------------------------------------


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _by_hand(namespace: str) -> None:
    if any(r.namespace == namespace for r in JobRunner.instances):
        raise AssertionError(f"a JobRunner runs {namespace}'s Jobs: finish none by hand there")


async def _write_pod_status(core: client.CoreV1Api, pod: dict[str, Any], states: dict) -> None:
    meta = pod["metadata"]
    await core.patch_namespaced_pod_status(
        meta["name"],
        meta["namespace"],
        {"status": pod_status(pod, states)},
        field_manager=BY_HAND,
        _content_type=MERGE,
    )


async def start_pod(kube, namespace: str, build_id: str) -> None:
    """The build Job's pod (``imgbuild-<id>-run``, the build pod's shape), created with its
    build step running, once."""
    _by_hand(namespace)
    core = client.CoreV1Api(kube)
    name = f"imgbuild-{build_id}"
    try:
        pod = await core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": f"{name}-run", "labels": {"job-name": name}},
                "spec": {  # the build pod's shape (kubernetes_job.job_manifest)
                    "restartPolicy": "Never",
                    "initContainers": [{"name": "build", "image": "b"}],
                    "containers": [{"name": "push", "image": "b"}],
                },
            },
        )
    except ApiException as e:
        if e.status != 409:
            raise
        return
    await _write_pod_status(core, kube.sanitize_for_serialization(pod), {"build": running(now())})


async def complete_job(kube, namespace: str, build_id: str, digest: str) -> None:
    """The Job controller and kubelet for one successful build: a finished pod whose push
    step's termination message is the digest, and the Job's Complete status."""
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    name = f"imgbuild-{build_id}"
    await start_pod(kube, namespace, build_id)
    raw = await core.read_namespaced_pod(f"{name}-run", namespace, _preload_content=False)
    pod = await raw.json()
    start = now()
    done = {"build": terminated(0, "", start, start), "push": terminated(0, digest, start, start)}
    await _write_pod_status(core, pod, done)
    await batch.patch_namespaced_job_status(
        name,
        namespace,
        {"status": job_status(True, start, now())},
        field_manager=JOB_CONTROLLER,
        _content_type=MERGE,
    )
