"""The pre-puller controller against the real API server: ImageStreams change, the DaemonSet's
init containers follow (to the digests), across a controller restart and a dropped watch."""

from __future__ import annotations

import asyncio
import contextlib
import os

from harness.kube import (
    IMAGE_API,
    MERGE,
    create_imagestream,
    delete_imagestream,
    reference,
    set_ready,
    wait_for,
)
from harness.registry import Registry
from kubernetes_asyncio import client

from aicoe_spawner.prepuller.controller import PullerController
from aicoe_spawner.prepuller.daemonset import pulled_images
from aicoe_spawner.prepuller.plan import Limits
from aicoe_spawner.prepuller.sizes import ImageSizes
from aicoe_spawner.watch import ImageStreamWatch

SELECTOR = "opendatahub.io/notebook-image=true"
REC = {"opendatahub.io/workbench-image-recommended": "true"}
DS = "puller"


def daemonset_body() -> dict:
    """A puller DaemonSet as the chart makes it: the copier init container, a pause container."""
    labels = {"app": "puller"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": DS},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": [
                        {"name": "copy-busybox", "image": "busybox", "command": ["cp"]}
                    ],
                    "containers": [{"name": "pause", "image": "pause"}],
                    "volumes": [{"name": "aicoe-puller", "emptyDir": {}}],
                },
            },
        },
    }


async def read_ds(kube, namespace) -> dict:
    response = await client.AppsV1Api(kube).read_namespaced_daemon_set(
        DS, namespace, _preload_content=False
    )
    return await response.json()


@contextlib.asynccontextmanager
async def running(kube, namespace, limits: Limits | None = None, resync=60.0, **kwargs):
    watch = ImageStreamWatch(client.CustomObjectsApi(kube), (namespace,), SELECTOR, **kwargs)
    watch.start()
    controller = PullerController(
        kube, watch, namespace, DS, limits or Limits(), resync=resync, debounce=0.05
    )
    task = asyncio.create_task(controller.run())
    try:
        yield controller
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await watch.stop()


async def pulls_become(kube, namespace, wanted: list[str], timeout: float = 15) -> dict:
    async def check():
        ds = await read_ds(kube, namespace)
        return ds if pulled_images(ds) == wanted else None

    try:
        return await wait_for(check, timeout=timeout)
    except TimeoutError:
        ds = await read_ds(kube, namespace)
        raise AssertionError(f"pulls {pulled_images(ds)}, wanted {wanted}") from None


def ref(namespace, stream, tag):
    return reference(namespace, stream, tag)


async def test_init_containers_follow_the_catalog(kube, namespace):
    await client.AppsV1Api(kube).create_namespaced_daemon_set(namespace, daemonset_body())
    await create_imagestream(
        kube,
        namespace,
        "minimal",
        {"2025.1": {}, "2025.2": REC},
        annotations={"opendatahub.io/notebook-image-order": "1"},
    )
    await create_imagestream(kube, namespace, "pending", {"v1": {}}, ready=[])
    async with running(kube, namespace, Limits(max_images=2)) as controller:
        ds = await pulls_become(kube, namespace, [ref(namespace, "minimal", "2025.2")])
        init = ds["spec"]["template"]["spec"]["initContainers"]
        assert init[0]["name"] == "copy-busybox"  # the chart's own container stays first
        assert init[1]["command"] == ["/aicoe-puller/busybox", "true"]

        # a build finishes: its digest is pulled before anyone asks for it
        await set_ready(kube, namespace, "pending", ["v1"])
        await pulls_become(
            kube, namespace, [ref(namespace, "minimal", "2025.2"), ref(namespace, "pending", "v1")]
        )
        # a third image is over the limit of 2 (catalog order: default order 100 < new)
        await create_imagestream(kube, namespace, "zz-third", {"v1": {}})
        # a change that does not change the list patches nothing
        patches = controller.patches
        generation = (await read_ds(kube, namespace))["metadata"]["generation"]
        await client.CustomObjectsApi(kube).patch_namespaced_custom_object(
            *IMAGE_API,
            namespace,
            "imagestreams",
            "minimal",
            {"metadata": {"annotations": {"opendatahub.io/notebook-image-desc": "new words"}}},
            _content_type=MERGE,
        )
        await asyncio.sleep(1.0)
        assert controller.patches == patches
        assert (await read_ds(kube, namespace))["metadata"]["generation"] == generation

        # the stream is removed: its image goes, the next one moves up into the limit
        await delete_imagestream(kube, namespace, "pending")
        await pulls_become(
            kube,
            namespace,
            [ref(namespace, "minimal", "2025.2"), ref(namespace, "zz-third", "v1")],
        )


