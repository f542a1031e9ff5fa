"""S8: what a stolen builder token can do, against the real API server with the chart's RBAC
and its ValidatingAdmissionPolicies applied. With the default values builds run in their own
namespace; the builder's ServiceAccount cannot start a Job running as the hub's ServiceAccount
(nor any pod not of the build pod's shape), cannot change or delete the hub's
jupyterhub_config.py ConfigMap, and the Job the builder really makes (``job_manifest``) is
admitted."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
import pytest_asyncio
from harness.helm_chart import apply, build_namespace, one, remove_cluster_objects, render
from harness.kube import wait_for
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from test_helm_build_pods import a_build_spec

from aicoe_devcluster import api_client
from aicoe_devcluster.cluster import delete_namespace
from aicoe_devcluster.controlplane import write_kubeconfig
from aicoe_spawner.builder.backends.kubernetes_job import MANAGED_BY, JobConfig, job_manifest
from aicoe_spawner.builder.config import settings_from_env
from aicoe_spawner.builder.quota import NAME as QUOTA_LEDGER

pytestmark = pytest.mark.integration

RELEASE = "r"
HUB_SA = f"{RELEASE}-aicoe-spawner-hub"
BUILDER_SA = f"{RELEASE}-aicoe-spawner-builder"
HUB_CONFIG = f"{RELEASE}-aicoe-spawner-hub"  # the ConfigMap with jupyterhub_config.py
HUB_SECRET = f"{RELEASE}-aicoe-spawner-hub"  # the Secret with the hub's tokens and values
PUSH_SECRET = "push-creds"
DESTINATIONS = [
    {
        "repositories": ["github.com/team-a/*"],
        "registry": "quay.io/team-a",
        "pushSecret": "team-a-push",
        "pullSecret": "team-a-pull",
    }
]
KINDS = (
    "Namespace",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)


@dataclass
class Chart:
    """The chart's RBAC, admission policies and hub ConfigMap applied in a namespace of its
    own, with an API client authenticated as the builder's ServiceAccount."""

    namespace: str
    docs: list[dict]  # what was applied
    build_namespace: str  # where the chart tells the builder to run Jobs
    build_image: str
    builder: client.ApiClient


def builder_env(docs: list[dict], name: str) -> str:
    deployment = one(docs, "Deployment", f"{RELEASE}-aicoe-spawner-builder")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    (value,) = [e["value"] for e in env if e["name"] == name]
    return value


async def install(kube, control_plane, workdir, values: Callable[[str], dict]) -> Chart:
    """Render with ``values(namespace)`` for a fresh namespace and apply; a builder token."""
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    docs = render(namespace=namespace, release=RELEASE, values=values(namespace))
    chosen = [d for d in docs if d["kind"] in KINDS]
    await apply(kube, chosen, namespace)
    request = await client.CoreV1Api(kube).create_namespaced_service_account_token(
        BUILDER_SA, namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}}
    )
    kubeconfig = write_kubeconfig(
        workdir / f"{namespace}.kubeconfig",
        control_plane.server,
        control_plane.pki.ca_cert,
        token=request.status.token,
        namespace=namespace,
    )
    return Chart(
        namespace,
        chosen,
        builder_env(docs, "AICOE_BUILDER_BUILD_NAMESPACE"),
        builder_env(docs, "AICOE_BUILDER_IMAGE"),
        await api_client(kubeconfig),
    )


async def uninstall(kube, chart: Chart) -> None:
    await chart.builder.close()
    await remove_cluster_objects(kube, chart.docs)
    await delete_namespace(kube, chart.namespace)


@pytest_asyncio.fixture(scope="module")
async def chart(kube, control_plane, tmp_path_factory):
    """The default install (builds in "<namespace>-builds"), with a push Secret."""
    made = await install(
        kube,
        control_plane,
        tmp_path_factory.mktemp("admission"),
        lambda ns: {"builder.pushSecret": PUSH_SECRET, "builder.destinations": DESTINATIONS},
    )
    yield made
    await uninstall(kube, made)


