"""Branch TTL and the cleanup of finished build Jobs, against the real API server. The test
plays the Job controller and kubelet (a finished build pod whose termination message is the
pushed digest), so no real build runs here; test_builder_e2e covers real builds."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from harness.git import GitServer
from harness.jobs import complete_job, digest_of
from harness.kube import wait_for
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aicoe_spawner.builder.__main__ import Settings, build_service
from aicoe_spawner.builder.imagestream import EXPIRES_ANNOTATION
from aicoe_spawner.catalog import build_catalog

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def git(tmp_path_factory):
    server = GitServer(tmp_path_factory.mktemp("ttl-git"))
    yield server
    server.stop()


def settings(namespace: str, **kw) -> Settings:
    return Settings(
        namespace=namespace,
        registry="registry.local:5000",
        allowed_hosts=(),
        private_hosts=("127.0.0.1",),
        allow_http=True,
        max_per_user=10,
        **kw,
    )


async def build_ready(service, kube, namespace, body, user="alice"):
    status, build = await service.submit(body, user)
    assert status == 202, (status, build.phase)
    digest = digest_of(f"{body['repo']}@{body['ref']}")
    await complete_job(kube, namespace, build.id, digest)

    async def ready():
        await service.reconcile_once()
        b = await service.get(build.id)
        return b if b.phase == "ready" else None

    done = await wait_for(ready, timeout=10, interval=0.05)
    assert done.digest == digest
    return done


async def streams(kube, namespace) -> dict[str, dict]:
    items = await client.CustomObjectsApi(kube).list_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams"
    )
    return {s["metadata"]["name"]: s for s in items["items"]}


async def job_names(kube, namespace) -> list[str]:
    jobs = await client.BatchV1Api(kube).list_namespaced_job(namespace)
    return sorted(j.metadata.name for j in jobs.items)


@pytest_asyncio.fixture
async def service(kube, namespace):
    # no background loop: the test calls reconcile_once / cleanup_once itself
    return build_service(kube, settings(namespace, branch_ttl=3, job_retention=3))


async def test_branch_images_expire_and_finished_jobs_go(kube, namespace, git, service):
    sha = git.create_repo("ttl-nb", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    git.create_repo("ttl-only-branch", {"Dockerfile": "FROM scratch\n"})
    branch = await build_ready(service, kube, namespace, {"repo": git.url("ttl-nb"), "ref": "main"})
    release = await build_ready(service, kube, namespace, {"repo": git.url("ttl-nb"), "ref": "v1"})
    sha_build = await build_ready(service, kube, namespace, {"repo": git.url("ttl-nb"), "ref": sha})
    only = await build_ready(
        service, kube, namespace, {"repo": git.url("ttl-only-branch"), "ref": "main"}
    )
    assert branch.spec.ref_kind == "branch" and release.spec.ref_kind == "tag"
    assert sha_build.spec.ref_kind == "commit"
    tags = {t["name"]: t for t in (await streams(kube, namespace))["ttl-nb"]["spec"]["tags"]}
    assert EXPIRES_ANNOTATION in tags["main"]["annotations"]
    assert EXPIRES_ANNOTATION not in tags["v1"]["annotations"]
    assert EXPIRES_ANNOTATION not in tags[sha[:12]]["annotations"]
    assert len(await job_names(kube, namespace)) == 4

    # nothing has expired yet, no Job is past its retention
    result = await service.cleanup_once()
    assert result == {"expired": [], "records": [], "objects": []}
    assert set(await streams(kube, namespace)) == {"ttl-nb", "ttl-only-branch"}

    await asyncio.sleep(3.5)
    result = await service.cleanup_once()
    expired = {(r["stream"], r["tag"]) for r in result["expired"]}
    assert expired == {("ttl-nb", "main"), ("ttl-only-branch", "main"), ("ttl-only-branch", None)}
    assert sorted(result["records"]) == sorted([branch.id, only.id])
    assert await job_names(kube, namespace) == []  # all four finished Jobs were past retention
    pods = await client.CoreV1Api(kube).list_namespaced_pod(namespace)
    assert [p.metadata.name for p in pods.items if p.metadata.deletion_timestamp is None] == []

    remaining = await streams(kube, namespace)
    assert set(remaining) == {"ttl-nb"}  # the stream left empty is gone
    stream = remaining["ttl-nb"]
    assert [t["name"] for t in stream["spec"]["tags"]] == ["v1", sha[:12]]
    assert sorted(t["tag"] for t in stream["status"]["tags"]) == sorted(["v1", sha[:12]])
    image = build_catalog([stream]).get(namespace, "ttl-nb")
    assert image.tag("v1").ready and image.tag("main") is None
    # the expired builds' records are gone (a rebuild really rebuilds); the others keep logs
    assert await service.get(branch.id) is None and await service.get(only.id) is None
    assert (await service.get(release.id)).phase == "ready"
    status, again = await service.submit({"repo": git.url("ttl-nb"), "ref": "main"}, "alice")
    assert status == 202 and again.id == branch.id

    # a second run finds nothing more to do
    result = await service.cleanup_once()
    assert result["expired"] == [] and result["objects"] == []


async def test_cleanup_runs_periodically(kube, namespace, git):
    svc = build_service(
        kube, settings(namespace, branch_ttl=1, job_retention=1, cleanup_interval=0.2)
    )
    git.create_repo("ttl-periodic", {"Dockerfile": "FROM scratch\n"}, tag="v9")
    await build_ready(svc, kube, namespace, {"repo": git.url("ttl-periodic"), "ref": "main"})
    await build_ready(svc, kube, namespace, {"repo": git.url("ttl-periodic"), "ref": "v9"})
    svc.start(0.1)
    try:

        async def cleaned():
            s = (await streams(kube, namespace)).get("ttl-periodic")
            tags = [t["name"] for t in s["spec"]["tags"]] if s else None
            return tags == ["v9"] and await job_names(kube, namespace) == []

        await wait_for(cleaned, timeout=15, interval=0.1)
    finally:
        await svc.stop()


async def test_active_builds_keep_their_job(kube, namespace, git):
    """A Job that finished but whose result the builder has not read yet is never deleted,
    however short the retention."""
    svc = build_service(kube, settings(namespace, job_retention=0))
    git.create_repo("ttl-active", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    _, build = await svc.submit({"repo": git.url("ttl-active"), "ref": "v1"}, "alice")
    await complete_job(kube, namespace, build.id, digest_of("active"))
    await asyncio.sleep(1.1)
    result = await svc.cleanup_once()
    assert result["objects"] == []
    assert await job_names(kube, namespace) == [f"imgbuild-{build.id}"]
    await svc.reconcile_once()
    assert (await svc.get(build.id)).phase == "ready"
    result = await svc.cleanup_once()
    assert result["objects"] == [f"imgbuild-{build.id}"]
    with pytest.raises(ApiException):
        await client.BatchV1Api(kube).read_namespaced_job(f"imgbuild-{build.id}", namespace)
