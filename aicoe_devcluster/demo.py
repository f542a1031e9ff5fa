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

from . import ControlPlane, api_client, install_crds
from .controlplane import REPO_ROOT, free_port, this_checkout_env
from .gitserver import GitServer
from .node import RealNode, processes_in, processes_mentioning

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
        await create_notebook_stream(api, NAMESPACE, notebook_image)
    finally:
        await api.close()


async def create_notebook_stream(api: client.ApiClient, namespace: str, image: str) -> None:
    """ImageStream ``jupyterlab`` offering ``image`` (the notebook image built on this
    machine) as a ready, recommended tag, as the image import controller would leave it."""
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
                    "from": {"kind": "DockerImage", "name": image},
                    # the node's registry speaks plain HTTP: the builder's import may verify it
                    "importPolicy": {"insecure": True},
                }
            ]
        },
    }
    await custom.create_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams", stream
    )
    status = {"tags": [{"tag": "latest", "items": [{"dockerImageReference": image}]}]}
    await custom.patch_namespaced_custom_object_status(
        "image.openshift.io",
        "v1",
        namespace,
        "imagestreams",
        "jupyterlab",
        {"status": status},
        _content_type=MERGE,
    )


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
    c.JupyterHub.hub_port = {free_port()}      # free ports: nothing else may hold 8081/8001
    c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
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


def wait_http(
    url: str, proc: subprocess.Popen, timeout: float = 90, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            raise SystemExit(f"[demo] JupyterHub exited with {proc.returncode}\n{tail}")
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


class Demo:
    """The product on a cluster with a real node: example repositories on a git server that
    pods reach, a base notebook ImageStream, and JupyterHub from the example config with the
    builder as a hub-managed service. ``extra_config`` is appended to the hub's config;
    ``extra_env``: more builder settings (``AICOE_BUILDER_*``, e.g. the package index)."""

    def __init__(
        self,
        plane: ControlPlane,
        node: RealNode,
        workdir: Path,
        port: int,
        extra_config: str = "",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.plane, self.node = plane, node
        self.extra_env = dict(extra_env or {})
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.builder_url = f"{self.url}/services/image-builder"
        self.extra_config = extra_config
        self.git: GitServer | None = None
        self.hub: subprocess.Popen | None = None
        self.repos: dict[str, str] = {}
        self.hub_log = workdir / "jupyterhub.log"

    def start(self) -> Demo:
        node = self.node
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "jupyterhub.sqlite").unlink(missing_ok=True)
        node.ensure_image("builder")
        self.git = GitServer(self.workdir / "git", address=node.node_ip).start()
        self.repos = {
            name: self.git.add_repo(
                name,
                EXAMPLE_REPOS / name,
                substitutions={"NOTEBOOK_IMAGE": node.images["notebook"]},
            )
            for name in sorted(p.name for p in EXAMPLE_REPOS.iterdir() if p.is_dir())
        }
        asyncio.run(prepare_cluster(self.plane.kubeconfig, node.images["notebook"]))
        config = hub_config(self.workdir, self.port, node.node_ip)
        if self.extra_config:
            config.write_text(config.read_text() + textwrap.dedent(self.extra_config))
        env = dict(
            this_checkout_env(dict(os.environ)),
            KUBECONFIG=str(self.plane.kubeconfig),
            AICOE_NAMESPACE=NAMESPACE,
            AICOE_REGISTRY=node.registry,
            AICOE_BUILDER_IMAGE=node.images["builder"],
            AICOE_BUILDER_ALLOWED_HOSTS=node.node_ip,
            AICOE_BUILDER_PRIVATE_HOSTS=node.node_ip,
            AICOE_BUILDER_ALLOW_HTTP="true",
            AICOE_BUILDER_TLS_VERIFY="false",
            # environment builds on the local notebook image (Python 3.11): the default
            # (quay.io) is not reachable from this machine's node
            AICOE_BUILDER_BASE_IMAGE=node.images["notebook"],
            AICOE_BUILDER_PYTHON_BASE_IMAGES=f"3.11={node.images['notebook']}",
            # environment images kept on the node: a rebuild after a notebook change does not
            # pull its environment again (the node's work folder goes with the node)
            AICOE_BUILDER_BUILD_NODE_IMAGE_STORE=str(node.workdir / "build-images"),
            # a port of its own: a builder left over from another run never answers for it
            IMAGE_BUILDER_PORT=str(free_port()),
            **self.extra_env,
        )
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.hub_log.open("ab") as hub_log:
            self.hub = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=self.workdir,
                env=env,
                stdout=hub_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_http(f"{self.url}/hub/api/", self.hub, log=self.hub_log)
        wait_http(f"{self.builder_url}/health", self.hub, log=self.hub_log)
        return self

    def stop(self) -> None:
        stop_process_group(self.hub)
        # the builder and the proxy, if still there (they run in sessions of their own)
        for pid in {*processes_mentioning(str(self.workdir)), *processes_in(self.workdir)}:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.git is not None:
            self.git.stop()

    def describe(self) -> list[str]:
        """What runs where, for the newcomer."""
        lines = [
            f"  JupyterHub          {self.url}  (log in with any name; 'admin' is an admin)",
            f"  image builder page  {self.builder_url}/",
        ]
        lines += [f"  example repository  {url}  ({name})" for name, url in self.repos.items()]
        lines += [
            f"  registry            http://{self.node.registry}  (the node pulls from it)",
            f"  Kubernetes API      {self.plane.server}  (KUBECONFIG={self.plane.kubeconfig})",
            f"  logs                {self.hub_log}, {self.node.workdir}/*.log",
        ]
        return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="public port of the hub")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".cache" / "demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")
    started = time.monotonic()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    # Ctrl-C stops everything, also when started from a shell that ignores SIGINT in
    # background jobs (the ignored disposition is inherited)
    signal.signal(signal.SIGINT, interrupt)
    workdir = args.workdir.resolve()
    plane = ControlPlane(workdir / "cluster", real_node=True)
    node: RealNode | None = None
    demo: Demo | None = None
    try:
        say("starting etcd + kube-apiserver (built by tools/build.sh) ...")
        plane.start()
        say(f"Kubernetes API at {plane.server} ready in {plane.startup_seconds:.1f} s")
        say("starting a real node: containerd, kubelet, scheduler, controller-manager, registry")
        say("(the first run builds the notebook and builder images with buildah: minutes)")
        node = RealNode(plane).start(images=("notebook", "builder"))
        say(f"node Ready in {node.timings['start']:.1f} s; pods run on bridge {node.bridge}")
        demo = Demo(plane, node, workdir, args.port).start()
        say("what runs where:")
        for line in demo.describe():
            say(line)
        say(
            f"ready in {time.monotonic() - started:.1f} s: open {demo.url} and log in with any name"
        )
        say("build an example repository on the builder page, then Launch it; Ctrl-C stops all")
        assert demo.hub is not None
        while demo.hub.poll() is None:
            time.sleep(0.5)
        say(f"JupyterHub exited with {demo.hub.returncode}; see {demo.hub_log}")
    except KeyboardInterrupt:
        pass
    finally:
        # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping ...")
        if demo is not None:
            demo.stop()
        if node is not None:
            node.stop()
        plane.stop()
        say("stopped; nothing left running")


if __name__ == "__main__":
    main()
