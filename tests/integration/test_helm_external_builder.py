"""The builder-only chart (helm/aicoe-image-builder) beside an existing hub: rendered with
the values docs/zero-to-jupyterhub.md gives for a zero-to-jupyterhub hub (its hub's URL, its
Secret holding the service's token, its pods' labels), its objects asserted and applied to the
real API server; and the all-in-one chart's hub (builder.enabled=false, standing in for z2jh)
registering that external service through hub.services."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest
import yaml
from harness.helm_chart import (
    BUILDER_CHART,
    apply,
    by_kind,
    get,
    helm,
    one,
    remove_cluster_objects,
    render,
)
from kubernetes_asyncio import client
from traitlets.config import PyFileConfigLoader

from aicoe_devcluster.controlplane import find_binary

RELEASE = "image-builder"  # names: <fullname>-builder
FULLNAME = "aicoe"
BUILDER = f"{FULLNAME}-builder"
TOKEN_SECRET = {"name": "hub", "key": "hub.services.image-builder.apiToken"}  # z2jh's Secret
EXTERNAL = {
    "fullnameOverride": FULLNAME,
    "hub.url": "http://hub:8081",
    "hub.apiTokenSecret": TOKEN_SECRET,
    "hub.podLabels": {"component": "hub", "release": "jhub"},
    "hub.proxyPodLabels": {"component": "proxy", "release": "jhub"},
    "imagePolicy": {"default_policy": {"images": ["*"]}, "group_policies": {}},
    "registry": "quay.io/my-org",
    "pushSecret": "quay-push",
    "replicas": 2,
    "buildPods.nodeSelector": {"node-role/builds": "true"},
    "buildPods.tolerations": [{"key": "builds", "operator": "Exists", "effect": "NoSchedule"}],
}


def external(namespace: str = "jupyterhub", **extra) -> list[dict]:
    return render(
        chart=BUILDER_CHART,
        namespace=namespace,
        release=RELEASE,
        values={**EXTERNAL, **extra},
    )


def helm_on(control_plane, *args: str) -> str:
    """helm against the test API server (lookup and --dry-run=server see it)."""
    result = subprocess.run(
        [str(find_binary("helm")), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def env_of(deployment: dict) -> dict[str, dict]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_builder_talks_to_the_existing_hub():
    docs = external()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "Secret", "Role"}
    # only the builder: no hub, proxy or hub config of the all-in-one chart
    assert [d["metadata"]["name"] for d in by_kind(docs, "Deployment")] == [BUILDER]
    assert by_kind(docs, "ConfigMap") == []
    deployment = one(docs, "Deployment", BUILDER)
    env = env_of(deployment)
    assert env["JUPYTERHUB_API_URL"]["value"] == "http://hub:8081/hub/api"
    assert env["JUPYTERHUB_SERVICE_NAME"]["value"] == "image-builder"
    assert env["JUPYTERHUB_SERVICE_PREFIX"]["value"] == "/services/image-builder/"
    assert env["JUPYTERHUB_OAUTH_CALLBACK_URL"]["value"] == (
        "/services/image-builder/oauth_callback"
    )
    # the token the hub has for the service, read from the hub's Secret
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == TOKEN_SECRET
    assert json.loads(env["AICOE_BUILDER_IMAGE_POLICY"]["value"]) == EXTERNAL["imagePolicy"]
    assert env["AICOE_BUILDER_REGISTRY"]["value"] == "quay.io/my-org"
    assert env["AICOE_BUILDER_BUILD_NAMESPACE"]["value"] == "jupyterhub-builds"
    assert json.loads(env["AICOE_BUILDER_BUILD_NODE_SELECTOR"]["value"]) == {
        "node-role/builds": "true"
    }
    assert (
        json.loads(env["AICOE_BUILDER_BUILD_TOLERATIONS"]["value"])
        == (EXTERNAL["buildPods.tolerations"])
    )
    # The API server is found from the kubelet's KUBERNETES_SERVICE_HOST of the builder's own
    # pod (nothing to inherit from the hub) and its ServiceAccount's token.
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == BUILDER
    assert spec.get("automountServiceAccountToken", True) is True
    assert "KUBERNETES_SERVICE_HOST" not in env
    # z2jh's hub NetworkPolicy admits pods with this label
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["hub.jupyter.org/network-access-hub"] == "true"

    # The Service that z2jh's hub.services.image-builder.url names.
    service = one(docs, "Service", BUILDER)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]

    # Its own Secret keeps the cookie and webhook secrets; the API token is the hub's.
    secret = one(docs, "Secret", BUILDER)
    assert set(secret["data"]) == {"builder.cookie-secret", "builder.webhook-secret"}
    assert all(len(base64.b64decode(v)) == 64 for v in secret["data"].values())

    # Two replicas: a PodDisruptionBudget keeps one through a drain.
    pdb = one(docs, "PodDisruptionBudget", BUILDER)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_builder_rbac_and_network_policy_name_the_existing_hub():
    docs = external()
    roles = {(r["metadata"]["name"], r["metadata"].get("namespace")) for r in by_kind(docs, "Role")}
    assert roles == {
        (BUILDER, None),  # build records, their ConfigMaps
        (f"{BUILDER}-builds", "jupyterhub-builds"),  # build Jobs
        (f"{BUILDER}-catalog", None),  # publish ImageStreams
        (f"{BUILDER}-import", "jupyterhub"),  # image import (plain Kubernetes)
    }
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": BUILDER, "namespace": "jupyterhub"}
        ]
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
    rules = one(docs, "Role", BUILDER)["rules"]
    assert any("imagebuilds" in r["resources"] for r in rules)
    assert one(docs, "ServiceAccount", BUILDER)

    policy = one(docs, "NetworkPolicy", BUILDER)["spec"]
    z2jh = [{"podSelector": {"matchLabels": EXTERNAL["hub.podLabels"]}}]
    z2jh_proxy = [{"podSelector": {"matchLabels": EXTERNAL["hub.proxyPodLabels"]}}]
    assert policy["ingress"][0]["from"] == z2jh + z2jh_proxy
    to_hub = [r for r in policy["egress"] if r.get("to") == z2jh]
    assert to_hub and to_hub[0]["ports"] == [{"protocol": "TCP", "port": 8081}]
    builds = one(docs, "NetworkPolicy", f"{BUILDER}-builds")
    assert builds["metadata"]["namespace"] == "jupyterhub-builds"

    # the CRDs an existing hub needs (ImageStreams on plain Kubernetes, build records)
    crds = {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")}
    assert crds == {"imagestreams.image.openshift.io", "imagebuilds.aicoe-spawner.io"}


def test_a_hub_under_a_base_url():
    env = env_of(one(external(**{"hub.baseUrl": "/jh/"}), "Deployment", BUILDER))
    assert env["JUPYTERHUB_API_URL"]["value"] == "http://hub:8081/jh/hub/api"
    assert env["JUPYTERHUB_SERVICE_PREFIX"]["value"] == "/jh/services/image-builder/"
    probe = one(external(**{"hub.baseUrl": "/jh/"}), "Deployment", BUILDER)["spec"]["template"]
    container = probe["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/jh/services/image-builder/health"


def test_without_a_hub_secret_the_token_is_generated_and_kept_in_the_builders_secret():
    docs = external(**{"hub.apiTokenSecret": {"name": "", "key": ""}})
    secret = one(docs, "Secret", BUILDER)
    assert "builder.api-token" in secret["data"]
    env = env_of(one(docs, "Deployment", BUILDER))
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": BUILDER,
        "key": "builder.api-token",
    }


def test_disabled_only_the_imagestream_crd():
    docs = external(enabled=False)
    assert [d["metadata"]["name"] for d in docs] == ["imagestreams.image.openshift.io"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "hub.url=hub:8081"], "/hub/url"),
        (["--set", "hub.typo=1"], "additional properties 'typo' not allowed"),
        (
            ["--set", "openshift.enabled=true"],
            "imageStreams.crd.install must be false with openshift.enabled",
        ),
    ],
)
def test_bad_builder_values_are_refused(args, message):
    result = helm("template", "b", str(BUILDER_CHART), *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_kube_version_floor():
    """kubeVersion >=1.30: the admission policy's API (v1 from 1.30) and the ImageBuild CRD's
    CEL transition rules."""
    for chart in (BUILDER_CHART, BUILDER_CHART.parent / "aicoe-spawner"):
        old = helm("template", "b", str(chart), "--kube-version", "1.29.9", check=False)
        assert old.returncode != 0 and "kubeVersion" in old.stderr
        assert helm("template", "b", str(chart), "--kube-version", "1.30.0").returncode == 0


async def test_the_external_builder_applies_to_the_api_server(kube, namespace):
    """Server-side apply of the builder-only chart (the session has the CRDs already)."""
    docs = external(
        namespace,
        **{"crd.install": False, "imageStreams.crd.install": False},
    )
    try:
        await apply(kube, by_kind(docs, "Namespace"), namespace)
        assert len(await apply(kube, docs, namespace, dry_run=True)) == len(docs)
        await apply(kube, docs, namespace)
        for doc in docs:
            assert await get(kube, doc, namespace) is not None, doc["metadata"]["name"]
    finally:
        await remove_cluster_objects(kube, docs)


def test_the_hub_registers_the_external_builder(tmp_path, monkeypatch):
    """Our hub chart without its builder, standing in for z2jh: the hub.services entry of
    docs/zero-to-jupyterhub.md registers the external builder with its URL and token."""
    docs = render(
        values={
            "builder.enabled": False,
            "hub.services": {
                "image-builder": {
                    "url": f"http://{BUILDER}:8080",
                    "apiToken": "t0ken",
                    "display": True,
                    "oauth_no_confirm": True,
                    "oauth_client_allowed_scopes": [
                        "custom:image-builder:build",
                        "custom:image-builder:admin",
                    ],
                }
            },
        }
    )
    data = one(docs, "ConfigMap", "aicoe-aicoe-spawner-hub")["data"]
    (tmp_path / "jupyterhub_config.py").write_text(data["jupyterhub_config.py"])
    secret = one(docs, "Secret", "aicoe-aicoe-spawner-hub")["data"]["values.json"]
    (tmp_path / "values.json").write_text(base64.b64decode(secret).decode())
    monkeypatch.setenv("POD_NAMESPACE", "aicoe")
    c = PyFileConfigLoader("jupyterhub_config.py", path=str(tmp_path)).load_config()
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "image-builder"]
    assert service["url"] == f"http://{BUILDER}:8080"
    assert service["api_token"] == "t0ken"
    # without its own builder the chart still ships the ImageStream CRD, which the hub reads
    crds = {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")}
    assert crds == {"imagestreams.image.openshift.io"}
    assert [d for d in by_kind(docs, "Deployment") if "builder" in d["metadata"]["name"]] == []


def test_builder_chart_lints():
    result = helm("lint", "--strict", str(BUILDER_CHART), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    with_external = ["--set-json", f"hub.apiTokenSecret={json.dumps(TOKEN_SECRET)}"]
    result = helm("lint", "--strict", str(BUILDER_CHART), *with_external, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_notes_tell_how_to_register_the_service(control_plane, namespace):
    """``helm install --dry-run=server`` against the test API server (the session has the
    CRDs already): NOTES name the hub.services entry."""
    args = ["install", RELEASE, str(BUILDER_CHART), "--dry-run=server", "-n", namespace]
    args += ["--set", "crd.install=false", "--set", "imageStreams.crd.install=false"]
    args += ["--set", "fullnameOverride=aicoe", "--set", "hub.url=http://hub:8081"]
    out = helm_on(control_plane, *args)
    assert "hub.services.image-builder.url: http://aicoe-builder:8080" in out
    assert "get secret aicoe-builder" in out
    assert "talks to the hub at http://hub:8081" in out


async def test_an_upgrade_keeps_the_builder_tokens_the_hub_secret_held(
    kube, control_plane, namespace
):
    """Releases before the builder chart kept the builder's tokens in the hub's Secret: the
    builder chart reads them from there (lookup) instead of making new ones, so the upgrade
    logs nobody out and the hub keeps the token it has."""
    old = {"builder.api-token": "old-api-token", "builder.cookie-secret": "old-cookie"}
    await client.CoreV1Api(kube).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "r-aicoe-spawner-hub"}, "stringData": old},
    )
    args = ["template", "r", str(BUILDER_CHART.parent / "aicoe-spawner"), "-n", namespace]
    args += ["--dry-run=server", "--kube-version", "1.36.0"]
    args += ["--show-only", "charts/builder/templates/secret.yaml"]
    (secret,) = [d for d in yaml.safe_load_all(helm_on(control_plane, *args)) if d]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert {k: data[k] for k in old} == old
    assert len(data["builder.webhook-secret"]) == 64  # not held before: made anew


def test_the_all_in_one_chart_depends_on_this_builder_chart():
    parent_dir = BUILDER_CHART.parent / "aicoe-spawner"
    parent = yaml.safe_load((parent_dir / "Chart.yaml").read_text())
    builder = yaml.safe_load((BUILDER_CHART / "Chart.yaml").read_text())
    (dependency,) = parent["dependencies"]
    assert dependency == {
        "name": "aicoe-image-builder",
        "version": builder["version"],
        "repository": "file://../aicoe-image-builder",
        "alias": "builder",
    }
    # the copy helm loads is this chart (helm/aicoe-image-builder links to it)
    assert (parent_dir / "charts" / "aicoe-image-builder").resolve() == BUILDER_CHART.resolve()
    # one image for hub and builder: the same default tag
    assert builder["appVersion"] == parent["appVersion"]
    assert builder["kubeVersion"] == parent["kubeVersion"]
    # every builder object comes from the builder chart (none left in the parent's
    # templates) but the parent's image-policy ConfigMap, which holds the hub's values
    out = helm("template", "r", str(parent_dir)).stdout
    sources = {}
    for part in out.split("\n---\n"):
        source = next(line for line in part.splitlines() if line.startswith("# Source: "))
        doc = yaml.safe_load(part)
        sources[(doc["kind"], doc["metadata"]["name"])] = source.removeprefix("# Source: ")
    from_parent = {
        k for k, src in sources.items() if "builder" in k[1] and "/charts/builder/" not in src
    }
    assert from_parent == {("ConfigMap", "r-aicoe-spawner-builder-image-policy")}
    assert ("Deployment", "r-aicoe-spawner-builder") in sources
