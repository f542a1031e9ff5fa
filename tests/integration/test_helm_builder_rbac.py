"""The image builder runs a full build with a TokenRequest token of the chart's own builder
ServiceAccount (its Roles applied from the rendered chart): Job, build record ConfigMap, the
ImageStream and its status with the pushed digest. The job runner of harness.jobs plays the
Job controller and the fake kubelet runs the pods (with admin rights, as those would have)."""

from __future__ import annotations

import pytest
import pytest_asyncio
from harness.builder import local_settings
from harness.git import GitServer
from harness.helm_chart import apply, build_namespace, remove_cluster_objects, render
from harness.jobs import JobRunner
from harness.kube import wait_for
from harness.registry import Registry, push_base_image
from kubernetes_asyncio import client
from test_helm_builder_admission import policies_enforced

from aicoe_devcluster import api_client
from aicoe_spawner.builder.__main__ import build_service
from aicoe_spawner.catalog import TagPhase, parse_imagestream

pytestmark = pytest.mark.integration

BUILDER_SA = "r-aicoe-spawner-builder"
# What the builder needs from the chart: its ServiceAccount, Roles and bindings, the build
# namespace and the admission policies that confine it.
KINDS = (
    "Namespace",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)


@pytest_asyncio.fixture(scope="module")
async def infra(tmp_path_factory):
    root = tmp_path_factory.mktemp("chart-builder-infra")
    git = GitServer(root / "git")
    registry = Registry(root / "registry")
    base = push_base_image(registry, root)
    yield git, registry, base
    registry.stop()
    git.stop()


async def test_builder_builds_with_the_charts_service_account(
    kube, fake_kubelet, namespace, infra, token_kubeconfig, tmp_path
):
    """... with the chart's defaults: the Job in the build namespace, admitted by the chart's
    admission policies, the records and ConfigMaps in the hub's namespace."""
    git, registry, base = infra
    docs = [d for d in render("default", namespace=namespace, release="r") if d["kind"] in KINDS]
    await apply(kube, docs, namespace)
    builds = build_namespace(namespace)
    request = await client.CoreV1Api(kube).create_namespaced_service_account_token(
        BUILDER_SA, namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}}
    )
    api = await api_client(token_kubeconfig(request.status.token, namespace))
    settings = local_settings(namespace, registry.host, build_namespace=builds)
    await policies_enforced(api, namespace, builds, settings.builder_image)
    runner = JobRunner(kube, builds, tmp_path, kubelet=fake_kubelet)
    runner.start()
    service = build_service(api, settings, log_reader=runner.read_log)
    service.start(0.2)
    try:
        git.create_repo(
            "chart-nb", {"Dockerfile": f"FROM {base}\nRUN echo chart > /hello.txt\n"}, tag="v1"
        )
        status, build = await service.submit({"repo": git.url("chart-nb"), "ref": "v1"}, "alice")
        assert status == 202, build

        async def done():
            b = await service.get(build.id)
            return b if b and b.phase in ("ready", "failed", "cancelled") else None

        finished = await wait_for(done, timeout=180, interval=0.2)
        assert finished.phase == "ready", finished.message + finished.log
        digest = registry.manifest_digest(f"{namespace}/chart-nb", "v1")
        stream = await client.CustomObjectsApi(kube).get_namespaced_custom_object(
            "image.openshift.io", "v1", namespace, "imagestreams", "chart-nb"
        )
        image = parse_imagestream(stream)
        (tag,) = image.tags
        assert tag.phase == TagPhase.READY
        assert tag.digest == digest
        await service.backend.cleanup(finished.spec)
        jobs = await client.BatchV1Api(kube).list_namespaced_job(builds)
        assert [j.metadata.name for j in jobs.items] == []  # cleaned up where it ran
    finally:
        await service.stop()
        await runner.stop()
        await api.close()
        await remove_cluster_objects(kube, docs)


async def test_openshift_builder_builds_and_cancels_with_the_charts_service_account(
    kube, namespace, token_kubeconfig, tmp_path
):
    """The OpenShift backend with the chart's OpenShift builder Role: BuildConfig + Build,
    ready with the digest the image controller wrote, and a cancel. The test plays OpenShift's
    build and image controllers (as test_builder_openshift does)."""
    from test_builder_openshift import image_controller_pushes, phase_is, set_build_status
    from test_builder_openshift import settings as openshift_settings

    git = GitServer(tmp_path / "git")
    docs = [d for d in render("openshift", namespace=namespace, release="r") if d["kind"] in KINDS]
    await apply(kube, docs, namespace)
    request = await client.CoreV1Api(kube).create_namespaced_service_account_token(
        BUILDER_SA, namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}}
    )
    api = await api_client(token_kubeconfig(request.status.token, namespace))
    service = build_service(api, openshift_settings(namespace))
    service.start(0.1)
    try:
        git.create_repo("os-chart", {"Dockerfile": "FROM scratch\n"}, tag="v1")
        status, build = await service.submit({"repo": git.url("os-chart"), "ref": "v1"}, "alice")
        assert status == 202, build
        name = f"imgbuild-{build.id}"
        await set_build_status(kube, namespace, name, {"phase": "Running"})
        await phase_is(service, build.id, "building")
        digest = "sha256:" + "c" * 64
        await image_controller_pushes(kube, namespace, "os-chart", "v1", digest)
        await set_build_status(
            kube, namespace, name, {"phase": "Complete", "output": {"to": {"imageDigest": digest}}}
        )
        done = await phase_is(service, build.id, "ready", "failed")
        assert done.phase == "ready" and done.digest == digest, done.message

        git.create_repo("os-chart-cancel", {"Dockerfile": "FROM scratch\n"}, tag="v1")
        _, build = await service.submit({"repo": git.url("os-chart-cancel"), "ref": "v1"}, "bob")
        await set_build_status(kube, namespace, f"imgbuild-{build.id}", {"phase": "Running"})
        await phase_is(service, build.id, "building")
        cancelled = await service.cancel(await service.get(build.id))
        assert cancelled.phase == "cancelled"
    finally:
        await service.stop()
        await api.close()
        git.stop()
        await remove_cluster_objects(kube, docs)
