"""The OpenShift build backend against the real API server (BuildConfig/Build installed as CRDs
by the ``kube`` fixture). The test plays OpenShift's build and image controllers: it moves the
Build through its phases and writes the ImageStream status the way the image controller does."""

from __future__ import annotations

import hashlib

import pytest
import pytest_asyncio
from harness.git import GitServer
from harness.kube import wait_for
from kubernetes_asyncio import client

from aicoe_spawner.builder.__main__ import Settings, build_service, make_service
from aicoe_spawner.builder.backends.openshift import (
    GROUP,
    api_groups,
    choose_backend,
    detect_backend,
)
from aicoe_spawner.builder.requests import BuildRequestError
from aicoe_spawner.catalog import TagPhase, build_catalog

pytestmark = pytest.mark.integration
MERGE = "application/merge-patch+json"
INTERNAL = "image-registry.openshift-image-registry.svc:5000"


@pytest.fixture(scope="module")
def git(tmp_path_factory):
    server = GitServer(tmp_path_factory.mktemp("os-git"))
    yield server
    server.stop()


def settings(namespace: str, **kw) -> Settings:
    return Settings(
        namespace=namespace,
        registry=INTERNAL,
        allowed_hosts=(),
        private_hosts=("127.0.0.1",),
        allow_http=True,
        backend="openshift",
        **kw,
    )


@pytest_asyncio.fixture
async def service(kube, namespace):
    svc = build_service(kube, settings(namespace))
    svc.start(0.1)
    yield svc
    await svc.stop()


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


async def get(kube, namespace, plural, name, group=GROUP):
    return await client.CustomObjectsApi(kube).get_namespaced_custom_object(
        group, "v1", namespace, plural, name
    )


async def set_build_status(kube, namespace, name, status):
    await client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        GROUP, "v1", namespace, "builds", name, {"status": status}, _content_type=MERGE
    )


async def image_controller_pushes(kube, namespace, stream, tag, digest):
    """What OpenShift's image controller writes when a build pushes ``stream:tag``."""
    ref = f"{INTERNAL}/{namespace}/{stream}@{digest}"
    await client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        "image.openshift.io",
        "v1",
        namespace,
        "imagestreams",
        stream,
        {
            "status": {
                "dockerImageRepository": f"{INTERNAL}/{namespace}/{stream}",
                "tags": [
                    {
                        "tag": tag,
                        "items": [
                            {
                                "created": "2025-01-01T00:00:00Z",
                                "dockerImageReference": ref,
                                "image": digest,
                                "generation": 1,
                            }
                        ],
                    }
                ],
            }
        },
        _content_type=MERGE,
    )
    return ref


async def catalog(kube, namespace):
    streams = await client.CustomObjectsApi(kube).list_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams"
    )
    return build_catalog(streams["items"])


async def phase_is(service, build_id, *phases, timeout=10):
    async def check():
        b = await service.get(build_id)
        return b if b and b.phase in phases else None

    return await wait_for(check, timeout=timeout, interval=0.05)


