"""Pre-pulling on the real node: a newly registered image is on the node (containerd's image
list) before the first spawn, and its first start is timed against a cold pull.

Two fresh images of notebook size are made for each run (the project's notebook image with a
unique file added to its one layer, so no layer is shared with anything on the node), pushed to
the node's registry: one is started cold, the other registered as an ImageStream tag while the
controller (in this process) and the chart's DaemonSet (on the node) run.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from harness.helm_chart import apply, one, render
from harness.kube import MERGE, wait_for
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import REPO_ROOT
from aicoe_spawner.prepuller.controller import PullerController
from aicoe_spawner.prepuller.plan import Limits
from aicoe_spawner.watch import ImageStreamWatch

REPOSITORY = "aicoe/prepull-fresh"
NAME = "r-aicoe-spawner-image-puller"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "prepuller"


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes to ``target``."""

    def __init__(self, target) -> None:
        self.target, self.sha, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.target.write(data)


def _request(url: str, method: str, data=None, headers=None) -> urllib.request.addinfourl:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(request, timeout=120)


def _blob(registry: str, digest: str) -> bytes:
    with _request(f"http://{registry}/v2/aicoe/notebook/blobs/{digest}", "GET") as r:
        return r.read()


def _upload(registry: str, path_or_bytes, digest: str, size: int) -> None:
    with _request(f"http://{registry}/v2/{REPOSITORY}/blobs/uploads/", "POST") as r:
        location = r.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    body = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb")
    try:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        _request(f"{location}{sep}digest={digest}", "PUT", body, headers).close()
    finally:
        if not isinstance(body, bytes):
            body.close()


def fresh_image(registry: str, notebook_ref: str, workdir: Path) -> tuple[str, list[str]]:
    """Push the notebook image with a unique file prepended to its layer (a new diff ID, so
    the node shares nothing of it); returns its reference by digest and its blob digests."""
    digest = notebook_ref.rpartition("@")[2]
    headers = {"Accept": OCI_MANIFEST}
    url = f"http://{registry}/v2/aicoe/notebook/manifests/{digest}"
    with _request(url, "GET", headers=headers) as r:
        manifest = json.loads(r.read())
    (layer,) = manifest["layers"]
    config = json.loads(_blob(registry, manifest["config"]["digest"]))
    marker = uuid.uuid4().hex.encode()
    path = workdir / f"layer-{marker.decode()}.tar.gz"
    with open(path, "wb") as out:
        compressed = _Hashing(out)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=1, mtime=0) as gz:
            plain = _Hashing(gz)
            info = tarfile.TarInfo(f"etc/aicoe-fresh-{marker.decode()}")
            info.size = len(marker)
            plain.write(
                info.tobuf(format=tarfile.PAX_FORMAT) + marker + b"\0" * (-len(marker) % 512)
            )
            url = f"http://{registry}/v2/aicoe/notebook/blobs/{layer['digest']}"
            with _request(url, "GET") as r, gzip.GzipFile(fileobj=r) as source:
                while chunk := source.read(1 << 20):
                    plain.write(chunk)
    layer_digest = f"sha256:{compressed.sha.hexdigest()}"
    _upload(registry, path, layer_digest, compressed.size)
    path.unlink()
    config["rootfs"]["diff_ids"] = [f"sha256:{plain.sha.hexdigest()}"]
    config_bytes = json.dumps(config).encode()
    config_digest = f"sha256:{hashlib.sha256(config_bytes).hexdigest()}"
    _upload(registry, config_bytes, config_digest, len(config_bytes))
    manifest["config"] = {**manifest["config"], "digest": config_digest, "size": len(config_bytes)}
    manifest["layers"] = [
        {"mediaType": LAYER_GZIP, "digest": layer_digest, "size": compressed.size}
    ]
    manifest.pop("annotations", None)
    body = json.dumps(manifest).encode()
    tag = marker.decode()[:16]
    url = f"http://{registry}/v2/{REPOSITORY}/manifests/{tag}"
    with _request(url, "PUT", body, {"Content-Type": OCI_MANIFEST}) as r:
        pushed = r.headers["Docker-Content-Digest"]
    return f"{registry}/{REPOSITORY}@{pushed}", [pushed, layer_digest, config_digest]


def remove_from_registry(registry: str, digests: list[str]) -> None:
    """The fresh images' manifest and blobs go again (the registry storage is a shared cache)."""
    manifest, *blobs = digests
    for kind, digest in (("manifests", manifest), *(("blobs", b) for b in blobs)):
        try:
            _request(f"http://{registry}/v2/{REPOSITORY}/{kind}/{digest}", "DELETE").close()
        except urllib.error.HTTPError:
            pass


