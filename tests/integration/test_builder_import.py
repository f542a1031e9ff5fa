"""Image import on plain Kubernetes: the builder's import loop against the real API server and
a real registry (Debian's docker-registry with htpasswd authentication), resolving a real Open
Data Hub ImageStream manifest with skopeo."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from harness.builder import BuilderProcess
from harness.helm_chart import apply as apply_chart
from harness.helm_chart import remove_cluster_objects, render
from harness.kube import wait_for
from harness.registry import Registry
from kubernetes_asyncio import client

from aicoe_devcluster import api_client, delete_namespace
from aicoe_devcluster.controlplane import free_port
from aicoe_spawner.builder.__main__ import Settings, make_importer
from aicoe_spawner.builder.importer import Importer
from aicoe_spawner.builder.imports import PULL_SECRETS_ANNOTATION
from aicoe_spawner.builder.registry import SkopeoResolver
from aicoe_spawner.catalog import ImageTag, TagPhase, parse_imagestream
from aicoe_spawner.watch import ImageStreamWatch

DATA = Path(__file__).resolve().parents[1] / "data" / "imagestreams"
ODH_STREAM = DATA / "odh-notebooks-jupyter-minimal-2025.yaml"
USER, PASSWORD = "robot", "s3cret"
REPO = "opendatahub/workbench-images"
G, V, P = "image.openshift.io", "v1", "imagestreams"


@pytest.fixture
def registry(tmp_path):
    r = Registry(tmp_path / "registry", {USER: PASSWORD})
    yield r
    r.close()


@pytest_asyncio.fixture
async def importer(kube, namespace):
    imp = Importer(kube, (namespace,), SkopeoResolver(), interval=1.0, retry=0.5, poll=0.2)
    imp.start()
    yield imp
    await imp.stop()


def pull_secret(name: str, host: str, user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": token}}}).encode()
    return {
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config).decode()},
    }


def odh_stream(host: str, secret: str | None = "registry-creds", **tags: str) -> dict:
    """The ODH manifest with its placeholder image names pointing at ``host`` (tag name ->
    registry tag), importPolicy insecure (plain HTTP) and scheduled for 2025.2."""
    obj = yaml.safe_load(ODH_STREAM.read_text())
    for spec in obj["spec"]["tags"]:
        spec["from"]["name"] = f"{host}/{REPO}:{tags.get(spec['name'], spec['name'])}"
        spec["importPolicy"] = {"insecure": True, "scheduled": spec["name"] == "2025.2"}
    if secret:
        obj["metadata"]["annotations"][PULL_SECRETS_ANNOTATION] = secret
    return obj


async def apply(kube, namespace: str, obj: dict, name: str | None = None) -> dict:
    obj = copy.deepcopy(obj)
    if name:
        obj["metadata"]["name"] = name
    return await client.CustomObjectsApi(kube).create_namespaced_custom_object(
        G, V, namespace, P, obj
    )


async def read(kube, namespace: str, name: str) -> dict:
    return await client.CustomObjectsApi(kube).get_namespaced_custom_object(
        G, V, namespace, P, name
    )


async def tag_of(kube, namespace: str, name: str, tag: str) -> ImageTag:
    image = parse_imagestream(await read(kube, namespace, name))
    assert image is not None
    found = image.tag(tag)
    assert found is not None
    return found


async def wait_tag(kube, namespace, name, tag, check, timeout: float = 30) -> ImageTag:
    async def ok():
        t = await tag_of(kube, namespace, name, tag)
        return t if check(t) else None

    return await wait_for(ok, timeout=timeout, interval=0.1)


def status_tag(obj: dict, tag: str) -> dict:
    return next(t for t in obj["status"]["tags"] if t["tag"] == tag)


async def test_odh_stream_becomes_ready_and_follows_a_moved_tag(
    kube, namespace, registry, importer
):
    core = client.CoreV1Api(kube)
    await core.create_namespaced_secret(
        namespace, pull_secret("registry-creds", registry.host, USER, PASSWORD)
    )
    d1 = registry.push_tiny_image(REPO, "2025.2", "one")
    d_old = registry.push_tiny_image(REPO, "2025.1", "old")
    assert registry.manifest_digest(REPO, "2025.2") == d1
    applied_at = time.monotonic()
    await apply(kube, namespace, odh_stream(registry.host))

    repo = f"{registry.host}/{REPO}"
    new = await wait_tag(kube, namespace, "jupyter-minimal-notebook", "2025.2", ImageTag.ready.fget)
    print(f"\nstream applied -> ready: {time.monotonic() - applied_at:.2f} s (poll 0.2 s)")
    assert new.image_ref == f"{repo}@{d1}"
    old = await wait_tag(kube, namespace, "jupyter-minimal-notebook", "2025.1", ImageTag.ready.fget)
    assert old.image_ref == f"{repo}@{d_old}"
    obj = await read(kube, namespace, "jupyter-minimal-notebook")
    [item] = status_tag(obj, "2025.2")["items"]
    assert item["image"] == d1
    assert item["generation"] == obj["metadata"]["generation"]
    assert item["created"].endswith("Z")

    # the tag moves in the registry: the scheduled import (interval 1 s) follows it, and the
    # hub's catalog (its shared watch, what the form shows) has the new digest
    watch = ImageStreamWatch(
        client.CustomObjectsApi(kube), (namespace,), "opendatahub.io/notebook-image=true"
    )
    watch.start()
    try:
        assert await watch.wait_synced(10)
        d2 = registry.push_tiny_image(REPO, "2025.2", "two")
        assert d2 != d1
        moved_at = time.monotonic()

        async def in_catalog():
            image = watch.catalog.get(namespace, "jupyter-minimal-notebook")
            tag = image.tag("2025.2") if image else None
            return tag if tag is not None and tag.digest == d2 else None

        moved = await wait_for(in_catalog, timeout=30, interval=0.02)
        latency = time.monotonic() - moved_at
    finally:
        await watch.stop()
    print(
        f"\nimport latency (tag moved in the registry -> ready in the hub's catalog): "
        f"{latency:.2f} s (scheduled interval 1 s, poll 0.2 s)"
    )
    assert moved.ready and moved.image_ref == f"{repo}@{d2}"
    obj = await read(kube, namespace, "jupyter-minimal-notebook")
    assert [i["image"] for i in status_tag(obj, "2025.2")["items"]] == [d2, d1]
    # the tag without importPolicy.scheduled is not re-imported: one item, the first digest
    assert [i["image"] for i in status_tag(obj, "2025.1")["items"]] == [d_old]
    # an unchanged digest writes nothing: the stream stays as it is over several cycles
    version = obj["metadata"]["resourceVersion"]
    writes = importer.requests["update"]
    await asyncio.sleep(2.5)
    assert (await read(kube, namespace, "jupyter-minimal-notebook"))["metadata"][
        "resourceVersion"
    ] == version
    assert importer.requests["update"] == writes


async def test_failures_show_on_the_card_and_recover(kube, namespace, registry, tmp_path, importer):
    core = client.CoreV1Api(kube)
    await core.create_namespaced_secret(
        namespace, pull_secret("registry-creds", registry.host, USER, PASSWORD)
    )
    await core.create_namespaced_secret(
        namespace, pull_secret("wrong-creds", registry.host, USER, "wrong")
    )
    down = Registry(tmp_path / "down", {USER: PASSWORD})
    down.close()
    registry.push_tiny_image(REPO, "2025.1", "old")
    registry.push_tiny_image(REPO, "2025.2", "x")
    await core.create_namespaced_secret(
        namespace, pull_secret("down-creds", down.host, USER, PASSWORD)
    )
    # a tag that does not exist, a wrong password, a registry that is down, a missing Secret
    await apply(kube, namespace, odh_stream(registry.host, **{"2025.2": "missing"}), "missing")
    await apply(kube, namespace, odh_stream(registry.host, "wrong-creds"), "wrong")
    await apply(kube, namespace, odh_stream(down.host, "down-creds"), "down")
    await apply(kube, namespace, odh_stream(registry.host, "no-such-secret"), "nosecret")
    expected = {
        "missing": "manifest unknown",
        "wrong": "unauthorized",
        "down": "connection refused",
        "nosecret": "pull secret 'no-such-secret' not found",
    }
    for name, text in expected.items():
        tag = await wait_tag(kube, namespace, name, "2025.2", lambda t: t.phase is TagPhase.FAILED)
        assert text.lower() in tag.message.lower(), tag
        [cond] = status_tag(await read(kube, namespace, name), "2025.2")["conditions"]
        assert (cond["type"], cond["status"]) == ("ImportSuccess", "False")
        assert cond["reason"] == {"missing": "NotFound", "down": "InternalError"}.get(
            name, "Unauthorized"
        )
    # the missing tag's sibling imported fine
    assert (await tag_of(kube, namespace, "missing", "2025.1")).ready

    # fixed: the tag pushed, the password corrected, the registry back up, the Secret made
    registry.push_tiny_image(REPO, "missing", "now here")
    await core.replace_namespaced_secret(
        "wrong-creds", namespace, pull_secret("wrong-creds", registry.host, USER, PASSWORD)
    )
    down.start()
    try:
        down.push_tiny_image(REPO, "2025.2", "up again")
        await core.create_namespaced_secret(
            namespace, pull_secret("no-such-secret", registry.host, USER, PASSWORD)
        )
        for name in expected:
            tag = await wait_tag(kube, namespace, name, "2025.2", ImageTag.ready.fget)
            assert tag.message == ""
            assert "conditions" not in status_tag(await read(kube, namespace, name), "2025.2")
    finally:
        down.close()


async def test_a_failing_reimport_keeps_serving_the_old_digest(kube, namespace, registry, importer):
    core = client.CoreV1Api(kube)
    await core.create_namespaced_secret(
        namespace, pull_secret("registry-creds", registry.host, USER, PASSWORD)
    )
    d1 = registry.push_tiny_image(REPO, "2025.2", "one")
    registry.push_tiny_image(REPO, "2025.1", "old")
    await apply(kube, namespace, odh_stream(registry.host))
    name = "jupyter-minimal-notebook"
    await wait_tag(kube, namespace, name, "2025.2", ImageTag.ready.fget)
    registry.stop()

    async def failing():
        entry = status_tag(await read(kube, namespace, name), "2025.2")
        return entry.get("conditions")

    [cond] = await wait_for(failing, timeout=30, interval=0.1)
    assert cond["reason"] == "InternalError" and "connection refused" in cond["message"]
    tag = await tag_of(kube, namespace, name, "2025.2")
    assert (tag.phase, tag.digest) == (TagPhase.READY, d1)
    entry = status_tag(await read(kube, namespace, name), "2025.2")
    assert [i["image"] for i in entry["items"]] == [d1]


async def test_bearer_token_registry(kube, namespace, tmp_path, importer):
    """A registry that hands out bearer tokens (docker-registry's ``auth: token``, the flow of
    Docker Hub, quay.io and ghcr.io): the pull secret's credentials go to the token endpoint."""
    registry = Registry(tmp_path / "token-registry", {USER: PASSWORD}, token=True)
    try:
        core = client.CoreV1Api(kube)
        await core.create_namespaced_secret(
            namespace, pull_secret("registry-creds", registry.host, USER, PASSWORD)
        )
        d1 = registry.push_tiny_image(REPO, "2025.2", "one")
        registry.push_tiny_image(REPO, "2025.1", "old")
        await apply(kube, namespace, odh_stream(registry.host))
        await apply(kube, namespace, odh_stream(registry.host, secret=None), "anonymous")
        tag = await wait_tag(
            kube, namespace, "jupyter-minimal-notebook", "2025.2", ImageTag.ready.fget
        )
        assert tag.image_ref == f"{registry.host}/{REPO}@{d1}"
        assert registry.token_server is not None and registry.token_server.requests >= 1
        anon = await wait_tag(
            kube, namespace, "anonymous", "2025.2", lambda t: t.phase is TagPhase.FAILED
        )
        assert "auth token" in anon.message, anon
    finally:
        registry.close()


