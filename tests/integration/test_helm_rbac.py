"""RBAC proven, not assumed: the chart's own ServiceAccounts, Roles and RoleBindings are applied
to the real API server, and a real JupyterHub spawns with a TokenRequest token of the hub's
ServiceAccount. Every rule of every Role is needed: removing it makes a named operation fail
(403), and for the hub's rules a real spawn fails too."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import pytest_asyncio
from harness.helm_chart import apply, probe, remove_cluster_objects, render, rule_id
from harness.hub import FakeSingleUser, Hub
from harness.kube import create_imagestream, user_pods, wait_for
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aicoe_devcluster import api_client

RELEASE = "r"
HUB_SA = f"{RELEASE}-aicoe-spawner-hub"
BUILDER_SA = f"{RELEASE}-aicoe-spawner-builder"
PULLER_SA = f"{RELEASE}-aicoe-spawner-image-puller"
DEFAULT = {"opendatahub.io/default-image": "true"}

# What each rule is for: a rule that is not here fails test_every_rule_has_a_named_operation.
OPERATIONS = {
    ("hub", "core:pods"): "start, watch and stop users' pods",
    ("hub", "core:persistentvolumeclaims"): "create and delete users' home volumes",
    ("hub", "core:secrets"): "store users' secret env in a Secret owned by the pod",
    ("hub", "core:services"): "create users' Services (services_enabled, internal SSL)",
    ("hub", "core:events"): "show pod events on the spawn progress page",
    ("hub-catalog", "image.openshift.io:imagestreams"): "list+watch the notebook image catalog",
    ("builder-builds", "batch:jobs"): "run, follow and cancel build Jobs",
    ("builder-builds", "core:pods"): "find, follow and clean up the pods of a build Job",
    ("builder-builds", "core:pods/log"): "stream a build's log",
    ("builder", "aicoe-spawner.io:imagebuilds"): "create, list and expire build records",
    ("builder", "aicoe-spawner.io:imagebuilds/status"): "write build state (with preconditions)",
    ("builder", "coordination.k8s.io:leases"): "elect the one replica that reconciles builds",
    ("builder", "core:configmaps"): "keep build logs, the quota ledger and webhook deliveries",
    ("builder", "core:configmaps[aicoe-image-builder-quota]"): "admit builds in the quota ledger",
    ("builder", "build.openshift.io:buildconfigs"): "create BuildConfigs (OpenShift backend)",
    ("builder", "build.openshift.io:builds"): "start, follow and cancel Builds (OpenShift)",
    ("builder", "build.openshift.io:builds/docker,builds/source"): (
        "pass OpenShift's build strategy admission for Docker and source builds"
    ),
    ("builder-catalog", "image.openshift.io:imagestreams"): "publish built images as streams",
    ("builder-catalog", "image.openshift.io:imagestreams/status"): "record built digests",
    ("builder-import", "core:secrets,serviceaccounts"): "read the pull secrets of an import",
    ("image-puller", f"apps:daemonsets[{RELEASE}-aicoe-spawner-image-puller]"): (
        "keep the puller DaemonSet's init containers at the catalog's digests"
    ),
    ("image-puller-catalog", "image.openshift.io:imagestreams"): "follow the catalog to pre-pull",
}


def role_kind(role: dict) -> str:
    """hub, hub-catalog, builder, builder-builds, builder-catalog, builder-import,
    image-puller or image-puller-catalog."""
    return role["metadata"]["name"].removeprefix(f"{RELEASE}-aicoe-spawner-")


def rbac_docs(variant: str, namespace: str) -> list[dict]:
    """The chart's ServiceAccounts, Roles and RoleBindings, and the build namespace (the
    builder's Role for Jobs lives there)."""
    docs = render(variant, namespace=namespace, release=RELEASE)
    kinds = ("Namespace", "ServiceAccount", "Role", "RoleBinding")
    return [d for d in docs if d["kind"] in kinds]


@pytest_asyncio.fixture
async def applied(kube, namespace):
    """``await applied(docs)``: apply to the test namespace; the build namespace the docs
    make is deleted after the test."""
    seen: list[dict] = []

    async def do(docs: list[dict]) -> None:
        seen.extend(docs)
        await apply(kube, docs, namespace)

    yield do
    await remove_cluster_objects(kube, seen)


