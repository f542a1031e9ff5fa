"""Runs each pod's notebook command as a local process (for the demo): the pod gets its own
loopback address (127.0.0.N) so that many servers can listen on the same port."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kubernetes_asyncio import client

log = logging.getLogger("aicoe.devcluster.podrunner")

_ENV_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_env_value(value: str, defined: dict[str, str]) -> str:
    """What the kubelet does to an env value: ``$$`` becomes ``$`` and ``$(NAME)`` becomes
    the value of an earlier variable NAME (left as is when NAME is undefined)."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return defined.get(match.group(1), match.group(0))

    return _ENV_REF.sub(replace, value)


class LocalPodRunner:
    """Starts ``command + args`` of a pod's first container with the pod's environment
    (literal values and ``secretKeyRef``s) and stops it when the pod is deleted."""

    def __init__(self, api: client.ApiClient, workdir: Path | None = None) -> None:
        self.api = api
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aicoe-pods-"))
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self._next_ip = 10

    def _address(self) -> str:
        self._next_ip = self._next_ip + 1 if self._next_ip < 250 else 10
        return f"127.0.0.{self._next_ip}"

    async def start_pod(self, pod: dict[str, Any]) -> str:
        """Start the pod's process; return the pod IP it listens on."""
        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        await self.stop_pod(pod)
        container = pod["spec"]["containers"][0]
        pod_ip = self._address()
        env = await self._environment(meta["namespace"], container.get("env", []))
        service_url = env.get("JUPYTERHUB_SERVICE_URL")
        if service_url:  # listen on this pod's own loopback address
            parts = urlsplit(service_url)
            env["JUPYTERHUB_SERVICE_URL"] = urlunsplit(
                parts._replace(netloc=f"{pod_ip}:{parts.port or 8888}")
            )
        home = self.workdir / meta["name"]
        home.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        env.update(
            HOME=str(home),
            PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
        )
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        if not argv:
            argv = ["jupyterhub-singleuser"]
        if os.geteuid() == 0 and Path(argv[0]).name.startswith("jupyter"):
            argv.append("--allow-root")  # a container would run as its image's user
        executable = shutil.which(argv[0], path=env["PATH"]) or argv[0]
        log_file = (home / "server.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            executable,
            *argv[1:],
            env=env,
            cwd=home,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
        log_file.close()
        self.processes[key] = proc
        log.info("pod %s: started %s on %s (pid %s)", key, argv[0], pod_ip, proc.pid)
        return pod_ip

    async def stop_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        proc = self.processes.pop(f"{meta['namespace']}/{meta['name']}", None)
        if proc is None or proc.returncode is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)

    async def stop_all(self) -> None:
        for key in list(self.processes):
            ns, name = key.split("/", 1)
            await self.stop_pod({"metadata": {"namespace": ns, "name": name}})

    async def _environment(self, namespace: str, entries: list[dict[str, Any]]) -> dict[str, str]:
        core = client.CoreV1Api(self.api)
        env: dict[str, str] = {}
        for entry in entries:
            name = entry["name"]
            if "value" in entry or "valueFrom" not in entry:
                env[name] = expand_env_value(entry.get("value", ""), env)
                continue
            ref = entry["valueFrom"].get("secretKeyRef")
            if ref:
                secret = await core.read_namespaced_secret(ref["name"], namespace)
                raw = (secret.data or {}).get(ref["key"])
                if raw is not None:
                    env[name] = base64.b64decode(raw).decode()
        return env