async def test_default_service_account_pull_secret_and_two_replicas(kube, namespace, registry):
    """Credentials from the namespace's default ServiceAccount; two import loops (replicas)
    write the stream once between them (resourceVersion preconditions)."""
    core = client.CoreV1Api(kube)
    await core.create_namespaced_secret(
        namespace, pull_secret("sa-creds", registry.host, USER, PASSWORD)
    )
    account = {"metadata": {"name": "default"}, "imagePullSecrets": [{"name": "sa-creds"}]}
    try:
        await core.create_namespaced_service_account(namespace, account)
    except client.ApiException as e:
        assert e.status == 409
        await core.patch_namespaced_service_account("default", namespace, account)
    d1 = registry.push_tiny_image(REPO, "2025.2", "one")
    registry.push_tiny_image(REPO, "2025.1", "old")
    await apply(kube, namespace, odh_stream(registry.host, secret=None))
    a = Importer(kube, (namespace,), SkopeoResolver(), poll=3600)
    b = Importer(kube, (namespace,), SkopeoResolver(), poll=3600)
    writes = await asyncio.gather(a.run_once(), b.run_once())
    obj = await read(kube, namespace, "jupyter-minimal-notebook")
    assert [i["image"] for i in status_tag(obj, "2025.2")["items"]] == [d1]
    # one write between them: the loser of a race got 409, re-read the stream (get) and found
    # nothing left to write
    assert sum(writes) == 1
    gets = a.requests["get"] + b.requests["get"]
    assert gets <= 1
    assert a.requests["update"] + b.requests["update"] == 1 + gets
    assert a.requests["list"] == b.requests["list"] == 1