def all_rules() -> list[tuple[str, str, str]]:
    """(variant, role kind, rule id) of every rule of the default and OpenShift charts."""
    seen, params = set(), []
    for variant in ("default", "openshift"):
        for role in rbac_docs(variant, "ns"):
            if role["kind"] != "Role":
                continue
            for rule in role["rules"]:
                key = (role_kind(role), rule_id(rule))
                if key not in seen:
                    seen.add(key)
                    params.append((variant, *key))
    return params


RULES = all_rules()


def test_every_rule_has_a_named_operation():
    assert {(kind, rule) for _, kind, rule in RULES} == set(OPERATIONS)


async def sa_token(kube: client.ApiClient, namespace: str, name: str) -> str:
    request = await client.CoreV1Api(kube).create_namespaced_service_account_token(
        name, namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}}
    )
    return request.status.token


async def role_without(
    kube: client.ApiClient, docs: list[dict], namespace: str, kind: str, rule: str
) -> dict:
    """Replace the chart's Role ``kind`` with a copy that lacks ``rule``."""
    (role,) = [d for d in docs if d["kind"] == "Role" and role_kind(d) == kind]
    namespace = role["metadata"].get("namespace", namespace)
    rbac = client.RbacAuthorizationV1Api(kube)
    current = await rbac.read_namespaced_role(role["metadata"]["name"], namespace)
    rules = [r for r in role["rules"] if rule_id(r) != rule]
    assert len(rules) == len(role["rules"]) - 1
    body = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {
            "name": role["metadata"]["name"],
            "resourceVersion": current.metadata.resource_version,
        },
        "rules": rules,
    }
    await rbac.replace_namespaced_role(role["metadata"]["name"], namespace, body)
    return role


# -- every rule is needed: the operation it names is refused without it ----------------------


@pytest.mark.parametrize(("variant", "kind", "rule"), RULES, ids=[f"{k}-{r}" for _, k, r in RULES])
async def test_removing_a_rule_refuses_its_operation(
    variant, kind, rule, kube, namespace, token_kubeconfig, applied
):
    docs = rbac_docs(variant, namespace)
    await applied(docs)
    sa = {"builder": BUILDER_SA, "image": PULLER_SA}.get(kind.split("-")[0], HUB_SA)
    token = await sa_token(kube, namespace, sa)
    (role,) = [d for d in docs if d["kind"] == "Role" and role_kind(d) == kind]
    (the_rule,) = [r for r in role["rules"] if rule_id(r) == rule]
    where = role["metadata"].get("namespace", namespace)
    calls = [
        (group, resource, verb, where, name)
        for group in the_rule["apiGroups"]
        for resource in the_rule["resources"]
        for verb in the_rule["verbs"]
        for name in the_rule.get("resourceNames") or ["rbac-probe"]
    ]
    operation = OPERATIONS[(kind, rule)]
    api = await api_client(token_kubeconfig(token, namespace))
    try:
        for call in calls:
            status = await probe(api, *call)
            assert status != 403, f"{operation}: {call} refused with the chart's Role"

        await role_without(kube, docs, namespace, kind, rule)

        async def all_refused():
            statuses = [await probe(api, *call) for call in calls]
            return all(s == 403 for s in statuses)

        assert await wait_for(all_refused, timeout=10), f"{operation} still allowed"
    finally:
        await api.close()


# -- a real hub spawns with the chart's hub ServiceAccount ------------------------------------

HUB_EXTRA = """
# As the chart configures a hub with singleuser.storage.type=dynamic, plus per-user Services.
c.KubeSpawner.storage_pvc_ensure = True
c.KubeSpawner.pvc_name_template = "claim-{user_server}"
c.KubeSpawner.storage_capacity = "1Gi"
c.KubeSpawner.volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
c.KubeSpawner.volume_mounts = [{"name": "home", "mountPath": "/home/jovyan"}]
c.KubeSpawner.delete_pvc = True
c.KubeSpawner.services_enabled = True
# The per-user Service has no cluster DNS here: connect to the fake kubelet's pod IP.
c.KubeSpawner.get_pod_url = lambda spawner, pod: f"http://{pod['status']['podIP']}:{spawner.port}"
c.AICoESpawner.catalog_sync_timeout = 5
"""


async def chart_hub(
    applied, kube, namespace, token_kubeconfig, tmp_path, drop: tuple[str, str] | None
):
    docs = rbac_docs("default", namespace)
    await applied(docs)
    if drop:
        await role_without(kube, docs, namespace, *drop)
    await create_imagestream(kube, namespace, "minimal", {"2025.2": DEFAULT})
    token = await sa_token(kube, namespace, HUB_SA)
    singleuser = FakeSingleUser()
    hub = Hub(
        tmp_path / f"hub-{uuid.uuid4().hex[:6]}",
        token_kubeconfig(token, namespace),
        namespace,
        singleuser.port,
        HUB_EXTRA,
    )
    await hub.start()
    return hub, singleuser


