"""The fast tier's one kubelet (``aicoe_devcluster.kubelet.FakeKubelet``) against the real API
server: it alone writes pods' status. A build Job's pod goes Pending -> Running -> Succeeded
(or Failed) in the host runtime, a notebook pod starts on paper, a Job's pod in a namespace
without a runtime is left to the test, and a deleted pod's containers stop. Each pod's status
writers are read from its managedFields."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from harness.jobs import BY_HAND, JOB_CONTROLLER, JobRunner, complete_job, start_pod
from harness.kube import wait_for
from kubernetes_asyncio import client, watch

from aicoe_devcluster.kubelet import FIELD_MANAGER

Pod = dict[str, Any]


def status_writers(obj: dict[str, Any]) -> set[str]:
    """The field managers that wrote ``obj``'s status subresource."""
    fields = obj["metadata"].get("managedFields") or []
    return {f["manager"] for f in fields if f.get("subresource") == "status"}


def build_job(name: str, init: str, main: str) -> dict[str, Any]:
    """A Job like the builder's: one init container, one container, shell scripts."""
    return {
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "aicoe-image-builder"},
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "initContainers": [
                        {"name": "fetch", "image": "b", "command": ["/bin/sh", "-c", init]}
                    ],
                    "containers": [
                        {"name": "push", "image": "b", "command": ["/bin/sh", "-c", main]}
                    ],
                }
            },
        },
    }


