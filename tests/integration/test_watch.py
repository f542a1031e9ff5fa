"""The shared ImageStream watch against the real API server."""

from __future__ import annotations

import asyncio

import pytest_asyncio
from harness.kube import (
    IMAGE_API,
    MERGE,
    create_imagestream,
    delete_imagestream,
    set_ready,
    wait_for,
)
from kubernetes_asyncio import client

from aicoe_spawner.catalog import TagPhase
from aicoe_spawner.watch import ImageStreamWatch

SELECTOR = "opendatahub.io/notebook-image=true"


@pytest_asyncio.fixture
async def watcher(kube, namespace):
    w = ImageStreamWatch(client.CustomObjectsApi(kube), (namespace,), SELECTOR)
    w.start()
    assert await w.wait_synced(10)
    yield w
    await w.stop()


def names(w: ImageStreamWatch) -> set[str]:
    return {i.name for i in w.catalog.images}


async def test_create_change_delete_are_reflected(kube, namespace, watcher):
    requests_before = watcher.api_requests
    await create_imagestream(kube, namespace, "s1", {"v1": {}}, ready=[])

    async def present():
        return "s1" in names(watcher)

    await wait_for(present, timeout=15)
    assert watcher.catalog.get(namespace, "s1").tag("v1").phase == TagPhase.PENDING
    await set_ready(kube, namespace, "s1", ["v1"])

    async def ready():
        return watcher.catalog.get(namespace, "s1").tag("v1").ready

    await wait_for(ready, timeout=15)
    await delete_imagestream(kube, namespace, "s1")

    async def gone():
        return "s1" not in names(watcher)

    await wait_for(gone, timeout=15)
    # Reading the catalog any number of times makes no API request.
    for _ in range(1000):
        _ = watcher.catalog
    assert watcher.api_requests == requests_before
    assert not watcher.stale


async def test_label_selector_and_namespaces_are_respected(kube, namespace, watcher):
    await create_imagestream(kube, namespace, "unlabelled", {"v1": {}}, labels={})
    await create_imagestream(kube, namespace, "labelled", {"v1": {}})
    core = client.CoreV1Api(kube)
    other = f"{namespace}-x"
    await core.create_namespace({"metadata": {"name": other}})
    try:
        await create_imagestream(kube, other, "elsewhere", {"v1": {}})

        async def labelled():
            return "labelled" in names(watcher)

        await wait_for(labelled, timeout=15)
        await asyncio.sleep(0.3)
        assert names(watcher) == {"labelled"}
        # Removing the label removes the stream from the catalog (a DELETED watch event).
        await client.CustomObjectsApi(kube).patch_namespaced_custom_object(
            *IMAGE_API,
            namespace,
            "imagestreams",
            "labelled",
            {"metadata": {"labels": {"opendatahub.io/notebook-image": None}}},
            _content_type=MERGE,
        )

        async def unlisted():
            return "labelled" not in names(watcher)

        await wait_for(unlisted, timeout=15)
    finally:
        from aicoe_devcluster import delete_namespace

        await delete_namespace(kube, other)


async def test_expired_resource_version_relists(kube, namespace, monkeypatch):
    """A watch from an expired resourceVersion gets 410 Gone and the watch relists at once:
    an expected event, not a failure: the catalog is never marked stale, no error is recorded."""
    await create_imagestream(kube, namespace, "before", {"v1": {}})
    w = ImageStreamWatch(client.CustomObjectsApi(kube), (namespace,), SELECTOR)
    real_list = w._list
    lists = []
    seen_at_relist = []

    async def list_then_expire(ns):
        if lists:
            seen_at_relist.append((w.stale, w.last_error))
        rv = await real_list(ns)
        lists.append(rv)
        return "1" if len(lists) == 1 else rv  # the first watch starts from a long-gone version

    monkeypatch.setattr(w, "_list", list_then_expire)
    w.start()
    try:
        assert await w.wait_synced(10)

        async def relisted():
            return len(lists) >= 2

        await wait_for(relisted, timeout=15)
        assert seen_at_relist[0] == (False, None)  # relisted without being marked failing
        await create_imagestream(kube, namespace, "after", {"v1": {}})

        async def both():
            return {"before", "after"} <= names(w)

        await wait_for(both, timeout=15)
        assert not w.stale and w.last_error is None
    finally:
        await w.stop()


async def test_apiserver_restart_serves_last_catalog_then_recovers(
    control_plane, kube, namespace, watcher
):
    await create_imagestream(kube, namespace, "kept", {"v1": {}})

    async def kept():
        return "kept" in names(watcher)

    await wait_for(kept, timeout=15)
    await asyncio.to_thread(control_plane.stop_apiserver)
    try:

        async def stale():
            return watcher.stale

        await wait_for(stale, timeout=10)
        assert "kept" in names(watcher)  # the last known catalog is still served
    finally:
        await asyncio.to_thread(control_plane.start_apiserver)
    await create_imagestream(kube, namespace, "new", {"v1": {}})

    async def recovered():
        return not watcher.stale and {"kept", "new"} <= names(watcher)

    await wait_for(recovered, timeout=15)


async def test_shared_watch_is_one_per_process_and_selector(kube, namespace):
    made = []

    def factory():
        made.append(1)
        return client.CustomObjectsApi(kube)

    a = ImageStreamWatch.shared((namespace,), SELECTOR, factory)
    b = ImageStreamWatch.shared((namespace,), SELECTOR, factory)
    c = ImageStreamWatch.shared((namespace,), "other=true", factory)
    try:
        assert a is b and a is not c
        assert len(made) == 2
    finally:
        await ImageStreamWatch.stop_all()


async def test_first_listing_is_paginated_and_complete(kube, namespace):
    for i in range(5):
        await create_imagestream(kube, namespace, f"paged-{i}", {"v1": {}})
    w = ImageStreamWatch(client.CustomObjectsApi(kube), (namespace,), SELECTOR, page_size=2)
    w.start()
    try:
        assert await w.wait_synced(10)
        assert names(w) == {f"paged-{i}" for i in range(5)}
        assert w.api_requests >= 3  # three pages of at most two streams

        await create_imagestream(kube, namespace, "paged-new", {"v1": {}})

        async def watched():
            return "paged-new" in names(w)

        await wait_for(watched, timeout=15)  # the watch starts from the snapshot's version
    finally:
        await w.stop()
