"""The Helm chart: lint, template and apply to the real API server for the default, OpenShift
and plain-Kubernetes values; the chart's jupyterhub_config.py loads with its rendered values."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from harness.helm_chart import (
    BUILDER_CHART,
    CHART,
    VALUES,
    apply,
    build_namespace,
    by_kind,
    get,
    helm,
    one,
    remove_cluster_objects,
    render,
)
from kubernetes_asyncio import client
from traitlets.config import Config, PyFileConfigLoader

from aicoe_devcluster.cluster import delete_namespace
from aicoe_devcluster.controlplane import CRD_DIR
from aicoe_spawner.builder.config import settings_from_env
from aicoe_spawner.pod import check_pull_secret_entries

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
    shipped = BUILDER_CHART / "files" / "crds" / BUILD_CRD_FILE
    assert shipped.read_bytes() == (CRD_DIR / BUILD_CRD_FILE).read_bytes()


def test_chart_ships_the_devcluster_imagestream_crd():
    """One ImageStream CRD: the chart's copy is byte for byte the one the tests install."""
    shipped = BUILDER_CHART / "files" / "crds" / CRD_FILE
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
        "r-aicoe-spawner-image-puller",  # prePuller.enabled
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
    assert config == {
        "jupyterhub_config.py": (CHART / "files" / "jupyterhub_config.py").read_text()
    }
    values = json.loads(secret_data(docs, "r-aicoe-spawner-hub")["values.json"])
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
    # every builder replica signs cookies with the one secret in the builder's Secret
    (cookie,) = [
        e for e in builder["containers"][0]["env"] if e["name"] == "AICOE_BUILDER_COOKIE_SECRET"
    ]
    assert cookie["valueFrom"]["secretKeyRef"] == {
        "name": "r-aicoe-spawner-builder",
        "key": "builder.cookie-secret",
    }
    # the hub reads the builder's API token from there too
    hub_env = {e["name"]: e for e in hub["containers"][0]["env"]}
    assert hub_env["IMAGE_BUILDER_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "r-aicoe-spawner-builder",
        "key": "builder.api-token",
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

    from aicoe_devcluster.controlplane import find_binary

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
        "builder.imageStreams.crd.install=false",
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
    apps = client.AppsV1Api(kube)
    args = ["-n", namespace, "--set", "builder.imageStreams.crd.install=false"]
    args += ["--set", "builder.crd.install=false"]
    secrets = [f"--set-json={k}={json.dumps(v)}" for k, v in SECRET_VALUES.items()]
    run_helm(control_plane, "install", "r", str(CHART), *args, *secrets)
    # `kubectl get configmap -o yaml` of the release shows none of the secret values
    config_maps = await core.list_namespaced_config_map(namespace)
    assert config_maps.items
    text = json.dumps(kube.sanitize_for_serialization(config_maps))
    assert not [n for n in NEEDLES if n in text]
    streams = await custom.list_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams"
    )
    names = sorted(s["metadata"]["name"] for s in streams["items"])
    assert names == ["jupyter-datascience-notebook", "jupyter-minimal-notebook"]
    secret = await core.read_namespaced_secret("r-aicoe-spawner-hub", namespace)
    builder_secret = await core.read_namespaced_secret("r-aicoe-spawner-builder", namespace)
    assert set(builder_secret.data) == BUILDER_TOKENS
    deployments = await apps.list_namespaced_deployment(namespace)
    assert len(deployments.items) == 4  # hub, proxy, builder, image puller
    rolls = {d.metadata.name: d.spec.template.metadata.annotations for d in deployments.items}
    # every pod that reads a Secret rolls when it changes (the image puller reads none)
    assert rolls.pop("r-aicoe-spawner-image-puller") is None
    assert all(a.get("checksum/secret") for a in rolls.values()), rolls

    upgrade = ["upgrade", "r", str(CHART), *args, *secrets, "--set", "builder.replicas=2"]
    run_helm(control_plane, *upgrade)
    again = await core.read_namespaced_secret("r-aicoe-spawner-hub", namespace)
    assert again.data == secret.data  # tokens survive upgrades
    # ... the builder's too: its service token is the one the hub has, across upgrades
    builder_again = await core.read_namespaced_secret("r-aicoe-spawner-builder", namespace)
    assert builder_again.data == builder_secret.data
    deployments = await apps.list_namespaced_deployment(namespace)
    # ... and so no pod rolls for them (the generated tokens are read back, not made anew)
    assert {
        d.metadata.name: d.spec.template.metadata.annotations
        for d in deployments.items
        if d.metadata.name != "r-aicoe-spawner-image-puller"
    } == rolls
    builder = await client.AppsV1Api(kube).read_namespaced_deployment(
        "r-aicoe-spawner-builder", namespace
    )
    assert builder.spec.replicas == 2

    run_helm(control_plane, "uninstall", "r", "-n", namespace)
    deployments = await client.AppsV1Api(kube).list_namespaced_deployment(namespace)
    assert deployments.items == []
    # the build namespace goes with the release (here no namespace controller finishes it)
    builds = await core.read_namespace(build_namespace(namespace))
    assert builds.metadata.deletion_timestamp is not None
    await delete_namespace(kube, build_namespace(namespace))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "hub.typo=1"], "additional properties 'typo' not allowed"),
        (["--set", "hub.db.type=postgres"], "value must be one of"),
        (["--set", "builder.backend=docker"], "value must be one of"),
        (["--set", "route.enabled=true"], "route.enabled needs openshift.enabled"),
        (["--set", "openshift.enabled=true"], "builder.openshift.enabled must agree"),
        (
            ["--set", "openshift.enabled=true", "--set", "builder.openshift.enabled=true"],
            "imageStreams.crd.install must be false",
        ),
        (["--set", "fullnameOverride=jh"], "set builder.fullnameOverride to the same prefix"),
        (["--set", "networkPolicy.dnsPorts={5353}"], "builder.networkPolicy.dnsPorts must be"),
        (["--set", "imageStreams.namespaces={nb}"], "builder.imageImport.namespaces must be"),
    ],
)
def test_bad_values_are_refused(args, message):
    result = helm("template", "r", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


HUB_TOKENS = {"proxy.token", "hub.cookie-secret"}
BUILDER_TOKENS = {"builder.api-token", "builder.cookie-secret", "builder.webhook-secret"}
TOKENS = HUB_TOKENS | BUILDER_TOKENS


def secret_data(docs: list[dict], name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in one(docs, "Secret", name)["data"].items()}


def test_generated_secrets_are_set_and_explicit_ones_kept():
    docs = render(sets=["proxy.secretToken=abc"])
    secret = secret_data(docs, "aicoe-aicoe-spawner-hub")
    assert set(secret) == {*HUB_TOKENS, "values.json"}
    assert secret["proxy.token"] == "abc"
    # the builder's tokens are in the builder chart's own Secret
    builder = secret_data(docs, "aicoe-aicoe-spawner-builder")
    assert set(builder) == BUILDER_TOKENS
    assert len(builder["builder.api-token"]) == 64


# What an admin puts in values that must not be readable with `view` on the namespace or by
# the builder's ServiceAccount (both may read ConfigMaps).
SECRET_VALUES = {
    "hub.config": {"GitHubOAuthenticator": {"client_secret": "oauth-s3cr3t-value"}},
    "hub.db": {"type": "other", "url": "postgresql://hub:db-pa55word@db/hub"},
    "hub.extraConfig": {"10-key": "c.Spawner.environment = {'KEY': 'extra-s3cr3t'}"},
    "proxy.secretToken": "proxy-t0ken-value",
    "builder.webhookSecret": "webhook-s3cr3t-value",
}
NEEDLES = (
    "oauth-s3cr3t-value",
    "db-pa55word",
    "extra-s3cr3t",
    "proxy-t0ken-value",
    "webhook-s3cr3t-value",
)


def test_secret_values_are_in_no_config_map():
    docs = render(values=SECRET_VALUES)
    for config_map in by_kind(docs, "ConfigMap"):
        text = json.dumps(config_map)
        assert not [n for n in NEEDLES if n in text], config_map["metadata"]["name"]
    for deployment in by_kind(docs, "Deployment"):  # nor in a pod spec (env, args)
        text = json.dumps(deployment)
        assert not [n for n in NEEDLES if n in text], deployment["metadata"]["name"]
    secret = json.dumps(
        [secret_data(docs, f"aicoe-aicoe-spawner-{name}") for name in ("hub", "builder")]
    )
    assert all(n in secret for n in NEEDLES)


def test_an_existing_secret_holds_the_tokens():
    docs = render(values={"hub.existingSecret": "my-tokens", "builder.existingSecret": "my-tokens"})
    assert set(secret_data(docs, "aicoe-aicoe-spawner-hub")) == {"values.json"}
    assert [s for s in by_kind(docs, "Secret") if "builder" in s["metadata"]["name"]] == []
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for d in by_kind(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        for e in c["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert {r["key"] for r in refs} == TOKENS
    assert {r["name"] for r in refs} == {"my-tokens"}


def pod_annotations(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"].removeprefix("aicoe-aicoe-spawner-"): d["spec"]["template"][
            "metadata"
        ].get("annotations", {})
        for d in by_kind(docs, "Deployment")
    }


@pytest.mark.parametrize(
    ("value", "rolled"),
    [
        ("proxy.secretToken", {"hub", "proxy"}),
        ("hub.cookieSecret", {"hub"}),
        ("builder.apiToken", {"hub", "builder"}),
        ("builder.cookieSecret", {"builder"}),
        ("builder.webhookSecret", {"builder"}),
    ],
)
def test_a_changed_token_rolls_the_pods_that_use_it(value, rolled):
    fixed = {v: "a" * 64 for v in ("proxy.secretToken", "hub.cookieSecret", "builder.apiToken")}
    fixed |= {"builder.cookieSecret": "b" * 64, "builder.webhookSecret": "c" * 64}
    before = pod_annotations(render(values=fixed))
    after = pod_annotations(render(values={**fixed, value: "changed"}))
    assert {name for name in before if before[name] != after[name]} == rolled
    assert pod_annotations(render(values=fixed)) == before  # stable when nothing changes
    changed_config = pod_annotations(render(values={**fixed, "hub.config": {"X": {"y": 1}}}))
    assert {name for name in before if before[name] != changed_config[name]} == {"hub"}


@pytest.mark.parametrize("variant", VARIANTS)
async def test_manifests_apply_to_the_api_server(variant, kube, namespace):
    """Server-side dry run of every rendered manifest (nothing stored), then a real
    server-side apply, read back; applying again changes no content."""
    if variant == "openshift":
        await ensure_route_api(kube)
    docs = render(variant, namespace=namespace, release="r")
    try:
        # the build namespace first: a dry run creates nothing to put objects in
        await apply(kube, by_kind(docs, "Namespace"), namespace)
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
    finally:
        await remove_cluster_objects(kube, docs)


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

    from harness.helm_chart import forget_discovery, resource_of

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
    """The hub's config directory as the pod mounts it: jupyterhub_config.py from the
    ConfigMap, values.json from the Secret."""
    docs = render(**render_kwargs)
    data = one(docs, "ConfigMap", "aicoe-aicoe-spawner-hub")["data"]
    (tmp_path / "jupyterhub_config.py").write_text(data["jupyterhub_config.py"])
    values = secret_data(docs, "aicoe-aicoe-spawner-hub")["values.json"]
    (tmp_path / "values.json").write_text(values)
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
    service, culler = c.JupyterHub.services  # the culler: test_helm_culler.py
    assert (service["name"], culler["name"]) == ("image-builder", "jupyterhub-idle-culler")
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
    # user pods: fixed uid, fsGroup for their volumes, what Pod Security "restricted" asks
    assert (c.KubeSpawner.uid, c.KubeSpawner.fs_gid) == (1000, 100)
    assert c.KubeSpawner.pod_security_context == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert c.KubeSpawner.container_security_context == {
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_chart_config_on_openshift_leaves_the_uids_to_the_scc(tmp_path, monkeypatch):
    c = load_chart_config(tmp_path, monkeypatch, variant="openshift")
    assert "uid" not in c.KubeSpawner and "fs_gid" not in c.KubeSpawner
    assert c.KubeSpawner.pod_security_context == {"seccompProfile": {"type": "RuntimeDefault"}}


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


DESTINATIONS = [
    {
        "repositories": ["github.com/team-a/*"],
        "registry": "quay.io/team-a",
        "pushSecret": "team-a-push",
        "pullSecret": "team-a-pull",
        "allow": ["registry-project"],
    },
    {"repositories": ["github.com/team-b/*"], "registry": "quay.io/team-b", "pushSecret": "b"},
]


def test_one_destinations_value_reaches_the_builder_and_the_hub(tmp_path, monkeypatch):
    """builder.destinations: the builder's AICOE_BUILDER_DESTINATIONS (parsed as the builder
    parses it) and the hub's registry_pull_secrets (the entries with a pullSecret) are the
    same list; the builder gets no RBAC on those Secrets (it only names them in Jobs)."""
    values = {"builder.destinations": DESTINATIONS}
    docs = render(values=values)
    deployment = one(docs, "Deployment", "aicoe-aicoe-spawner-builder")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    settings = settings_from_env({"AICOE_BUILDER_DESTINATIONS": env["AICOE_BUILDER_DESTINATIONS"]})
    assert [(d.registry, d.push_secret, d.pull_secret) for d in settings.destinations] == [
        ("quay.io/team-a", "team-a-push", "team-a-pull"),
        ("quay.io/team-b", "b", ""),
    ]
    for role in by_kind(docs, "Role") + by_kind(docs, "ClusterRole"):
        for rule in role.get("rules") or []:
            names = set(rule.get("resourceNames") or [])
            assert not names & {"team-a-push", "team-a-pull", "b"}, role["metadata"]["name"]
    c = load_chart_config(tmp_path, monkeypatch, values=values)
    assert c.AICoESpawner.registry_pull_secrets == DESTINATIONS[:1]
    check_pull_secret_entries(c.AICoESpawner.registry_pull_secrets)  # what the hub accepts
    # a bad entry stops the install, not the builder at start
    bad = helm(
        "template",
        "r",
        str(CHART),
        "--set-json",
        'builder.destinations=[{"repositories": ["github.com/x/*"], "allow": ["registry-secret"]}]',
        check=False,
    )
    assert bad.returncode != 0 and "destinations" in bad.stderr


def test_chart_config_without_builder(tmp_path, monkeypatch):
    c = load_chart_config(tmp_path, monkeypatch, sets=["builder.enabled=false"])
    assert [s["name"] for s in c.JupyterHub.services] == ["jupyterhub-idle-culler"]
    assert "custom_scopes" not in c.JupyterHub


# -- pod security ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["default", "kubernetes"])
async def test_pods_pass_pod_security_restricted(variant, kube, namespace):
    """The hub, proxy and builder pods are admitted where Pod Security "restricted" is enforced
    (the API server's PodSecurity admission, on dry-run Pods made from each Deployment's
    template): non-root fixed uids, fsGroup, seccomp RuntimeDefault, no capabilities."""
    core = client.CoreV1Api(kube)
    await core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    docs = render(variant, namespace=namespace, release="r")
    for deployment in by_kind(docs, "Deployment"):
        template = deployment["spec"]["template"]
        spec = template["spec"]
        security = spec["securityContext"]
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert security["runAsUser"] > 0 and security["fsGroup"] > 0
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": deployment["metadata"]["name"], **template["metadata"]},
            "spec": spec,
        }
        await core.create_namespaced_pod(namespace, pod, dry_run="All")
    # the same pod without seccomp is refused: the namespace does enforce "restricted"
    del pod["spec"]["securityContext"]["seccompProfile"]
    with pytest.raises(client.ApiException) as refused:
        await core.create_namespaced_pod(namespace, pod, dry_run="All")
    assert refused.value.status == 403 and "seccompProfile" in refused.value.body


def test_openshift_assigns_the_uids():
    for deployment in by_kind(render("openshift"), "Deployment"):
        security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert security == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def test_every_pod_gets_its_pull_secrets(tmp_path, monkeypatch):
    values = {
        "hub.image.pullSecrets": ["hub-pull"],
        "proxy.chp.image.pullSecrets": ["proxy-pull"],
        "singleuser.imagePullSecrets": ["notebooks-pull"],
    }
    docs = render(values=values)
    pulls = {
        d["metadata"]["name"].removeprefix("aicoe-aicoe-spawner-"): d["spec"]["template"]["spec"][
            "imagePullSecrets"
        ]
        for d in by_kind(docs, "Deployment")
        if "imagePullSecrets" in d["spec"]["template"]["spec"]
    }
    assert pulls == {
        "hub": [{"name": "hub-pull"}],
        "proxy": [{"name": "proxy-pull"}],
        "image-puller": [{"name": "hub-pull"}],  # the hub's image
    }  # the builder chart cannot read hub.image: its own builder.image.pullSecrets
    own = render(values={**values, "builder.image.pullSecrets": ["builder-pull"]})
    builder = one(own, "Deployment", "aicoe-aicoe-spawner-builder")["spec"]["template"]["spec"]
    assert builder["imagePullSecrets"] == [{"name": "builder-pull"}]
    c = load_chart_config(tmp_path, monkeypatch, values=values)
    assert c.KubeSpawner.image_pull_secrets == ["notebooks-pull"]
    plain = render()
    assert not [
        d
        for d in by_kind(plain, "Deployment")
        if "imagePullSecrets" in d["spec"]["template"]["spec"]
    ]


def test_example_streams_carry_the_import_policy_each_tag_asks_for():
    """``scheduled`` (re-import on the interval) and ``insecure`` (a plain-HTTP registry, as
    the real node's) reach the tag's importPolicy as OpenShift spells it; neither, none."""
    stream = {
        "name": "nb",
        "tags": [
            {"name": "a", "from": "registry.local:5000/nb:1", "scheduled": True, "insecure": True},
            {"name": "b", "from": "quay.io/x/nb:2"},
        ],
    }
    docs = render(values={"imageStreams.examples.streams": [stream]})
    [rendered] = [d for d in by_kind(docs, "ImageStream") if d["metadata"]["name"] == "nb"]
    a, b = rendered["spec"]["tags"]
    assert a["importPolicy"] == {"scheduled": True, "insecure": True}
    assert a["from"] == {"kind": "DockerImage", "name": "registry.local:5000/nb:1"}
    assert "importPolicy" not in b