def _ctr_list(node, what: str) -> set[str]:
    """``ctr <what> ls -q`` on the node, in the CRI namespace."""
    out = subprocess.run(
        ["ctr", "--address", str(node.socket), "--namespace", "k8s.io", what, "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return set(out.split())


def node_images(node) -> set[str]:
    """containerd's image list on the node (the CRI namespace)."""
    return _ctr_list(node, "images")


def node_tasks(node) -> set[str]:
    """The containers containerd runs on the node."""
    return _ctr_list(node, "tasks")


@pytest_asyncio.fixture
async def node_namespace(node_cluster, node_kube):
    """A namespace for the test; after it, its pods' containers are gone from the node too
    (the node's teardown must not meet the kubelet still removing them)."""
    name = f"prepull-{uuid.uuid4().hex[:8]}"
    before = node_tasks(node_cluster.node)
    await client.CoreV1Api(node_kube).create_namespace({"metadata": {"name": name}})
    yield name
    await delete_namespace(node_kube, name)

    async def gone():
        return not (await asyncio.to_thread(node_tasks, node_cluster.node) - before)

    await wait_for(gone, timeout=60, interval=0.5)
    await asyncio.sleep(2)  # the kubelet removes the pods' cgroups after their containers


async def first_start(kube, namespace: str, image: str, name: str) -> float:
    """Seconds from creating a pod on ``image`` to its container running."""
    core = client.CoreV1Api(kube)
    body = {
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}],
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
        },
    }
    started = time.monotonic()
    await core.create_namespaced_pod(namespace, body)
    while True:
        pod = await core.read_namespaced_pod(name, namespace)
        statuses = pod.status.container_statuses or []
        if statuses and statuses[0].state.running:
            return time.monotonic() - started
        if time.monotonic() - started > 150:
            raise AssertionError(f"{name} not running: {pod.status}")
        await asyncio.sleep(0.1)


def imagestream(name: str, image: str) -> dict:
    return {
        "apiVersion": "image.openshift.io/v1",
        "kind": "ImageStream",
        "metadata": {"name": name, "labels": {"opendatahub.io/notebook-image": "true"}},
        "spec": {"tags": [{"name": "v1", "annotations": {}}]},
    }


@pytest.mark.timeout(300)
async def test_a_new_image_is_on_the_node_before_the_first_spawn(
    node_cluster, node_kube, node_namespace, tmp_path
):
    node = node_cluster.node
    registry = node.registry
    notebook = node.ensure_image("notebook")
    timings: dict[str, float] = {}
    t = time.monotonic()
    cold, cold_blobs = await asyncio.to_thread(fresh_image, registry, notebook, tmp_path)
    warm, warm_blobs = await asyncio.to_thread(fresh_image, registry, notebook, tmp_path)
    timings["making two fresh images"] = time.monotonic() - t
    try:
        assert not {cold, warm} & node_images(node)
        # The chart's DaemonSet, with the node's own images for the helper and pause.
        ds = one(render(namespace=node_namespace, release="r"), "DaemonSet", NAME)
        spec = ds["spec"]["template"]["spec"]
        spec["initContainers"][0]["image"] = spec["containers"][0]["image"] = node.images["pause"]
        await apply(node_kube, [ds], node_namespace)

        # Without the pre-puller: the first start pulls the whole image.
        timings["first start, cold"] = await first_start(node_kube, node_namespace, cold, "cold")

        custom = client.CustomObjectsApi(node_kube)
        watch = ImageStreamWatch(custom, (node_namespace,), "opendatahub.io/notebook-image=true")
        watch.start()
        controller = PullerController(node_kube, watch, node_namespace, NAME, Limits())
        task = asyncio.create_task(controller.run())
        try:
            # The build registers its tag (as the builder does: status at the digest).
            registered = time.monotonic()
            await custom.create_namespaced_custom_object(
                "image.openshift.io",
                "v1",
                node_namespace,
                "imagestreams",
                imagestream("fresh", warm),
            )
            await custom.patch_namespaced_custom_object_status(
                "image.openshift.io",
                "v1",
                node_namespace,
                "imagestreams",
                "fresh",
                {"status": {"tags": [{"tag": "v1", "items": [{"dockerImageReference": warm}]}]}},
                _content_type=MERGE,
            )

            patches = controller.patches

            core = client.CoreV1Api(node_kube)
            old_pods = {
                p.metadata.uid for p in (await core.list_namespaced_pod(node_namespace)).items
            }

            async def pulled():
                if controller.patches > patches and "patched" not in marks:
                    marks["patched"] = time.monotonic() - registered
                if "pod" not in marks:
                    pods = (await core.list_namespaced_pod(node_namespace)).items
                    if any(p.metadata.uid not in old_pods for p in pods):
                        marks["pod"] = time.monotonic() - registered
                return warm in await asyncio.to_thread(node_images, node)

            marks: dict[str, float] = {}
            await wait_for(pulled, timeout=150, interval=0.2)
            timings["registered -> DaemonSet patched"] = marks.get("patched", float("nan"))
            timings["registered -> new puller pod created"] = marks.get("pod", float("nan"))
            timings["registered -> on the node (pre-puller)"] = time.monotonic() - registered
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await watch.stop()
        timings["first start, pre-pulled"] = await first_start(
            node_kube, node_namespace, warm, "warm"
        )
    finally:
        await asyncio.to_thread(remove_from_registry, registry, cold_blobs)
        await asyncio.to_thread(remove_from_registry, registry, warm_blobs)
    report = "\n".join(f"  {k}: {v:.1f} s" for k, v in timings.items())
    text = f"pre-puller on the real node (image {notebook.rpartition('/')[2]}):\n{report}\n"
    print("\n" + text)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.txt").write_text(text)
    assert timings["first start, pre-pulled"] < timings["first start, cold"]