@pytest_asyncio.fixture(scope="module")
async def beside_hub(kube, control_plane, tmp_path_factory):
    """builder.buildNamespace = the release namespace: RBAC lets the builder create Jobs next
    to the hub, and only the admission policy stands between its token and the hub's
    ServiceAccount."""
    made = await install(
        kube,
        control_plane,
        tmp_path_factory.mktemp("admission-beside"),
        lambda ns: {"builder.buildNamespace": ns},
    )
    yield made
    await uninstall(kube, made)


def builder_job(chart: Chart, namespace: str, push_secret: str | None = PUSH_SECRET) -> dict:
    """The Job the builder makes for a build (its real shape) with the chart's settings."""
    config = JobConfig(
        builder_image=chart.build_image, namespace=namespace, push_secret=push_secret
    )
    return job_manifest(a_build_spec(), config)


async def create_job(api: client.ApiClient, namespace: str, body: dict, dry_run=True) -> str:
    """Create the Job as ``api``'s user: "" when admitted, else the API server's refusal
    (status and message)."""
    try:
        await client.BatchV1Api(api).create_namespaced_job(
            namespace, body, dry_run="All" if dry_run else None
        )
    except ApiException as e:
        return f"{e.status} {json.loads(e.body)['message']}"
    return ""


async def policies_enforced(
    builder: client.ApiClient, namespace: str, build_namespace: str, build_image: str
) -> None:
    """A new policy reaches the API server's admission after a moment: wait until both
    refuse what they must (as the builder: a hostNetwork build Job, an unlabelled
    ConfigMap; dry runs)."""
    bad = job_manifest(
        a_build_spec(), JobConfig(builder_image=build_image, namespace=build_namespace)
    )
    bad["spec"]["template"]["spec"]["hostNetwork"] = True
    unlabelled = {"metadata": {"name": "not-the-builders"}}

    async def refused():
        jobs = await create_job(builder, build_namespace, bad)
        try:
            await client.CoreV1Api(builder).create_namespaced_config_map(
                namespace, unlabelled, dry_run="All"
            )
            maps = ""
        except ApiException as e:
            maps = f"{e.status} {e.body}"
        return "ValidatingAdmissionPolicy" in jobs and "ValidatingAdmissionPolicy" in maps

    assert await wait_for(refused, timeout=20)


async def enforced(chart: Chart) -> None:
    await policies_enforced(
        chart.builder, chart.namespace, chart.build_namespace, chart.build_image
    )


# -- build Jobs -------------------------------------------------------------------------------


def pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def containers(job: dict) -> list[dict]:
    return [*pod(job)["initContainers"], *pod(job)["containers"]]