async def test_restart_and_dropped_watch_keep_it_right(control_plane, kube, namespace):
    await client.AppsV1Api(kube).create_namespaced_daemon_set(namespace, daemonset_body())
    await create_imagestream(kube, namespace, "a", {"v1": {}})
    async with running(kube, namespace):
        await pulls_become(kube, namespace, [ref(namespace, "a", "v1")])
    # while no controller runs, the catalog changes
    await delete_imagestream(kube, namespace, "a")
    await create_imagestream(kube, namespace, "b", {"v1": {}})
    async with running(kube, namespace, resync=1.0, watch_timeout=2):
        await pulls_become(kube, namespace, [ref(namespace, "b", "v1")])
        # the API server goes away (the watch drops, patches fail) and comes back
        await asyncio.to_thread(control_plane.stop_apiserver)
        try:
            await asyncio.sleep(1.5)
        finally:
            await asyncio.to_thread(control_plane.start_apiserver)
        await create_imagestream(kube, namespace, "c", {"v1": {}})
        await pulls_become(kube, namespace, [ref(namespace, "b", "v1"), ref(namespace, "c", "v1")])
        # a hand edit of the DaemonSet (no catalog change) is repaired on the next resync
        ds = await read_ds(kube, namespace)
        init = [c for c in ds["spec"]["template"]["spec"]["initContainers"]][:1]
        await client.AppsV1Api(kube).patch_namespaced_daemon_set(
            DS,
            namespace,
            {"spec": {"template": {"spec": {"initContainers": init}}}},
            _content_type=MERGE,
        )
        await pulls_become(kube, namespace, [ref(namespace, "b", "v1"), ref(namespace, "c", "v1")])


async def registered(kube, namespace: str, name: str, image_ref: str) -> None:
    """An ImageStream whose one tag is ready at ``image_ref``."""
    await create_imagestream(kube, namespace, name, {"v1": {}}, ready=[])
    await client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        *IMAGE_API,
        namespace,
        "imagestreams",
        name,
        {"status": {"tags": [{"tag": "v1", "items": [{"dockerImageReference": image_ref}]}]}},
        _content_type=MERGE,
    )


async def test_size_limit_reads_the_registrys_manifests(kube, namespace, tmp_path):
    registry = Registry(tmp_path / "registry")
    try:
        refs = {}
        for n, (name, length) in enumerate((("big", 400_000), ("huge", 900_000), ("small", 10))):
            content = os.urandom(length // 2).hex()  # hex compresses to about half
            digest = registry.push_tiny_image(f"img/{name}", "v1", content)
            refs[name] = f"{registry.host}/img/{name}@{digest}"
            await registered(kube, namespace, f"{n}-{name}", refs[name])
        sizes = ImageSizes(insecure_registries=[registry.host])
        await sizes.update(refs.values())
        by_name = {name: sizes.known[ref.rpartition("@")[2]] for name, ref in refs.items()}
        assert by_name["small"] < 2_000 < by_name["big"] < 300_000 < by_name["huge"]
        # the registry's own count of the bytes: config + layer, as uploaded
        await client.AppsV1Api(kube).create_namespaced_daemon_set(namespace, daemonset_body())
        watch = ImageStreamWatch(client.CustomObjectsApi(kube), (namespace,), SELECTOR)
        watch.start()
        limits = Limits(max_bytes=by_name["big"] + by_name["small"] + 100)
        controller = PullerController(kube, watch, namespace, DS, limits, sizes=sizes)
        task = asyncio.create_task(controller.run())
        try:
            # "huge" does not fit after "big"; "small" after it still does
            await pulls_become(kube, namespace, [refs["big"], refs["small"]])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await watch.stop()
    finally:
        registry.close()