async def test_builder_streams_and_openshift_are_left_alone(kube, namespace, registry):
    registry.push_tiny_image(REPO, "2025.2", "one")
    obj = odh_stream(registry.host, secret=None)
    obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "aicoe-image-builder"
    await apply(kube, namespace, obj)
    imp = Importer(kube, (namespace,), SkopeoResolver(), poll=3600)
    assert await imp.run_once() == 0
    assert (await read(kube, namespace, "jupyter-minimal-notebook")).get("status") in (None, {})
    s = Settings(namespace=namespace)
    assert make_importer(kube, s, backend="openshift") is None
    assert isinstance(make_importer(kube, s, backend="kubernetes"), Importer)
    assert (
        make_importer(kube, Settings(namespace=namespace, import_enabled=False), "kubernetes")
        is None
    )


async def test_import_with_the_charts_builder_service_account(
    kube, namespace, registry, token_kubeconfig
):
    """The chart's Roles are enough to import, in the release namespace and in a second
    catalog namespace, with a TokenRequest token of the builder's ServiceAccount."""
    other = f"{namespace}-other"
    core = client.CoreV1Api(kube)
    await core.create_namespace({"metadata": {"name": other}})
    api = None
    docs: list[dict] = []
    try:
        docs = render(
            "default",
            namespace=namespace,
            release="r",
            values={
                "imageStreams.namespaces": [namespace, other],
                "builder.imageImport.namespaces": [namespace, other],  # the builder chart's copy
            },
        )
        kinds = ("Namespace", "ServiceAccount", "Role", "RoleBinding")
        rbac = [d for d in docs if d["kind"] in kinds]
        await apply_chart(kube, rbac, namespace)
        d1 = registry.push_tiny_image(REPO, "2025.2", "one")
        registry.push_tiny_image(REPO, "2025.1", "old")
        for ns in (namespace, other):
            await core.create_namespaced_secret(
                ns, pull_secret("registry-creds", registry.host, USER, PASSWORD)
            )
            await apply(kube, ns, odh_stream(registry.host))
        token = await core.create_namespaced_service_account_token(
            "r-aicoe-spawner-builder", namespace, {"spec": {"expirationSeconds": 3600}}
        )
        api = await api_client(token_kubeconfig(token.status.token, namespace))
        # a namespace the chart gives no Role in (403) does not stop the others
        forbidden = f"{namespace}-none"
        imp = Importer(api, (forbidden, namespace, other), SkopeoResolver(), poll=3600)
        assert await imp.run_once() == 2
        # per namespace: one list, one read of the default ServiceAccount and of the Secret
        # (shared by the stream's two tags), one status write
        assert imp.requests == {"list": 3, "get": 0, "update": 2, "secret": 4}
        for ns in (namespace, other):
            tag = await tag_of(kube, ns, "jupyter-minimal-notebook", "2025.2")
            assert tag.image_ref == f"{registry.host}/{REPO}@{d1}"
    finally:
        if api is not None:
            await api.close()
        await delete_namespace(kube, other)
        await remove_cluster_objects(kube, docs)


async def test_the_builder_service_imports(kube, namespace, registry, control_plane, tmp_path):
    """``python -m aicoe_spawner.builder`` (as the chart runs it) starts the import loop,
    configured by its AICOE_BUILDER_IMPORT_* variables."""
    await client.CoreV1Api(kube).create_namespaced_secret(
        namespace, pull_secret("registry-creds", registry.host, USER, PASSWORD)
    )
    d1 = registry.push_tiny_image(REPO, "2025.2", "one")
    registry.push_tiny_image(REPO, "2025.1", "old")
    builder = BuilderProcess(
        tmp_path,
        control_plane.kubeconfig,
        namespace,
        token="builder-token",
        hub_url="http://127.0.0.1:9",  # the import needs no hub
        port=free_port(),
        AICOE_BUILDER_IMPORT_POLL="0.2",
    )
    await builder.start()
    try:
        await apply(kube, namespace, odh_stream(registry.host))
        tag = await wait_tag(
            kube, namespace, "jupyter-minimal-notebook", "2025.2", ImageTag.ready.fget
        )
        assert tag.image_ref == f"{registry.host}/{REPO}@{d1}", builder.log_tail()
    finally:
        await builder.stop()