async def test_docker_strategy_complete_is_ready_with_the_stream_digest(
    kube, namespace, git, service
):
    sha = git.create_repo(
        "os-docker",
        {"images/nb/Dockerfile": "FROM scratch\n", "images/nb/hello.txt": "hi\n"},
        tag="v1.0",
    )
    body = {
        "repo": git.url("os-docker"),
        "ref": "v1.0",
        "dockerfile": "images/nb/Dockerfile",
        "context_dir": "images/nb",
    }
    status, build = await service.submit(body, "alice")
    assert status == 202 and build.spec.commit == sha
    name = f"imgbuild-{build.id}"

    bc = await get(kube, namespace, "buildconfigs", name)
    ob = await get(kube, namespace, "builds", name)
    for spec in (bc["spec"], ob["spec"]):
        assert spec["strategy"] == {
            "type": "Docker",
            "dockerStrategy": {"dockerfilePath": "Dockerfile"},
        }
        assert spec["source"] == {
            "type": "Git",
            "git": {"uri": git.url("os-docker"), "ref": sha},
            "contextDir": "images/nb",
        }
        assert spec["output"]["to"] == {"kind": "ImageStreamTag", "name": "os-docker:v1.0"}
    assert ob["spec"]["revision"] == {"type": "Git", "git": {"commit": sha}}
    assert ob["metadata"]["labels"]["openshift.io/build-config.name"] == name
    assert ob["metadata"]["ownerReferences"][0]["uid"] == bc["metadata"]["uid"]
    assert bc["spec"]["triggers"] == []
    # the catalog shows it building; the spec tag carries no `from` (the build output writes it)
    tag = (await catalog(kube, namespace)).get(namespace, "os-docker").tag("v1.0")
    assert tag.phase is TagPhase.BUILDING
    stream = await get(kube, namespace, "imagestreams", "os-docker", "image.openshift.io")
    assert "from" not in stream["spec"]["tags"][0]

    # the same commit again is the same build; no second Build
    assert (await service.submit(body, "bob"))[0] == 200
    builds = await client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, "v1", namespace, "builds"
    )
    assert len(builds["items"]) == 1

    await set_build_status(kube, namespace, name, {"phase": "Running"})
    await phase_is(service, build.id, "building")
    # the build controller finished, the image controller wrote the stream status
    digest = digest_of("os-docker:v1.0")
    ref = await image_controller_pushes(kube, namespace, "os-docker", "v1.0", digest)
    await set_build_status(
        kube,
        namespace,
        name,
        {
            "phase": "Complete",
            "outputDockerImageReference": f"{INTERNAL}/{namespace}/os-docker:v1.0",
            "output": {"to": {"imageDigest": digest}},
        },
    )
    done = await phase_is(service, build.id, "ready", "failed")
    assert done.phase == "ready" and done.digest == digest
    image = (await catalog(kube, namespace)).get(namespace, "os-docker")
    tag = image.tag("v1.0")
    assert tag.phase is TagPhase.READY and tag.digest == digest and tag.image_ref == ref
    assert tag.build_commit == sha and image.creator == "alice"


async def test_complete_with_only_the_build_digest(kube, namespace, git, service):
    git.create_repo("os-late", {"Dockerfile": "FROM scratch\n"}, tag="v2")
    _, build = await service.submit({"repo": git.url("os-late"), "ref": "v2"}, "alice")
    name = f"imgbuild-{build.id}"
    assert (await get(kube, namespace, "builds", name))["spec"]["strategy"]["dockerStrategy"] == {
        "dockerfilePath": "Dockerfile"
    }
    # Complete, but no digest anywhere yet: still building, not a false "ready"
    await set_build_status(kube, namespace, name, {"phase": "Complete"})
    await phase_is(service, build.id, "building")
    await service.reconcile_once()
    assert (await service.get(build.id)).phase == "building"
    digest = digest_of("late")
    await set_build_status(kube, namespace, name, {"output": {"to": {"imageDigest": digest}}})
    done = await phase_is(service, build.id, "ready")
    assert done.digest == digest


