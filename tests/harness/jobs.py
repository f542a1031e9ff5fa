"""A stand-in for the Job controller and kubelet for build Jobs: it runs the pod's own init
containers and containers here, one after the other (buildah with vfs storage and chroot
isolation), each seeing only the volumes it mounts (emptyDirs and Secrets as host
directories), and writes pod and Job status back to the API server; and one build's Job
finished by hand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

if TYPE_CHECKING:
    pass


MERGE = "application/merge-patch+json"


def unmount_below(folder: Path) -> None:
    """Unmount whatever is mounted below ``folder`` (buildah's overlay storage mounts its
    layers and itself), deepest first, so that the folder can be removed."""
    prefix = str(folder.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


class JobRunner:
    """Plays the Job controller and kubelet for build Jobs in ``namespace``."""

    instances: list[JobRunner] = []

    def __init__(self, kube: client.ApiClient, namespace: str, workdir: Path) -> None:
        self.batch = client.BatchV1Api(kube)
        self.core = client.CoreV1Api(kube)
        self.namespace = namespace
        self.workdir = workdir
        self.seen: set[str] = set()
        self.logs: dict[str, dict[str, Path]] = {}
        self.durations: dict[str, float] = {}
        self.paused = False
        # job name -> container name -> the environment it ran with (what a test inspects)
        self.environments: dict[str, dict[str, dict[str, str]]] = {}
        self.tasks: list[asyncio.Task] = []
        self._loop_task: asyncio.Task | None = None
        JobRunner.instances.append(self)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self in JobRunner.instances:
            JobRunner.instances.remove(self)
        for t in [self._loop_task, *self.tasks]:
            if t:
                t.cancel()
        await asyncio.gather(
            *[t for t in [self._loop_task, *self.tasks] if t], return_exceptions=True
        )

    async def read_log(self, namespace: str, pod: str, container: str | None = None) -> str | None:
        """The log of ``container`` of ``pod`` (all containers' when None), None if none."""
        paths = self.logs.get(pod) or {}
        chosen = list(paths.values()) if container is None else [paths.get(container)]
        chosen = [p for p in chosen if p is not None]
        texts = [p.read_text(errors="replace") for p in chosen if p.exists()]
        return "".join(texts) if texts else None

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
                    self.namespace,
                    label_selector="app.kubernetes.io/managed-by=aicoe-image-builder",
                    _preload_content=False,
                )
                for job in (await jobs.json())["items"]:
                    name = job["metadata"]["name"]
                    if name not in self.seen:
                        self.seen.add(name)
                        self.tasks.append(asyncio.create_task(self._run(job)))
            await asyncio.sleep(0.2)

    async def _volumes(self, pod_spec: dict, tmp: Path) -> dict[str, Path]:
        """Each pod volume as a host directory: emptyDirs empty, Secrets with their keys."""
        out = {}
        for volume in pod_spec.get("volumes") or []:
            path = tmp / "volumes" / volume["name"]
            path.mkdir(parents=True)
            if "secret" in volume:
                secret = await self.core.read_namespaced_secret(
                    volume["secret"]["secretName"], self.namespace
                )
                for key, value in (secret.data or {}).items():
                    (path / key).write_bytes(base64.b64decode(value))
            out[volume["name"]] = path
        return out

    async def _run_container(
        self, pod: str, job: str, container: dict, volumes: dict[str, Path], tmp: Path
    ) -> tuple[int, str]:
        """Run one container's command with its env; paths under its mounts are mapped to
        the volumes' host directories. (exit code, termination message)."""
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts") or []}

        def host(value: str) -> str:
            for mount, path in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    return str(path) + value[len(mount) :]
            return value

        env = {e["name"]: host(e.get("value", "")) for e in container.get("env", [])}
        own = tmp / container["name"]
        own.mkdir()
        env.update(
            PATH=os.environ["PATH"],
            HOME=str(own),
            TERMINATION_LOG=str(own / "termination-log"),
            BUILD_TERMINATION_LOG=str(own / "termination-log"),
            TMPDIR=str(own),
        )
        self.environments[job][container["name"]] = env
        log_path = own / "log"
        self.logs[pod][container["name"]] = log_path
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *container["command"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=own
            )
            code = await proc.wait()
        term = own / "termination-log"
        message = term.read_text() if term.exists() else ""
        if (
            not message
            and code != 0
            and container.get("terminationMessagePolicy") == ("FallbackToLogsOnError")
        ):
            message = "\n".join(log_path.read_text(errors="replace").splitlines()[-80:])[-2048:]
        return code, message

    async def _run(self, job: dict) -> None:
        name = job["metadata"]["name"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pod_name = f"{name}-run"
        template = job["spec"]["template"]
        labels = {**template["metadata"].get("labels", {}), "job-name": name}
        await self.core.create_namespaced_pod(
            self.namespace,
            {"metadata": {"name": pod_name, "labels": labels}, "spec": template["spec"]},
        )
        await self.batch.patch_namespaced_job_status(
            name,
            self.namespace,
            {"status": {"startTime": stamp, "active": 1}},
            _content_type=MERGE,
        )
        pod_spec = template["spec"]
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=self.workdir))
        volumes = await self._volumes(pod_spec, tmp)
        self.logs[pod_name] = {}
        self.environments[name] = {}
        start = time.monotonic()
        statuses: dict[str, list] = {"initContainerStatuses": [], "containerStatuses": []}
        code, message = 0, ""
        steps = [("initContainerStatuses", c) for c in pod_spec.get("initContainers") or []]
        steps += [("containerStatuses", c) for c in pod_spec["containers"]]
        for key, container in steps:
            if code != 0:
                break
            try:
                code, message = await self._run_container(pod_name, name, container, volumes, tmp)
            finally:  # as a kubelet tears a container down: nothing it mounted stays
                unmount_below(tmp)
            statuses[key].append(
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "message": message,
                            "startedAt": stamp,
                            "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "reason": "Completed" if code == 0 else "Error",
                        }
                    },
                }
            )
        self.durations[name] = time.monotonic() - start
        end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await self.core.patch_namespaced_pod_status(
            pod_name,
            self.namespace,
            {"status": {"phase": "Succeeded" if code == 0 else "Failed", **statuses}},
            _content_type=MERGE,
        )
        if code == 0:
            conditions = [
                {
                    "type": "SuccessCriteriaMet",
                    "status": "True",
                    "lastProbeTime": end,
                    "lastTransitionTime": end,
                },
                {
                    "type": "Complete",
                    "status": "True",
                    "lastProbeTime": end,
                    "lastTransitionTime": end,
                },
            ]
            status = {"active": 0, "succeeded": 1, "completionTime": end, "conditions": conditions}
        else:
            conditions = [
                {
                    "type": "FailureTarget",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "lastProbeTime": end,
                    "lastTransitionTime": end,
                },
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                    "lastProbeTime": end,
                    "lastTransitionTime": end,
                },
            ]
            status = {"active": 0, "failed": 1, "conditions": conditions}
        try:
            await self.batch.patch_namespaced_job_status(
                name, self.namespace, {"status": status}, _content_type=MERGE
            )
        except ApiException as e:
            if e.status != 404:  # cancelled meanwhile
                raise


