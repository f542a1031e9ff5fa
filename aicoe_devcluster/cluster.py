"""Things a real cluster's controllers would do, done by hand for a bare kube-apiserver:
install CRDs, finish namespace deletion, and mint ServiceAccount tokens bound to a Role."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from .controlplane import CRD_DIR


async def api_client(kubeconfig: str | Path) -> client.ApiClient:
    """A kubernetes_asyncio ApiClient for a kubeconfig file (not the process default)."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def load_manifests(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


async def install_crds(
    api: client.ApiClient, paths: list[Path] | None = None, timeout: float = 30
) -> None:
    """Create (or update) CRDs and wait until each is Established and served."""
    ext = client.ApiextensionsV1Api(api)
    paths = paths or sorted(CRD_DIR.glob("*.yaml"))
    names = []
    for path in paths:
        for crd in load_manifests(path):
            name = crd["metadata"]["name"]
            names.append(name)
            try:
                await ext.create_custom_resource_definition(crd)
            except ApiException as e:
                if e.status != 409:
                    raise
                current = await ext.read_custom_resource_definition(name)
                crd["metadata"]["resourceVersion"] = current.metadata.resource_version
                await ext.replace_custom_resource_definition(name, crd)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = await ext.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not established: {conditions}")
            await asyncio.sleep(0.1)
    # The discovery cache of the API server lags a little behind Established.
    custom = client.CustomObjectsApi(api)
    for name in names:
        plural, group = name.split(".", 1)
        while True:
            try:
                await custom.list_cluster_custom_object(group, "v1", plural, limit=1)
                break
            except ApiException as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def delete_namespace(api: client.ApiClient, name: str, timeout: float = 30) -> None:
    """Delete a namespace and complete its deletion as the namespace controller would:
    delete its content, clear the ``kubernetes`` finalizer, and wait until it is gone."""
    core = client.CoreV1Api(api)
    try:
        await core.delete_namespace(name)
    except ApiException as e:
        if e.status == 404:
            return
        raise
    await _delete_namespace_content(api, name)
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name},
        "spec": {"finalizers": []},
    }
    deadline = time.monotonic() + timeout
    while True:
        try:
            await core.replace_namespace_finalize(name, body)
            await core.read_namespace(name)
        except ApiException as e:
            if e.status == 404:
                return
            if e.status != 409:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {name} still exists after {timeout} s")
        await asyncio.sleep(0.1)


async def _delete_namespace_content(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    batch = client.BatchV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    custom = client.CustomObjectsApi(api)
    opts = {"grace_period_seconds": 0}
    deletions = [
        core.delete_collection_namespaced_pod(namespace, **opts),
        core.delete_collection_namespaced_secret(namespace),
        core.delete_collection_namespaced_config_map(namespace),
        core.delete_collection_namespaced_persistent_volume_claim(namespace),
        core.delete_collection_namespaced_service_account(namespace),
        core.delete_collection_namespaced_event(namespace),
        batch.delete_collection_namespaced_job(namespace, propagation_policy="Background"),
        rbac.delete_collection_namespaced_role(namespace),
        rbac.delete_collection_namespaced_role_binding(namespace),
    ]
    for group, plural in (
        ("image.openshift.io", "imagestreams"),
        ("build.openshift.io", "buildconfigs"),
        ("build.openshift.io", "builds"),
    ):
        deletions.append(
            custom.delete_collection_namespaced_custom_object(group, "v1", namespace, plural)
        )
    services = await core.list_namespaced_service(namespace)
    for svc in services.items:
        deletions.append(core.delete_namespaced_service(svc.metadata.name, namespace))
    results = await asyncio.gather(*deletions, return_exceptions=True)
    for result in results:
        if isinstance(result, ApiException) and result.status not in (404, 405):
            raise result


async def token_for_role(
    api: client.ApiClient,
    namespace: str,
    name: str,
    rules: list[dict[str, Any]],
    *,
    cluster_rules: list[dict[str, Any]] | None = None,
    expiration_seconds: int = 3600,
) -> str:
    """Create ServiceAccount ``name`` bound to a Role with ``rules`` (and, if given, a
    ClusterRole with ``cluster_rules``) and return a token for it from the TokenRequest API."""
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    await core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    await rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
    await rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        },
    )
    if cluster_rules:
        cluster_name = f"{namespace}-{name}"
        await rbac.create_cluster_role({"metadata": {"name": cluster_name}, "rules": cluster_rules})
        await rbac.create_cluster_role_binding(
            {
                "metadata": {"name": cluster_name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": cluster_name,
                },
                "subjects": subject,
            }
        )
    request = await core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"audiences": [], "expirationSeconds": expiration_seconds}}
    )
    return request.status.token