async def test_source_strategy_failure_reports_the_message(kube, namespace, git, service):
    base = "quay.io/thoth-station/s2i-thoth-ubi9-py311:v0.35.1"
    git.create_repo(
        "os-s2i",
        {
            ".aicoe-ci.yaml": f"build:\n  build-stratergy: Source\n  base-image: {base}\n",
            "app.py": "print('hi')\n",
        },
        tag="v3",
    )
    status, build = await service.submit({"repo": git.url("os-s2i"), "ref": "v3"}, "carol")
    assert status == 202 and build.spec.strategy == "source"
    name = f"imgbuild-{build.id}"
    ob = await get(kube, namespace, "builds", name)
    assert ob["spec"]["strategy"] == {
        "type": "Source",
        "sourceStrategy": {
            "from": {"kind": "DockerImage", "name": base},
            # a Thoth image installs the lock without the retired Thoth service (AICoE-CI's)
            "env": [
                {"name": "THOTH_ADVISE", "value": "0"},
                {"name": "THOTH_DRY_RUN", "value": "1"},
                {"name": "THOTH_ERROR_FALLBACK", "value": "1"},
            ],
        },
    }
    assert ob["spec"]["output"]["to"] == {"kind": "ImageStreamTag", "name": "os-s2i:v3"}
    assert "contextDir" not in ob["spec"]["source"]
    bc = await get(kube, namespace, "buildconfigs", name)
    assert bc["spec"]["strategy"] == ob["spec"]["strategy"]

    await set_build_status(kube, namespace, name, {"phase": "Pending"})
    await phase_is(service, build.id, "building")
    await set_build_status(
        kube,
        namespace,
        name,
        {
            "phase": "Failed",
            "reason": "AssembleFailed",
            "message": "Assemble script failed.",
            "logSnippet": "pip: no matching distribution for nope==0",
        },
    )
    done = await phase_is(service, build.id, "failed", "ready")
    assert done.phase == "failed"
    assert done.message.startswith("Assemble script failed.")
    assert "no matching distribution" in done.message
    # a failed first build leaves nothing in the catalog, which everyone sees (its requester
    # reads what the build said in the builder)
    assert (await catalog(kube, namespace)).get(namespace, "os-s2i") is None


async def test_error_phase_and_cancel(kube, namespace, git, service):
    git.create_repo("os-err", {"Dockerfile": "FROM scratch\n"}, tag="a")
    _, build = await service.submit({"repo": git.url("os-err"), "ref": "a"}, "dan")
    await set_build_status(
        kube, namespace, f"imgbuild-{build.id}", {"phase": "Error", "message": "pod evicted"}
    )
    done = await phase_is(service, build.id, "failed")
    assert done.message == "pod evicted"

    git.create_repo("os-cancel", {"Dockerfile": "FROM scratch\n"}, tag="b")
    _, build = await service.submit({"repo": git.url("os-cancel"), "ref": "b"}, "dan")
    name = f"imgbuild-{build.id}"
    await set_build_status(kube, namespace, name, {"phase": "Running"})
    await phase_is(service, build.id, "building")
    cancelled = await service.cancel(await service.get(build.id))
    assert cancelled.phase == "cancelled"
    assert (await get(kube, namespace, "builds", name))["status"]["cancelled"] is True
    # the build controller acknowledges; the build stays cancelled
    await set_build_status(kube, namespace, name, {"phase": "Cancelled"})
    await service.reconcile_once()
    assert (await service.get(build.id)).phase == "cancelled"


async def test_dockerfile_outside_the_context_is_refused(kube, namespace, git, service):
    git.create_repo("os-bad", {"Dockerfile": "FROM scratch\n", "sub/x": "x\n"}, tag="v1")
    body = {"repo": git.url("os-bad"), "ref": "v1", "context_dir": "sub", "strategy": "dockerfile"}
    with pytest.raises(BuildRequestError) as info:
        await service.submit(body, "eve")
    assert info.value.field == "dockerfile" and info.value.status == 400
    builds = await client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, "v1", namespace, "builds"
    )
    assert builds["items"] == [] and await service.store.list() == []


def test_detect_backend_from_the_api_groups():
    assert detect_backend(["apps", "batch", "image.openshift.io"]) == "kubernetes"
    assert detect_backend(["apps", "build.openshift.io", "image.openshift.io"]) == "openshift"
    assert detect_backend([]) == "kubernetes"


async def test_auto_uses_discovery(kube, namespace):
    groups = await api_groups(kube)
    assert GROUP in groups and "batch" in groups  # the CRDs of the kube fixture
    assert await choose_backend(kube, "auto") == "openshift"
    assert await choose_backend(kube, "kubernetes") == "kubernetes"
    # a cluster without the build API (the same server's groups minus build.openshift.io)
    assert detect_backend([g for g in groups if g != GROUP]) == "kubernetes"
    svc = await make_service(kube, Settings(namespace=namespace, backend="auto"))
    assert svc.backend.name == "openshift" and svc.registrar.write_status is False
    svc = await make_service(kube, Settings(namespace=namespace, backend="kubernetes"))
    assert svc.backend.name == "kubernetes" and svc.registrar.write_status is True