MUTATIONS: dict[str, tuple[Callable[[dict], None], str]] = {
    "as-the-hubs-service-account": (
        lambda j: pod(j).update(serviceAccountName=HUB_SA),
        "default ServiceAccount",
    ),
    "token-mounted": (
        lambda j: pod(j).update(automountServiceAccountToken=True),
        "automountServiceAccountToken false",
    ),
    "host-path": (
        lambda j: pod(j)["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
        "only emptyDirs",
    ),
    "the-hubs-secret": (
        lambda j: pod(j)["volumes"].append({"name": "s", "secret": {"secretName": HUB_SECRET}}),
        "only emptyDirs",
    ),
    "projected-token": (
        lambda j: pod(j)["volumes"].append(
            {
                "name": "t",
                "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
            }
        ),
        "only emptyDirs",
    ),
    "another-pull-secret": (
        lambda j: pod(j).update(imagePullSecrets=[{"name": HUB_SECRET}]),
        "pull Secrets team-a-pull only",
    ),
    "host-network": (lambda j: pod(j).update(hostNetwork=True), "no host namespace"),
    "host-pid": (lambda j: pod(j).update(hostPID=True), "no host namespace"),
    "seccomp-unconfined": (
        lambda j: pod(j).update(securityContext={"seccompProfile": {"type": "Unconfined"}}),
        "seccompProfile RuntimeDefault",
    ),
    "container-seccomp-unconfined": (
        lambda j: containers(j)[0]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "build containers run the build image",
    ),
    "privileged": (
        lambda j: containers(j)[1]["securityContext"].update(privileged=True),
        "build containers run the build image",
    ),
    "another-capability": (
        lambda j: containers(j)[0]["securityContext"]["capabilities"]["add"].append("NET_ADMIN"),
        "build containers run the build image",
    ),
    "another-image": (
        lambda j: containers(j)[1].update(image="docker.io/library/alpine:3"),
        "build containers run the build image",
    ),
    "env-from-a-secret": (
        lambda j: containers(j)[1]["env"].append(
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": HUB_SECRET, "key": "proxy.token"}}}
        ),
        "build containers run the build image",
    ),
    "host-port": (
        lambda j: containers(j)[1].update(ports=[{"containerPort": 80, "hostPort": 80}]),
        "build containers run the build image",
    ),
    "another-container": (
        lambda j: pod(j)["containers"].append({**containers(j)[1], "name": "sidecar"}),
        '"build" and the container "push"',
    ),
    "not-labelled-for-the-network-policy": (
        lambda j: j["spec"]["template"]["metadata"]["labels"].pop("app.kubernetes.io/managed-by"),
        "app.kubernetes.io/managed-by=aicoe-image-builder",
    ),
}


async def test_the_builders_own_job_is_admitted_in_the_build_namespace(kube, chart):
    await enforced(chart)
    assert chart.build_namespace == build_namespace(chart.namespace)
    job = builder_job(chart, chart.build_namespace)
    job["metadata"]["name"] += "-stored"
    assert await create_job(chart.builder, chart.build_namespace, job, dry_run=False) == ""
    stored = await client.BatchV1Api(kube).read_namespaced_job(
        job["metadata"]["name"], chart.build_namespace
    )
    assert stored.metadata.labels["app.kubernetes.io/managed-by"] == MANAGED_BY
    # without a push secret too (only emptyDirs)
    plain = builder_job(chart, chart.build_namespace, None)
    assert await create_job(chart.builder, chart.build_namespace, plain) == ""


async def test_a_mapped_repositorys_job_with_its_own_secrets_is_admitted(chart):
    """builder.destinations: the Job of a mapped repository (its push Secret in the push
    step, its pull Secret as imagePullSecrets) is admitted; another Secret is not."""
    await enforced(chart)
    spec = replace(a_build_spec(), push_secret="team-a-push", pull_secret="team-a-pull")
    config = JobConfig(builder_image=chart.build_image, namespace=chart.build_namespace)
    job = job_manifest(spec, config)
    assert pod(job)["imagePullSecrets"] == [{"name": "team-a-pull"}]
    assert await create_job(chart.builder, chart.build_namespace, job) == ""
    other = job_manifest(replace(spec, push_secret="someone-elses"), config)
    refused = await create_job(chart.builder, chart.build_namespace, other)
    assert refused.startswith("403") and "push Secrets push-creds, team-a-push" in refused


async def test_no_build_job_beside_the_hub_by_default(chart):
    """The default install gives the builder no Job rights where the hub and its Secrets
    are (the old default: buildNamespace "" = the hub's namespace)."""
    await enforced(chart)
    refused = await create_job(chart.builder, chart.namespace, builder_job(chart, chart.namespace))
    assert refused.startswith("403") and "forbidden" in refused.lower(), refused


@pytest.mark.parametrize("mutation", list(MUTATIONS))
async def test_a_job_not_of_the_build_shape_is_refused(chart, mutation):
    await enforced(chart)
    change, message = MUTATIONS[mutation]
    job = builder_job(chart, chart.build_namespace)
    change(job)
    refused = await create_job(chart.builder, chart.build_namespace, job)
    assert refused.startswith("403"), refused
    assert "ValidatingAdmissionPolicy" in refused and message in refused, refused


async def test_beside_the_hub_the_policy_refuses_the_hubs_service_account(kube, beside_hub):
    """Where RBAC allows the builder Jobs in the hub's namespace, a Job running as the hub's
    ServiceAccount (which reads every Secret there) is refused by the policy, and the
    builder's own Job is admitted."""
    await enforced(beside_hub)
    ns = beside_hub.namespace
    assert beside_hub.build_namespace == ns
    await client.CoreV1Api(kube).read_namespaced_service_account(HUB_SA, ns)  # the chart's
    attack = builder_job(beside_hub, ns, None)
    pod(attack)["serviceAccountName"] = HUB_SA
    pod(attack)["automountServiceAccountToken"] = True
    refused = await create_job(beside_hub.builder, ns, attack)
    assert refused.startswith("403") and "default ServiceAccount" in refused, refused
    assert await create_job(beside_hub.builder, ns, builder_job(beside_hub, ns, None)) == ""


# -- ConfigMaps -------------------------------------------------------------------------------


async def as_builder(call) -> int:
    try:
        await call
    except ApiException as e:
        return e.status
    return 200


async def test_the_builder_cannot_change_the_hubs_config(kube, chart):
    await enforced(chart)
    core = client.CoreV1Api(chart.builder)
    ns = chart.namespace
    before = await client.CoreV1Api(kube).read_namespaced_config_map(HUB_CONFIG, ns)
    assert "jupyterhub_config.py" in before.data
    evil = copy.deepcopy(before.to_dict())
    evil["data"]["jupyterhub_config.py"] = "import os; os.system('id')"
    replace = core.replace_namespaced_config_map(HUB_CONFIG, ns, evil)
    assert await as_builder(replace) == 403  # RBAC: update only the quota ledger
    for body in (
        {"data": {"jupyterhub_config.py": "c.Authenticator.admin_users = {'mallory'}"}},
        {"metadata": {"labels": {"app.kubernetes.io/managed-by": MANAGED_BY}}},
    ):
        assert await as_builder(core.patch_namespaced_config_map(HUB_CONFIG, ns, body)) == 403
    assert await as_builder(core.delete_namespaced_config_map(HUB_CONFIG, ns)) == 403
    after = await client.CoreV1Api(kube).read_namespaced_config_map(HUB_CONFIG, ns)
    assert after.data == before.data and after.metadata.resource_version == (
        before.metadata.resource_version
    )


async def test_the_builder_keeps_its_own_config_maps(chart):
    """What the builder writes (aicoe_spawner/builder/store.py, quota.py): labelled ConfigMaps
    created, patched and deleted; the quota ledger replaced; an unlabelled one refused."""
    await enforced(chart)
    core = client.CoreV1Api(chart.builder)
    ns = chart.namespace
    mine = {"app.kubernetes.io/managed-by": MANAGED_BY}
    log = {"metadata": {"name": "imgbuild-log-1", "labels": mine}, "data": {"log": "x"}}
    assert await as_builder(core.create_namespaced_config_map(ns, log)) == 200
    patch = core.patch_namespaced_config_map("imgbuild-log-1", ns, {"data": {"log": "y"}})
    assert await as_builder(patch) == 200
    unlabel = {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}}
    patch = core.patch_namespaced_config_map("imgbuild-log-1", ns, unlabel)
    assert await as_builder(patch) == 403
    assert await as_builder(core.delete_namespaced_config_map("imgbuild-log-1", ns)) == 200
    plain = {"metadata": {"name": "not-mine"}, "data": {}}
    assert await as_builder(core.create_namespaced_config_map(ns, plain)) == 403
    ledger = {"metadata": {"name": QUOTA_LEDGER, "labels": mine}, "data": {"active.json": "{}"}}
    assert await as_builder(core.create_namespaced_config_map(ns, ledger)) == 200
    current = await core.read_namespaced_config_map(QUOTA_LEDGER, ns)
    ledger["metadata"]["resourceVersion"] = current.metadata.resource_version
    ledger["data"]["active.json"] = '{"b": ["alice", 1]}'
    replace = core.replace_namespaced_config_map(QUOTA_LEDGER, ns, ledger)
    assert await as_builder(replace) == 200