async def test_hub_spawns_with_the_charts_service_account(
    kube, namespace, fake_kubelet, token_kubeconfig, tmp_path, applied
):
    """Full spawn and stop with a TokenRequest token of the chart's hub ServiceAccount:
    ImageStream watch, PVC, secret env Secret (owned by the pod), pod, Service, events;
    stopping deletes the Secret, deleting the user deletes the PVC."""
    hub, singleuser = await chart_hub(applied, kube, namespace, token_kubeconfig, tmp_path, None)
    core = client.CoreV1Api(kube)
    try:
        user = f"rbac-{uuid.uuid4().hex[:4]}"
        await hub.ensure_user(user)
        options = {"image": "minimal:2025.2", "size": "small", "secret_env": {"API_KEY": "s3"}}
        status, body = await hub.api("POST", f"/users/{user}/server", json=options)
        assert status in (201, 202), (status, body, hub.log_tail(30))
        server = await hub.wait_ready(user)
        assert server["ready"]
        (pod,) = await user_pods(kube, namespace, user)
        assert "@sha256:" in pod["spec"]["containers"][0]["image"]
        claim = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        await core.read_namespaced_persistent_volume_claim(claim, namespace)
        await core.read_namespaced_service(pod["metadata"]["name"], namespace)
        (ref,) = [
            e["valueFrom"]["secretKeyRef"]
            for e in pod["spec"]["containers"][0]["env"]
            if e["name"] == "API_KEY"
        ]
        secret = await core.read_namespaced_secret(ref["name"], namespace)
        assert [o.name for o in secret.metadata.owner_references or []] == [
            pod["metadata"]["name"]
        ]  # patched to be owned by the pod
        log = hub.log_path.read_text()
        assert "forbidden" not in log.lower(), hub.log_tail(40)

        await hub.stop_server(user)

        async def pod_gone():
            return not await user_pods(kube, namespace, user)

        await wait_for(pod_gone, timeout=20)

        async def secret_gone():
            try:
                await core.read_namespaced_secret(ref["name"], namespace)
            except ApiException as e:
                return e.status == 404
            return False

        await wait_for(secret_gone, timeout=20)
        status, _ = await hub.api("DELETE", f"/users/{user}")
        assert status == 204

        async def claim_gone():
            try:
                await core.read_namespaced_persistent_volume_claim(claim, namespace)
            except ApiException as e:
                return e.status == 404
            return False

        await wait_for(claim_gone, timeout=20)
    finally:
        await hub.stop()
        singleuser.stop()


SPAWN_BREAKING = [
    ("hub", "core:pods"),
    ("hub", "core:persistentvolumeclaims"),
    ("hub", "core:secrets"),
    ("hub-catalog", "image.openshift.io:imagestreams"),
]


@pytest.mark.parametrize("drop", SPAWN_BREAKING, ids=[r for _, r in SPAWN_BREAKING])
async def test_hub_spawn_fails_without_a_rule(
    drop, kube, namespace, fake_kubelet, token_kubeconfig, tmp_path, applied
):
    """The same spawn as above fails when the hub's Role lacks one rule. (Services fail the same
    way as PVCs; without events KubeSpawner's spawn hangs until start_timeout rather than
    failing; for them and every rule, test_removing_a_rule_refuses_its_operation shows the
    403.)"""
    hub, singleuser = await chart_hub(applied, kube, namespace, token_kubeconfig, tmp_path, drop)
    try:
        user = f"norbac-{uuid.uuid4().hex[:4]}"
        await hub.ensure_user(user)
        options = {"image": "minimal:2025.2", "size": "small", "secret_env": {"API_KEY": "s3"}}
        status, body = await hub.api("POST", f"/users/{user}/server", json=options)
        if status in (201, 202):
            with pytest.raises((AssertionError, TimeoutError)):
                await hub.wait_ready(user, timeout=30)
        else:
            assert status in (400, 500, 503), (status, body)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s, model = await hub.api("GET", f"/users/{user}")
            if s == 200 and not model["servers"] and not model.get("pending"):
                break
            await asyncio.sleep(0.5)
        log = hub.log_path.read_text()
        assert "forbidden" in log.lower(), hub.log_tail(40)
    finally:
        await hub.stop()
        singleuser.stop()
