"""The Helm chart: lint, template and apply to the real API server for the default, OpenShift
and plain-Kubernetes values; the chart's jupyterhub_config.py loads with its rendered values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helm_chart import CHART, VALUES, apply, by_kind, get, helm, one, render
from kubernetes_asyncio import client
from traitlets.config import Config, PyFileConfigLoader

from aicoe_spawner.devcluster.controlplane import CRD_DIR

VARIANTS = list(VALUES)
CRD_FILE = "imagestreams.image.openshift.io.yaml"
BUILD_CRD_FILE = "imagebuilds.aicoe-spawner.io.yaml"
ROUTE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "routes.route.openshift.io"},
    "spec": {
        "group": "route.openshift.io",
        "scope": "Namespaced",
        "names": {"kind": "Route", "plural": "routes", "singular": "route"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def test_chart_ships_the_devcluster_imagebuild_crd():
    """One ImageBuild CRD: the chart's copy is byte for byte the one the tests install."""
    shipped = CHART / "files" / "crds" / BUILD_CRD_FILE
    assert shipped.read_bytes() == (CRD_DIR / BUILD_CRD_FILE).read_bytes()


def test_chart_ships_the_devcluster_imagestream_crd():
    """One ImageStream CRD: the chart's copy is byte for byte the one the tests install."""
    shipped = CHART / "files" / "crds" / CRD_FILE
    assert shipped.read_bytes() == (CRD_DIR / CRD_FILE).read_bytes()


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint(variant):
    args = ["lint", "--strict", str(CHART)]
    for path in VALUES[variant]:
        args += ["-f", str(path)]
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_template(variant):
    docs = render(variant, namespace="jh", release="r")
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "ImageStream",
    } <= kinds
    deployments = {d["metadata"]["name"] for d in by_kind(docs, "Deployment")}
    assert deployments == {
        "r-aicoe-spawner-hub",
        "r-aicoe-spawner-proxy",
        "r-aicoe-spawner-builder",
    }
    openshift = variant == "openshift"
    crds = {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")}
    assert ("imagestreams.image.openshift.io" in crds) is not openshift
    # the builder's records are its own CRD, on both platforms
    build_crd = one(docs, "CustomResourceDefinition", "imagebuilds.aicoe-spawner.io")
    assert build_crd["spec"] == yaml.safe_load((CRD_DIR / BUILD_CRD_FILE).read_text())["spec"]
    assert build_crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert ("Route" in kinds) is openshift
    assert ("Ingress" in kinds) is (variant == "kubernetes")

    # The hub runs the chart's jupyterhub_config.py from its ConfigMap, as its ServiceAccount.
    hub = one(docs, "Deployment", "r-aicoe-spawner-hub")["spec"]["template"]["spec"]
    assert hub["serviceAccountName"] == "r-aicoe-spawner-hub"
    assert hub["containers"][0]["command"][-1] == "/usr/local/etc/jupyterhub/jupyterhub_config.py"
    config = one(docs, "ConfigMap", "r-aicoe-spawner-hub")["data"]
    assert config["jupyterhub_config.py"] == (CHART / "files" / "jupyterhub_config.py").read_text()
    values = json.loads(config["values.json"])
    assert values["namespace"] == "jh" and values["imageNamespaces"] == ["jh"]
    assert values["builder"]["url"] == "http://r-aicoe-spawner-builder:8080"

    # The builder's Role has the OpenShift build rules exactly when on OpenShift.
    builder_role = one(docs, "Role", "r-aicoe-spawner-builder")
    groups = {g for rule in builder_role["rules"] for g in rule["apiGroups"]}
    assert ("build.openshift.io" in groups) is openshift
    builder = one(docs, "Deployment", "r-aicoe-spawner-builder")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in builder["containers"][0]["env"]}
    assert env["AICOE_BUILDER_BACKEND"] == ("auto" if openshift else "kubernetes")
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == "/services/image-builder/"
    # every builder replica signs cookies with the one secret in the chart's Secret
    (cookie,) = [
        e for e in builder["containers"][0]["env"] if e["name"] == "AICOE_BUILDER_COOKIE_SECRET"
    ]
    assert cookie["valueFrom"]["secretKeyRef"] == {
        "name": "r-aicoe-spawner-hub",
        "key": "builder.cookie-secret",
    }

    if not openshift:
        crd = one(docs, "CustomResourceDefinition", "imagestreams.image.openshift.io")
        source = yaml.safe_load((CRD_DIR / CRD_FILE).read_text())
        assert crd["spec"] == source["spec"]
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    for stream in by_kind(docs, "ImageStream"):
        assert stream["metadata"]["labels"]["opendatahub.io/notebook-image"] == "true"
        assert stream["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


def helm_env(control_plane) -> dict[str, str]:
    import os

    return {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}


def run_helm(control_plane, *args: str) -> str:
    import subprocess

    from aicoe_spawner.devcluster.controlplane import find_binary

    result = subprocess.run(
        [str(find_binary("helm")), *args],
        capture_output=True,
        text=True,
        env=helm_env(control_plane),
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def test_notes_render(control_plane, kube, namespace):
    # The session's API server has the ImageStream and ImageBuild CRDs already (not Helm's):
    # leave them out.
    out = run_helm(
        control_plane,
        "install",
        "r",
        str(CHART),
        "--dry-run=server",
        "-n",
        namespace,
        "--set",
        "imageStreams.crd.install=false",
        "--set",
        "builder.crd.install=false",
    )
    assert f"kubectl port-forward -n {namespace} service/r-aicoe-spawner-proxy-public" in out
    assert 'WARNING: the authenticator is "dummy"' in out
    await ensure_route_api(kube)
    out = run_helm(
        control_plane,
        "install",
        "r",
        str(CHART),
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        str(VALUES["openshift"][0]),
        "--set",
        "hub.config.JupyterHub.authenticator_class=github",
        "--set",
        "builder.crd.install=false",
    )
    assert "oc get route r-aicoe-spawner" in out
    assert "WARNING" not in out


async def test_helm_install_upgrade_uninstall(control_plane, kube, namespace):
    """The real helm against the real API server: install (hooks create the example
    ImageStreams), upgrade keeps the generated secrets, uninstall removes the release.
    The session already has the ImageStream CRD, so the chart's copy is left out here."""
    custom = client.CustomObjectsApi(kube)
    core = client.CoreV1Api(kube)
    args = ["-n", namespace, "--set", "imageStreams.crd.install=false"]
    args += ["--set", "builder.crd.install=false"]
    run_helm(control_plane, "install", "r", str(CHART), *args)
    streams = await custom.list_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams"
    )
    names = sorted(s["metadata"]["name"] for s in streams["items"])
    assert names == ["jupyter-datascience-notebook", "jupyter-minimal-notebook"]
    secret = await core.read_namespaced_secret("r-aicoe-spawner-hub", namespace)
    deployments = await client.AppsV1Api(kube).list_namespaced_deployment(namespace)
    assert len(deployments.items) == 3

    run_helm(control_plane, "upgrade", "r", str(CHART), *args, "--set", "builder.replicas=2")
    again = await core.read_namespaced_secret("r-aicoe-spawner-hub", namespace)
    assert again.data == secret.data  # tokens survive upgrades
    builder = await client.AppsV1Api(kube).read_namespaced_deployment(
        "r-aicoe-spawner-builder", namespace
    )
    assert builder.spec.replicas == 2

    run_helm(control_plane, "uninstall", "r", "-n", namespace)
    deployments = await client.AppsV1Api(kube).list_namespaced_deployment(namespace)
    assert deployments.items == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "hub.typo=1"], "additional properties 'typo' not allowed"),
        (["--set", "hub.db.type=postgres"], "value must be one of"),
        (["--set", "builder.backend=docker"], "value must be one of"),
        (["--set", "route.enabled=true"], "route.enabled needs openshift.enabled"),
        (["--set", "openshift.enabled=true"], "imageStreams.crd.install must be false"),
    ],
)
def test_bad_values_are_refused(args, message):
    result = helm("template", "r", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_generated_secrets_are_set_and_explicit_ones_kept():
    docs = render(sets=["proxy.secretToken=abc"])
    secret = one(docs, "Secret", "aicoe-aicoe-spawner-hub")["data"]
    assert set(secret) == {
        "proxy.token",
        "hub.cookie-secret",
        "builder.api-token",
        "builder.cookie-secret",
        "builder.webhook-secret",
    }
    assert secret["proxy.token"] == "YWJj"
    assert len(secret["builder.api-token"]) > 40


@pytest.mark.parametrize("variant", VARIANTS)
async def test_manifests_apply_to_the_api_server(variant, kube, namespace):
    """Server-side dry run of every rendered manifest (nothing stored), then a real
    server-side apply, read back; applying again changes no content."""
    if variant == "openshift":
        await ensure_route_api(kube)
    docs = render(variant, namespace=namespace, release="r")
    dry = await apply(kube, docs, namespace, dry_run=True)
    assert len(dry) == len(docs)
    hub = one(docs, "Deployment", "r-aicoe-spawner-hub")
    assert await get(kube, hub, namespace) is None  # the dry run stored nothing

    applied = await apply(kube, docs, namespace)
    for doc, stored in zip(sorted(docs, key=_order), applied, strict=True):
        assert stored["kind"] == doc["kind"]
        assert await get(kube, doc, namespace) is not None, doc["metadata"]["name"]
    stored_hub = await get(kube, hub, namespace)
    assert stored_hub["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "quay.io/aicoe/aicoe-spawner:"
    )
    again = await apply(kube, docs, namespace)
    for first, second in zip(applied, again, strict=True):
        assert _content(second) == _content(first), first["metadata"]["name"]


def _content(obj: dict) -> dict:
    content = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    content["labels"] = obj["metadata"].get("labels")
    content["annotations"] = obj["metadata"].get("annotations")
    return content


async def ensure_route_api(kube) -> None:
    """The test API server has no Route API: install a permissive stand-in CRD."""
    try:
        await client.ApiextensionsV1Api(kube).create_custom_resource_definition(ROUTE_CRD)
    except client.ApiException as e:
        assert e.status == 409
    await _wait_served(kube, "route.openshift.io/v1", "Route")


def _order(doc: dict) -> int:
    if doc["kind"] == "CustomResourceDefinition":
        return 0
    return 2 if "helm.sh/hook" in doc["metadata"].get("annotations", {}) else 1


async def _wait_served(kube, api_version: str, kind: str, timeout: float = 30) -> None:
    import asyncio
    import time

    from helm_chart import forget_discovery, resource_of

    deadline = time.monotonic() + timeout
    while True:
        forget_discovery()
        try:
            await resource_of(kube, api_version, kind)
            return
        except (LookupError, client.ApiException):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# -- the chart's jupyterhub_config.py ----------------------------------------------------------


def load_chart_config(tmp_path: Path, monkeypatch, **render_kwargs) -> Config:
    docs = render(**render_kwargs)
    data = one(docs, "ConfigMap", "aicoe-aicoe-spawner-hub")["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("IMAGE_BUILDER_API_TOKEN", "builder-token")
    monkeypatch.setenv("POD_NAMESPACE", "aicoe")
    return PyFileConfigLoader("jupyterhub_config.py", path=str(tmp_path)).load_config()


def test_chart_config_loads_with_defaults(tmp_path, monkeypatch):
    c = load_chart_config(tmp_path, monkeypatch)
    assert c.JupyterHub.spawner_class == "aicoe"
    assert c.JupyterHub.hub_connect_url == "http://aicoe-aicoe-spawner-hub:8081"
    assert c.ConfigurableHTTPProxy.api_url == "http://aicoe-aicoe-spawner-proxy-api:8001"
    assert c.ConfigurableHTTPProxy.should_start is False
    assert c.KubeSpawner.namespace == "aicoe"
    assert c.AICoESpawner.image_namespaces == ["aicoe"]
    assert c.KubeSpawner.storage_pvc_ensure is True
    assert c.JupyterHub.db_url == "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
    (service,) = c.JupyterHub.services
    assert service["name"] == "image-builder"
    assert service["url"] == "http://aicoe-aicoe-spawner-builder:8080"
    assert service["api_token"] == "builder-token"
    assert set(c.JupyterHub.custom_scopes) == {
        "custom:image-builder:build",
        "custom:image-builder:admin",
    }
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "custom:image-builder:build" in roles["user"]["scopes"]
    assert roles["image-builder-service"]["services"] == ["image-builder"]
    assert c.JupyterHub.authenticator_class == "dummy"


def test_chart_config_passthrough_and_extra_config_win(tmp_path, monkeypatch):
    c = load_chart_config(
        tmp_path,
        monkeypatch,
        values={
            "hub.config": {
                "AICoESpawner": {"max_gpus": 2, "image_namespaces": ["shared-images"]},
                "JupyterHub": {"authenticator_class": "github"},
            },
            "hub.extraConfig": {
                "00-first": "c.KubeSpawner.start_timeout = 30",
                "10-second": "c.KubeSpawner.start_timeout += 1",
            },
            "builder.builderGroups": ["data-scientists"],
            "singleuser.storage": {"type": "none"},
            "hub.db": {"type": "other", "url": "postgresql://db/hub"},
        },
    )
    assert c.AICoESpawner.max_gpus == 2
    assert c.AICoESpawner.image_namespaces == ["shared-images"]
    assert c.JupyterHub.authenticator_class == "github"
    assert c.KubeSpawner.start_timeout == 31
    assert c.KubeSpawner.storage_pvc_ensure is False
    assert c.JupyterHub.db_url == "postgresql://db/hub"
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "custom:image-builder:build" not in roles["user"]["scopes"]
    assert roles["image-builder-users"]["groups"] == ["data-scientists"]


def test_chart_config_without_builder(tmp_path, monkeypatch):
    c = load_chart_config(tmp_path, monkeypatch, sets=["builder.enabled=false"])
    assert "services" not in c.JupyterHub
    assert "custom_scopes" not in c.JupyterHub