# -- one build's Job, finished by hand ----------------------------------------------------


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def start_pod(kube, namespace: str, build_id: str) -> None:
    """The build Job's pod (``imgbuild-<id>-run``), once."""
    name = f"imgbuild-{build_id}"
    try:
        await client.CoreV1Api(kube).create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": f"{name}-run", "labels": {"job-name": name}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": "b"}]},
            },
        )
    except ApiException as e:
        if e.status != 409:
            raise


async def complete_job(kube, namespace: str, build_id: str, digest: str) -> None:
    """The Job controller and kubelet for one successful build: a finished pod whose
    termination message is the digest, and the Job's Complete status."""
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    name = f"imgbuild-{build_id}"
    pod = f"{name}-run"
    await start_pod(kube, namespace, build_id)
    start = _stamp()
    await core.patch_namespaced_pod_status(
        pod,
        namespace,
        {
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": "build",
                        "image": "b",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": 0,
                                "message": digest,
                                "reason": "Completed",
                                "startedAt": start,
                                "finishedAt": start,
                            }
                        },
                    }
                ],
            }
        },
        _content_type=MERGE,
    )
    end = _stamp()
    conditions = [
        {"type": t, "status": "True", "lastProbeTime": end, "lastTransitionTime": end}
        for t in ("SuccessCriteriaMet", "Complete")
    ]
    await batch.patch_namespaced_job_status(
        name,
        namespace,
        {
            "status": {
                "startTime": start,
                "completionTime": end,
                "succeeded": 1,
                "active": 0,
                "conditions": conditions,
            }
        },
        _content_type=MERGE,
    )
