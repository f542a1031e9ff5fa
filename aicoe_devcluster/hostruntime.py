"""A container runtime for the fake kubelet that runs a pod's containers as processes on this
machine (buildah with vfs storage and chroot isolation, for build Jobs): each container's
command with its env, in a folder of its own, seeing only the volumes it mounts (emptyDirs and
Secrets as host folders: paths under a mount are mapped to them). What ran is kept for tests:
each container's log and environment, and each pod's duration."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kubelet import JOB_NAME_LABELS, Pod, SecretReader


def unmount_below(folder: Path) -> None:
    """Unmount whatever is mounted below ``folder`` (buildah's overlay storage mounts its
    layers and itself), deepest first, so that the folder can be removed."""
    prefix = str(folder.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@dataclass
class HostSandbox:
    """One pod on this machine: its folder and its volumes' host folders."""

    pod: str
    job: str
    folder: Path
    volumes: dict[str, Path]
    started: float = field(default_factory=time.monotonic)


class HostProcessRuntime:
    """Runs containers as processes under ``workdir`` (a folder per pod)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        #: pod name -> container name -> its log file
        self.logs: dict[str, dict[str, Path]] = {}
        #: job name (the pod's, else the pod name) -> container name -> the env it ran with
        self.environments: dict[str, dict[str, dict[str, str]]] = {}
        #: job name -> seconds from the sandbox to the end of its last container so far
        self.durations: dict[str, float] = {}

    async def create_sandbox(self, pod: Pod, read_secret: SecretReader) -> HostSandbox:
        """The pod's folder, with each volume as a host folder (Secrets with their keys)."""
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        job = next((labels[k] for k in JOB_NAME_LABELS if k in labels), meta["name"])
        folder = Path(tempfile.mkdtemp(prefix="build-", dir=self.workdir))
        volumes = {}
        for volume in pod["spec"].get("volumes") or []:
            path = folder / "volumes" / volume["name"]
            path.mkdir(parents=True)
            if "secret" in volume:
                for key, value in (await read_secret(volume["secret"]["secretName"])).items():
                    (path / key).write_bytes(value)
            volumes[volume["name"]] = path
        self.logs[meta["name"]] = {}
        self.environments[job] = {}
        return HostSandbox(meta["name"], job, folder, volumes)

    async def run_container(
        self, sandbox: HostSandbox, container: dict[str, Any]
    ) -> tuple[int, str]:
        """Run one container's command; then unmount what it mounted, as a kubelet tears a
        container down. Cancelled: its process group is killed."""
        try:
            return await self._run(sandbox, container)
        finally:
            unmount_below(sandbox.folder)
            self.durations[sandbox.job] = time.monotonic() - sandbox.started

    async def _run(self, sandbox: HostSandbox, container: dict[str, Any]) -> tuple[int, str]:
        mounts = {
            m["mountPath"]: sandbox.volumes[m["name"]] for m in container.get("volumeMounts") or []
        }

        def host(value: str) -> str:
            for mount, path in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    return str(path) + value[len(mount) :]
            return value

        env = {e["name"]: host(e.get("value", "")) for e in container.get("env") or []}
        own = sandbox.folder / container["name"]
        own.mkdir()
        term = own / "termination-log"
        env.update(
            PATH=os.environ["PATH"],
            HOME=str(own),
            TERMINATION_LOG=str(term),
            BUILD_TERMINATION_LOG=str(term),
            TMPDIR=str(own),
        )
        self.environments[sandbox.job][container["name"]] = env
        log_path = own / "log"
        self.logs[sandbox.pod][container["name"]] = log_path
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *container["command"],
                *(container.get("args") or []),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=own,
                start_new_session=True,
            )
            try:
                code = await proc.wait()
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                raise
        message = term.read_text() if term.exists() else ""
        if (
            not message
            and code != 0
            and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            message = "\n".join(log_path.read_text(errors="replace").splitlines()[-80:])[-2048:]
        return code, message

    async def read_log(self, namespace: str, pod: str, container: str | None = None) -> str | None:
        """The log of ``container`` of ``pod`` (all containers' when None), None if none."""
        paths = self.logs.get(pod) or {}
        chosen = list(paths.values()) if container is None else [paths.get(container)]
        texts = [p.read_text(errors="replace") for p in chosen if p is not None and p.exists()]
        return "".join(texts) if texts else None