class PodHistory:
    """Every version of every pod of a namespace, from a watch started before any exists."""

    def __init__(self, kube: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(kube)
        self.namespace = namespace
        self.versions: dict[str, list[Pod]] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        listed = await self.core.list_namespaced_pod(self.namespace)
        self._task = asyncio.create_task(self._follow(listed.metadata.resource_version))

    async def _follow(self, resource_version: str) -> None:
        async with watch.Watch().stream(
            self.core.list_namespaced_pod,
            self.namespace,
            resource_version=resource_version,
            _preload_content=False,
        ) as stream:
            async for event in stream:
                pod = event["raw_object"]
                self.versions.setdefault(pod["metadata"]["name"], []).append(pod)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def phases(self, name: str) -> list[str]:
        """The pod's phases in order, each once per stretch."""
        out: list[str] = []
        for pod in self.versions.get(name, []):
            phase = (pod.get("status") or {}).get("phase")
            if not out or out[-1] != phase:
                out.append(phase)
        return out

    def states(self, name: str, phase: str) -> list[tuple[list[str], list[str]]]:
        """For each version of the pod in ``phase``: the states of its init containers and
        of its containers ("running", "terminated", "waiting")."""

        def kinds(statuses: list[dict]) -> list[str]:
            return [next(iter(s["state"])) for s in statuses]

        return [
            (
                kinds(pod["status"].get("initContainerStatuses") or []),
                kinds(pod["status"].get("containerStatuses") or []),
            )
            for pod in self.versions.get(name, [])
            if pod["status"].get("phase") == phase
        ]


def pid_written(workdir: Path) -> int | None:
    """The pid the ``push`` container of a pod under ``workdir`` wrote to ``$HOME/pid``."""
    found = list(workdir.glob("build-*/push/pid"))
    text = found[0].read_text().strip() if found else ""
    return int(text) if text else None


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def followed(runner: JobRunner) -> list[BaseException | None]:
    """Once the runner has followed each of its Jobs to the end: what each raised."""

    async def done() -> bool:
        return all(t.done() for t in runner.tasks)

    await wait_for(done)
    return [t.exception() for t in runner.tasks]


async def read(kube: client.ApiClient, kind: str, name: str, namespace: str) -> dict[str, Any]:
    api = client.CoreV1Api(kube) if kind == "pod" else client.BatchV1Api(kube)
    read_one = api.read_namespaced_pod if kind == "pod" else api.read_namespaced_job
    return await (await read_one(name, namespace, _preload_content=False)).json()


async def test_one_kubelet_writes_build_and_notebook_pods_status(
    kube, fake_kubelet, namespace, tmp_path
):
    """A build pod's steps run here, each reported by the kubelet alone; the Job controller
    stand-in writes only the Job; a notebook pod in the same namespace runs on paper."""
    history = PodHistory(kube, namespace)
    await history.start()
    runner = JobRunner(kube, namespace, tmp_path, kubelet=fake_kubelet)
    runner.start()
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    try:
        finish = 'sleep 0.5; printf done > "$TERMINATION_LOG"'
        ok = build_job("ok", "echo fetched; sleep 0.5", finish)
        bad = build_job("bad", "echo broken; exit 3", "echo never")
        for job in (ok, bad):
            await batch.create_namespaced_job(namespace, job)
        await core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "notebook"},
                "spec": {
                    "restartPolicy": "OnFailure",  # as KubeSpawner's pods
                    "containers": [{"name": "notebook", "image": "example/nb"}],
                },
            },
        )

        async def jobs_ended():
            jobs = [await read(kube, "job", n, namespace) for n in ("ok", "bad")]
            conditions = [{c["type"] for c in (j["status"].get("conditions") or [])} for j in jobs]
            return jobs if "Complete" in conditions[0] and "Failed" in conditions[1] else None

        jobs = await wait_for(jobs_ended, timeout=30)
        assert await followed(runner) == [None, None]
        await asyncio.sleep(0.3)  # the watch's last events
    finally:
        await runner.stop()
        await history.stop()

    assert history.phases("ok-run") == ["Pending", "Running", "Succeeded"]
    # the init container runs while the pod is Pending, the container while it is Running
    assert (["running"], ["waiting"]) in history.states("ok-run", "Pending")
    assert history.states("ok-run", "Running") == [(["terminated"], ["running"])]
    done = await read(kube, "pod", "ok-run", namespace)
    fetch, push = done["status"]["initContainerStatuses"][0], done["status"]["containerStatuses"][0]
    assert fetch["state"]["terminated"]["exitCode"] == 0
    assert push["state"]["terminated"]["message"] == "done"
    assert status_writers(done) == {FIELD_MANAGER}

    assert history.phases("bad-run") == ["Pending", "Failed"]
    failed = await read(kube, "pod", "bad-run", namespace)
    assert failed["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert "waiting" in failed["status"]["containerStatuses"][0]["state"]
    assert status_writers(failed) == {FIELD_MANAGER}
    assert all(status_writers(j) == {JOB_CONTROLLER} for j in jobs)

    assert "fetched" in (await runner.read_log(namespace, "ok-run", "fetch") or "")
    assert set(runner.environments["ok"]) == {"fetch", "push"}
    assert set(runner.environments["bad"]) == {"fetch"}

    assert history.phases("notebook") == ["Pending", "Running"]
    notebook = await read(kube, "pod", "notebook", namespace)
    assert notebook["status"]["containerStatuses"][0]["ready"] is True
    assert status_writers(notebook) == {FIELD_MANAGER}
    assert "notebook" not in runner.logs  # not handed to the runtime
    assert f"{namespace}/notebook" in fake_kubelet.started_pods


async def test_a_job_pod_without_a_runtime_is_the_tests_alone(kube, fake_kubelet, namespace):
    """In a namespace where no JobRunner runs, the kubelet leaves a Job's pod alone: the
    test's start_pod/complete_job write its status (with the kubelet's shapes)."""
    await client.BatchV1Api(kube).create_namespaced_job(
        namespace, build_job("imgbuild-hand", "true", "true")
    )
    await start_pod(kube, namespace, "hand")
    started = await read(kube, "pod", "imgbuild-hand-run", namespace)
    assert started["status"]["phase"] == "Pending"  # its build step (an init container) runs
    assert "running" in started["status"]["initContainerStatuses"][0]["state"]
    await asyncio.sleep(0.5)  # time the kubelet would take to act on it
    assert status_writers(await read(kube, "pod", "imgbuild-hand-run", namespace)) == {BY_HAND}
    await complete_job(kube, namespace, "hand", "sha256:" + "ab" * 32)
    finished = await read(kube, "pod", "imgbuild-hand-run", namespace)
    assert finished["status"]["phase"] == "Succeeded"
    (push,) = finished["status"]["containerStatuses"]
    assert push["name"] == "push"
    assert push["state"]["terminated"]["message"] == "sha256:" + "ab" * 32
    assert status_writers(finished) == {BY_HAND}
    assert f"{namespace}/imgbuild-hand-run" not in fake_kubelet.started_pods


async def test_finishing_by_hand_where_a_job_runner_runs_is_refused(
    kube, fake_kubelet, namespace, tmp_path
):
    runner = JobRunner(kube, namespace, tmp_path, kubelet=fake_kubelet)
    try:
        with pytest.raises(AssertionError, match="JobRunner"):
            await start_pod(kube, namespace, "x")
    finally:
        await runner.stop()


async def test_a_deleted_build_pods_containers_stop(kube, fake_kubelet, namespace, tmp_path):
    runner = JobRunner(kube, namespace, tmp_path, kubelet=fake_kubelet)
    runner.start()
    try:
        job = build_job("long", "true", 'echo $$ > "$HOME/pid"; exec sleep 60')
        await client.BatchV1Api(kube).create_namespaced_job(namespace, job)

        async def started() -> int | None:
            return pid_written(tmp_path)

        process = await wait_for(started, timeout=15)
        assert alive(process)
        await client.CoreV1Api(kube).delete_namespaced_pod("long-run", namespace)

        async def stopped() -> bool:
            return not alive(process)

        await wait_for(stopped)
        assert await followed(runner) == [None]
        # the pod is gone: the Job controller stand-in writes no end for the Job
        assert not (await read(kube, "job", "long", namespace))["status"].get("conditions")
    finally:
        await runner.stop()
