"""``make demo``: JupyterHub with AICoESpawner on a local Kubernetes API server.

Starts etcd + kube-apiserver from tools/ on loopback, installs the ImageStream CRD, applies
example notebook ImageStreams (ready, digest-pinned), runs a fake kubelet whose pods run as
local ``jupyterhub-singleuser`` processes, and JupyterHub with the dummy authenticator.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

from kubernetes_asyncio import client

from .devcluster import BackgroundLoop, ControlPlane, FakeKubelet, api_client, install_crds
from .devcluster.cluster import load_manifests
from .devcluster.controlplane import CRD_DIR, REPO_ROOT, free_port
from .devcluster.podrunner import LocalPodRunner

NAMESPACE = "aicoe-demo"
DEMO_STREAMS = Path(__file__).resolve().parent / "devcluster" / "demo_imagestreams.yaml"
CHP = REPO_ROOT / ".cache" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
MERGE = "application/merge-patch+json"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


async def prepare_cluster(kubeconfig: Path) -> int:
    """CRD, namespace and ready example ImageStreams; returns the number of streams."""
    api = await api_client(kubeconfig)
    try:
        await install_crds(api, [CRD_DIR / "imagestreams.image.openshift.io.yaml"])
        await client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        custom = client.CustomObjectsApi(api)
        streams = load_manifests(DEMO_STREAMS)
        for stream in streams:
            name = stream["metadata"]["name"]
            await custom.create_namespaced_custom_object(
                "image.openshift.io", "v1", NAMESPACE, "imagestreams", stream
            )
            tags = []
            for tag in stream["spec"]["tags"]:
                digest = hashlib.sha256(f"{name}:{tag['name']}".encode()).hexdigest()
                ref = f"quay.io/opendatahub/{name}@sha256:{digest}"
                tags.append({"tag": tag["name"], "items": [{"dockerImageReference": ref}]})
            await custom.patch_namespaced_custom_object_status(
                "image.openshift.io",
                "v1",
                NAMESPACE,
                "imagestreams",
                name,
                {"status": {"tags": tags}},
                _content_type=MERGE,
            )
        return len(streams)
    finally:
        await api.close()


def hub_config(workdir: Path, port: int, hub_port: int, api_port: int) -> Path:
    config = f"""
    # Written by `make demo`: AICoESpawner on the local control plane.
    c = get_config()  # noqa
    c.JupyterHub.ip = "127.0.0.1"
    c.JupyterHub.port = {port}
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = {hub_port}
    c.JupyterHub.hub_connect_ip = "127.0.0.1"
    c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
    c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
    c.ConfigurableHTTPProxy.auth_token = {secrets.token_hex(16)!r}
    c.JupyterHub.db_url = "sqlite:///{workdir / "jupyterhub.sqlite"}"
    c.JupyterHub.cookie_secret_file = "{workdir / "jupyterhub_cookie_secret"}"
    c.JupyterHub.authenticator_class = "dummy"   # any user name, any password
    c.Authenticator.allow_all = True
    c.Authenticator.admin_users = {{"admin"}}
    c.JupyterHub.spawner_class = "aicoe"
    c.KubeSpawner.namespace = {NAMESPACE!r}
    c.KubeSpawner.storage_pvc_ensure = False
    c.KubeSpawner.start_timeout = 120
    c.KubeSpawner.http_timeout = 90
    c.Spawner.default_url = "/lab"
    c.AICoESpawner.allow_custom_resources = True
    c.AICoESpawner.max_gpus = 1
    """
    path = workdir / "jupyterhub_config.py"
    path.write_text(textwrap.dedent(config))
    return path


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"[demo] JupyterHub exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"[demo] JupyterHub did not answer at {url} within {timeout} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="public port of the hub")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".cache" / "demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")
    started = time.monotonic()
    say("Pods run as LOCAL PROCESSES on this machine: a fake kubelet starts each spawned pod's")
    say("jupyterhub-singleuser command with the pod's environment on its own 127.0.0.N address.")
    say("The Kubernetes API server, the ImageStreams and the pods themselves are real objects.")

    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("jupyterhub.sqlite",):
        (workdir / stale).unlink(missing_ok=True)

    plane = ControlPlane()
    say("starting etcd + kube-apiserver (built by tools/build.sh) ...")
    plane.start()
    say(f"Kubernetes API at {plane.server} ready in {plane.startup_seconds:.1f} s")
    say(f"kubeconfig: {plane.kubeconfig}")
    loop = BackgroundLoop("demo-kubelet")
    hub: subprocess.Popen | None = None
    runner_holder: list[LocalPodRunner] = []
    try:
        count = asyncio.run(prepare_cluster(plane.kubeconfig))
        say(f"applied {count} example notebook ImageStreams in namespace {NAMESPACE}")

        async def kubelet_main() -> None:
            api = await api_client(plane.kubeconfig)
            runner = LocalPodRunner(api, workdir / "pods")
            runner_holder.append(runner)
            kubelet = FakeKubelet(
                plane.kubeconfig, on_pod=runner.start_pod, on_delete=runner.stop_pod
            )
            try:
                await kubelet.run()
            finally:
                await runner.stop_all()
                await api.close()

        loop.start(kubelet_main)

        config = hub_config(workdir, args.port, free_port(), free_port())
        env = dict(os.environ, KUBECONFIG=str(plane.kubeconfig))
        hub_log = (workdir / "jupyterhub.log").open("ab")
        hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=workdir,
            env=env,
            stdout=hub_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{args.port}"
        wait_http(f"{url}/hub/api/", hub)
        say(f"ready in {time.monotonic() - started:.1f} s: open {url} and log in with any name")
        say(f"hub log: {workdir / 'jupyterhub.log'}; press Ctrl-C to stop")
        stop = {"now": False}

        def handle(signum, frame):
            stop["now"] = True

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        while not stop["now"] and hub.poll() is None:
            time.sleep(0.5)
    finally:
        say("stopping ...")
        if hub is not None and hub.poll() is None:
            os.killpg(hub.pid, signal.SIGTERM)
            try:
                hub.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(hub.pid, signal.SIGKILL)
        loop.stop()
        for runner in runner_holder:
            for proc in runner.processes.values():
                if proc.returncode is None:
                    os.killpg(proc.pid, signal.SIGTERM)
        plane.stop()


if __name__ == "__main__":
    main()
