"""``make demo``: the whole product on a real single-node Kubernetes cluster on this machine.

Starts etcd + kube-apiserver, a real node (containerd, kubelet, scheduler, controller-manager)
with a local registry, a local git server with two example repositories, and JupyterHub
started from the project's own ``jupyterhub_config.py`` (AICoESpawner and the image builder
as a hub-managed service). Pods and build Jobs run in real containers. Ctrl-C stops
everything and leaves nothing running.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

from kubernetes_asyncio import client

from .devcluster import ControlPlane, api_client, install_crds
from .devcluster.controlplane import REPO_ROOT
from .devcluster.gitserver import GitServer
from .devcluster.node import RealNode, processes_mentioning

NAMESPACE = "aicoe-demo"
EXAMPLE_REPOS = REPO_ROOT / "examples" / "repos"
EXAMPLE_CONFIG = REPO_ROOT / "jupyterhub_config.py"
CHP = REPO_ROOT / ".cache" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
MERGE = "application/merge-patch+json"
A = "opendatahub.io/"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


async def prepare_cluster(kubeconfig: Path, notebook_image: str) -> None:
    """CRDs, the demo namespace and one ready notebook ImageStream (the base image)."""
    api = await api_client(kubeconfig)
    try:
        await install_crds(api)
        await client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        custom = client.CustomObjectsApi(api)
        stream = {
            "apiVersion": "image.openshift.io/v1",
            "kind": "ImageStream",
            "metadata": {
                "name": "jupyterlab",
                "labels": {"opendatahub.io/notebook-image": "true"},
                "annotations": {
                    f"{A}notebook-image-name": "JupyterLab (Debian)",
                    f"{A}notebook-image-desc": "JupyterLab on Debian, built on this machine",
                    f"{A}notebook-image-order": "1",
                },
            },
            "spec": {
                "tags": [
                    {
                        "name": "latest",
                        "annotations": {f"{A}notebook-image-recommended": "true"},
                        "from": {"kind": "DockerImage", "name": notebook_image},
                    }
                ]
            },
        }
        await custom.create_namespaced_custom_object(
            "image.openshift.io", "v1", NAMESPACE, "imagestreams", stream
        )
        status = {"tags": [{"tag": "latest", "items": [{"dockerImageReference": notebook_image}]}]}
        await custom.patch_namespaced_custom_object_status(
            "image.openshift.io",
            "v1",
            NAMESPACE,
            "imagestreams",
            "jupyterlab",
            {"status": status},
            _content_type=MERGE,
        )
    finally:
        await api.close()


def hub_config(workdir: Path, port: int, node_ip: str) -> Path:
    """The example ``jupyterhub_config.py`` as a hub admin would use it, plus what only a
    laptop demo needs (where to listen, where to keep state)."""
    config = f"""
    # Written by `make demo`: the project's example config, then the demo's own settings.
    c = get_config()  # noqa
    load_subconfig({str(EXAMPLE_CONFIG)!r})  # noqa
    c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
    c.JupyterHub.hub_ip = {node_ip!r}          # pods reach the hub API on the node IP
    c.JupyterHub.hub_connect_ip = {node_ip!r}
    c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
    c.JupyterHub.db_url = "sqlite:///{workdir / "jupyterhub.sqlite"}"
    c.JupyterHub.cookie_secret_file = "{workdir / "jupyterhub_cookie_secret"}"
    c.JupyterHub.cleanup_servers = True
    c.KubeSpawner.storage_pvc_ensure = False
    c.Spawner.default_url = "/lab"
    """
    path = workdir / "jupyterhub_config.py"
    path.write_text(textwrap.dedent(config))
    return path


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"[demo] JupyterHub exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"[demo] no answer at {url} within {timeout} s")


def stop_process_group(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="public port of the hub")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".cache" / "demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")
    started = time.monotonic()
    stop = {"now": False}

    def handle(signum, frame):
        stop["now"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handle)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "jupyterhub.sqlite").unlink(missing_ok=True)

    plane = ControlPlane(workdir / "cluster", real_node=True)
    node: RealNode | None = None
    git: GitServer | None = None
    hub: subprocess.Popen | None = None
    try:
        say("starting etcd + kube-apiserver (built by tools/build.sh) ...")
        plane.start()
        say(f"Kubernetes API at {plane.server} ready in {plane.startup_seconds:.1f} s")
        say("starting a real node: containerd, kubelet, scheduler, controller-manager, registry")
        say("(the first run builds the notebook and builder images with buildah: minutes)")
        node = RealNode(plane, workdir / "node").start(images=("notebook", "builder"))
        say(f"node Ready in {node.timings['start']:.1f} s; pods on bridge {node.bridge}")
        git = GitServer(workdir / "git", address=node.node_ip).start()
        repos = {
            name: git.add_repo(
                name,
                EXAMPLE_REPOS / name,
                substitutions={"NOTEBOOK_IMAGE": node.images["notebook"]},
            )
            for name in sorted(p.name for p in EXAMPLE_REPOS.iterdir() if p.is_dir())
        }
        asyncio.run(prepare_cluster(plane.kubeconfig, node.images["notebook"]))

        config = hub_config(workdir, args.port, node.node_ip)
        env = dict(
            os.environ,
            KUBECONFIG=str(plane.kubeconfig),
            AICOE_NAMESPACE=NAMESPACE,
            AICOE_REGISTRY=node.registry,
            AICOE_BUILDER_IMAGE=node.images["builder"],
            AICOE_BUILDER_ALLOWED_HOSTS=node.node_ip,
            AICOE_BUILDER_PRIVATE_HOSTS=node.node_ip,
            AICOE_BUILDER_ALLOW_HTTP="true",
            AICOE_BUILDER_TLS_VERIFY="false",
        )
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with (workdir / "jupyterhub.log").open("ab") as hub_log:
            hub = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=workdir,
                env=env,
                stdout=hub_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{args.port}"
        wait_http(f"{url}/hub/api/", hub)
        wait_http(f"{url}/services/image-builder/health", hub)
        say("what runs where:")
        say(f"  JupyterHub          {url}  (log in with any name; 'admin' is an admin)")
        say(f"  image builder page  {url}/services/image-builder/")
        for name, repo in repos.items():
            say(f"  example repository  {repo}  ({name})")
        say(f"  registry            http://{node.registry}  (the node pulls from it)")
        say(f"  Kubernetes API      {plane.server}  (KUBECONFIG={plane.kubeconfig})")
        say(f"  logs                {workdir}/jupyterhub.log, {node.workdir}/*.log")
        say(f"ready in {time.monotonic() - started:.1f} s: open {url} and log in with any name")
        say("press Ctrl-C to stop")
        while not stop["now"] and hub.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        say("stopping ...")
        stop_process_group(hub)
        for pid in processes_mentioning(str(workdir)):  # the builder service, if still there
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if git is not None:
            git.stop()
        if node is not None:
            node.stop()
        plane.stop()
        say("stopped; nothing left running")


if __name__ == "__main__":
    main()