async def test_build_pods_go_where_the_chart_says_and_are_admitted(chart):
    """builder.buildPods (nodeSelector, tolerations) -> the builder's environment -> its
    settings -> the build Job's pod spec, which the admission policy admits."""
    where = {
        "builder.buildPods.nodeSelector": {"node-role/builds": "true"},
        "builder.buildPods.tolerations": [
            {"key": "builds", "operator": "Exists", "effect": "NoSchedule"}
        ],
    }
    docs = render(namespace=chart.namespace, release=RELEASE, values=where)
    deployment = one(docs, "Deployment", f"{RELEASE}-aicoe-spawner-builder")
    env = {
        e["name"]: e["value"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    s = settings_from_env(env)
    assert dict(s.build_node_selector) == {"node-role/builds": "true"}
    config = JobConfig(
        builder_image=s.builder_image,
        namespace=s.build_namespace,
        node_selector=dict(s.build_node_selector),
        tolerations=list(s.build_tolerations),
    )
    job = job_manifest(a_build_spec(), config)
    spec = job["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"node-role/builds": "true"}
    assert spec["tolerations"] == where["builder.buildPods.tolerations"]
    assert await create_job(chart.builder, chart.build_namespace, job) == ""
    # without values: no nodeSelector, no tolerations (any node)
    plain = job_manifest(a_build_spec(), JobConfig(builder_image=s.builder_image))
    assert "nodeSelector" not in plain["spec"]["template"]["spec"]
    assert "tolerations" not in plain["spec"]["template"]["spec"]


# -- the node's image store (builder.buildNodeImageStore) ----------------------------------

NODE_STORE = "/var/lib/aicoe-builder/images"


@pytest_asyncio.fixture(scope="module")
async def with_node_store(kube, control_plane, tmp_path_factory):
    made = await install(
        kube,
        control_plane,
        tmp_path_factory.mktemp("admission-store"),
        lambda ns: {"builder.buildNodeImageStore": NODE_STORE},
    )
    yield made
    await uninstall(kube, made)


def node_store_job(chart: Chart) -> dict:
    """The builder's Job of an environment build that keeps its image on the node."""
    spec = replace(a_build_spec(), strategy="environment", layer_cache="reg/jh/o-r-cache")
    config = JobConfig(
        builder_image=chart.build_image,
        namespace=chart.build_namespace,
        node_image_store=NODE_STORE,
    )
    return job_manifest(spec, config)


def mounts(container: dict) -> dict[str, dict]:
    return {m["name"]: m for m in container["volumeMounts"]}


async def test_the_node_image_store_is_admitted_read_only_in_the_build_step(with_node_store):
    """builder.buildNodeImageStore: the chart tells the builder (its Deployment's variable)
    and admits the Job that mounts exactly that host folder, read-only in the build step,
    with its "keep" container; another host folder, the store writable where repository
    content runs, or another container is refused."""
    chart = with_node_store
    docs = render(
        namespace=chart.namespace,
        release=RELEASE,
        values={"builder.buildNodeImageStore": NODE_STORE},
    )
    assert builder_env(docs, "AICOE_BUILDER_BUILD_NODE_IMAGE_STORE") == NODE_STORE
    await policies_enforced(
        chart.builder, chart.namespace, chart.build_namespace, chart.build_image
    )
    job = node_store_job(chart)
    build, push, keep = containers(job)
    assert mounts(build)["node-images"]["readOnly"] is True
    assert "readOnly" not in mounts(keep)["node-images"] and "node-images" not in mounts(push)
    assert await create_job(chart.builder, chart.build_namespace, job) == ""

    elsewhere = copy.deepcopy(job)
    (volume,) = [v for v in pod(elsewhere)["volumes"] if v["name"] == "node-images"]
    volume["hostPath"]["path"] = "/"
    refused = await create_job(chart.builder, chart.build_namespace, elsewhere)
    assert refused.startswith("403") and f"the node's image store {NODE_STORE}" in refused

    writable = copy.deepcopy(job)
    mounts(containers(writable)[0])["node-images"]["readOnly"] = False
    refused = await create_job(chart.builder, chart.build_namespace, writable)
    assert refused.startswith("403") and "image store read-only" in refused, refused

    another = copy.deepcopy(job)
    pod(another)["containers"][1]["name"] = "sidecar"
    refused = await create_job(chart.builder, chart.build_namespace, another)
    assert refused.startswith("403") and '(and "keep"' in refused, refused


async def test_without_the_setting_the_node_image_store_is_refused(chart):
    """The default install (no buildNodeImageStore) admits no host folder at all."""
    await enforced(chart)
    refused = await create_job(chart.builder, chart.build_namespace, node_store_job(chart))
    assert refused.startswith("403") and "only emptyDirs" in refused, refused
