"""Small helpers for writing ImageStreams and reading pods in tests."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

IMAGE_API = ("image.openshift.io", "v1")
MERGE = "application/merge-patch+json"
LABEL = {"opendatahub.io/notebook-image": "true"}


def digest_for(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def reference(namespace: str, stream: str, tag: str) -> str:
    return f"registry.local/{namespace}/{stream}@{digest_for(f'{namespace}/{stream}:{tag}')}"


async def create_imagestream(
    kube: client.ApiClient,
    namespace: str,
    name: str,
    tags: dict[str, dict[str, str]],
    *,
    ready: list[str] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create a notebook ImageStream with spec tags (name -> annotations) and mark the tags in
    ``ready`` (default: all) ready in status with a digest-pinned reference."""
    custom = client.CustomObjectsApi(kube)
    body = {
        "apiVersion": "image.openshift.io/v1",
        "kind": "ImageStream",
        "metadata": {
            "name": name,
            "labels": labels if labels is not None else LABEL,
            "annotations": annotations or {},
        },
        "spec": {"tags": [{"name": t, "annotations": a} for t, a in tags.items()]},
    }
    created = await custom.create_namespaced_custom_object(
        *IMAGE_API, namespace, "imagestreams", body
    )
    ready_tags = list(tags) if ready is None else ready
    if ready_tags:
        created = await set_ready(kube, namespace, name, ready_tags)
    return created


async def set_ready(
    kube: client.ApiClient, namespace: str, name: str, tags: list[str]
) -> dict[str, Any]:
    custom = client.CustomObjectsApi(kube)
    status = {
        "tags": [
            {
                "tag": t,
                "items": [
                    {"dockerImageReference": reference(namespace, name, t), "image": digest_for(t)}
                ],
            }
            for t in tags
        ]
    }
    return await custom.patch_namespaced_custom_object_status(
        *IMAGE_API, namespace, "imagestreams", name, {"status": status}, _content_type=MERGE
    )


async def delete_imagestream(kube: client.ApiClient, namespace: str, name: str) -> None:
    await client.CustomObjectsApi(kube).delete_namespaced_custom_object(
        *IMAGE_API, namespace, "imagestreams", name
    )


async def user_pods(kube: client.ApiClient, namespace: str, user: str) -> list[dict[str, Any]]:
    core = client.CoreV1Api(kube)
    response = await core.list_namespaced_pod(
        namespace, label_selector="component=singleuser-server", _preload_content=False
    )
    pods = (await response.json())["items"]
    return [
        p
        for p in pods
        if p["metadata"].get("annotations", {}).get("hub.jupyter.org/username") == user
    ]


async def wait_for(predicate, timeout: float = 10, interval: float = 0.05):
    """Await ``predicate()`` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def ignore_404(coro) -> None:
    try:
        await coro
    except ApiException as e:
        if e.status != 404:
            raise


def container(pod: dict[str, Any]) -> dict[str, Any]:
    """The notebook container of a spawned pod (the first)."""
    return pod["spec"]["containers"][0]
