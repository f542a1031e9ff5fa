"""Render the Helm chart with the tools/ helm binary and apply its manifests to the real API
server (server-side apply, optionally as a dry run), plus raw authorization probes."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aicoe_devcluster.cluster import delete_namespace
from aicoe_devcluster.controlplane import REPO_ROOT, find_binary

CHART = REPO_ROOT / "helm" / "aicoe-spawner"
#: The builder-only chart (the all-in-one chart's dependency, charts/aicoe-image-builder).
BUILDER_CHART = REPO_ROOT / "helm" / "aicoe-image-builder"
VALUES = {
    "default": [],
    "openshift": [REPO_ROOT / "helm" / "values-openshift.yaml"],
    "kubernetes": [REPO_ROOT / "helm" / "values-kubernetes.yaml"],
}
FIELD_MANAGER = "aicoe-spawner-tests"


#: The Kubernetes version ``helm template`` and ``helm lint`` render for (helm's own default,
#: 1.20, is below the charts' kubeVersion): the test suite's and the node's API server.
KUBE_VERSION = "1.36.0"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the tools/ helm; ``template`` and ``lint`` render for :data:`KUBE_VERSION` unless
    the arguments name a version."""
    if args and args[0] in ("template", "lint") and "--kube-version" not in args:
        args = (*args, "--kube-version", KUBE_VERSION)
    return subprocess.run(
        [str(find_binary("helm")), *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def render(
    variant: str = "default",
    *,
    namespace: str = "aicoe",
    release: str = "aicoe",
    values: dict[str, Any] | None = None,
    sets: list[str] = (),
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """``helm template`` the chart (or ``chart``, e.g. :data:`BUILDER_CHART`): the manifests as
    dicts (hooks included, NOTES excluded)."""
    args = ["template", release, str(chart), "--namespace", namespace]
    for path in VALUES[variant]:
        args += ["-f", str(path)]
    if values:
        for key, value in values.items():
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in by_kind(docs, kind)])
    return found[0]


def egress_allows(policy: dict, ip: str, port: int, protocol: str = "TCP") -> bool:
    """Whether one of a NetworkPolicy's egress rules admits ``ip:port`` (ipBlock peers only:
    what a pod selector admits depends on the pods)."""
    address = ipaddress.ip_address(ip)
    for rule in policy["spec"].get("egress", []):
        ports = rule.get("ports") or [{"protocol": protocol, "port": port}]
        if not any(p.get("protocol", "TCP") == protocol and p["port"] == port for p in ports):
            continue
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block and address in ipaddress.ip_network(block["cidr"]):
                if not any(address in ipaddress.ip_network(e) for e in block.get("except", [])):
                    return True
    return False


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only) selects ``labels``."""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# -- applying ------------------------------------------------------------------------------

_discovery: dict[tuple[str, str], tuple[str, bool]] = {}


async def resource_of(api: client.ApiClient, api_version: str, kind: str) -> tuple[str, bool]:
    """(plural, namespaced) of a kind, from the API server's discovery."""
    key = (api_version, kind)
    if key not in _discovery:
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        response = await api.call_api(
            prefix, "GET", header_params={"Accept": "application/json"}, _preload_content=False
        )
        if response.status != 200:
            response.release()  # back to the pool (the shared client must not run dry)
            raise LookupError(f"the API server does not serve {api_version}")
        body = await response.json()
        for resource in body["resources"]:
            if "/" not in resource["name"]:
                _discovery[(api_version, resource["kind"])] = (
                    resource["name"],
                    resource["namespaced"],
                )
    if key not in _discovery:
        raise LookupError(f"the API server does not serve {kind} in {api_version}")
    return _discovery[key]


def forget_discovery() -> None:
    _discovery.clear()


async def object_path(api: client.ApiClient, doc: dict, namespace: str) -> str:
    plural, namespaced = await resource_of(api, doc["apiVersion"], doc["kind"])
    prefix = "/api/v1" if doc["apiVersion"] == "v1" else f"/apis/{doc['apiVersion']}"
    ns = doc["metadata"].get("namespace", namespace)
    scope = f"/namespaces/{ns}" if namespaced else ""
    return f"{prefix}{scope}/{plural}/{doc['metadata']['name']}"


async def apply(
    api: client.ApiClient, docs: list[dict], namespace: str, *, dry_run: bool = False
) -> list[dict]:
    """Server-side apply each manifest (CRDs first, Helm hooks last); return what the API
    server answered. ``dry_run`` sends ``dryRun=All``: validated and admitted, not stored."""

    def order(doc: dict) -> int:
        if doc["kind"] == "CustomResourceDefinition":
            return 0
        if "helm.sh/hook" in doc["metadata"].get("annotations", {}):
            return 2
        return 1

    results = []
    for doc in sorted(docs, key=order):
        path = await object_path(api, doc, namespace)
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        response = await api.call_api(
            path,
            "PATCH",
            query_params=query,
            header_params={
                "Content-Type": "application/apply-patch+yaml",
                "Accept": "application/json",
            },
            body=doc,
            auth_settings=["BearerToken"],
            _preload_content=False,
        )
        body = await response.json()
        if response.status >= 300:
            raise AssertionError(f"apply {doc['kind']}/{doc['metadata']['name']}: {body}")
        results.append(body)
    return results


CLUSTER_KINDS = ("Namespace", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def build_namespace(namespace: str) -> str:
    """The chart's default namespace of build Jobs for a release in ``namespace``."""
    return f"{namespace}-builds"


async def remove_cluster_objects(api: client.ApiClient, docs: list[dict]) -> None:
    """Delete what applying ``docs`` made outside the test's namespace (the build namespace,
    the admission policies), so that the session's API server does not collect them."""
    for doc in docs:
        if doc["kind"] == "Namespace":
            await delete_namespace(api, doc["metadata"]["name"])
        elif doc["kind"] in CLUSTER_KINDS:
            response = await api.call_api(
                await object_path(api, doc, ""),
                "DELETE",
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
            )
            assert response.status in (200, 404), await response.text()
            response.release()


async def get(api: client.ApiClient, doc: dict, namespace: str) -> dict | None:
    """The stored object for a manifest, or None."""
    try:
        response = await api.call_api(
            await object_path(api, doc, namespace),
            "GET",
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
        )
    except ApiException as e:  # pragma: no cover - raised only with preloaded content
        if e.status == 404:
            return None
        raise
    if response.status == 404:
        response.release()
        return None
    assert response.status == 200, await response.text()
    return await response.json()


# -- authorization probes ------------------------------------------------------------------


async def probe(
    api: client.ApiClient,
    api_group: str,
    resource: str,
    verb: str,
    namespace: str,
    name: str = "rbac-probe",
) -> int:
    """Do ``verb`` on ``resource`` (``plural`` or ``plural/subresource``) named ``name`` in
    ``namespace`` as the client's user and return the HTTP status. Writes are dry runs or
    target an object that does not exist, so nothing changes; authorization comes first in the
    API server, so 403 means "not allowed" and anything else (200, 201, 404, 422, ...) means
    allowed."""
    prefix = "/api/v1" if api_group == "" else f"/apis/{api_group}/v1"
    plural, _, sub = resource.partition("/")
    base = f"{prefix}/namespaces/{namespace}/{plural}"
    named = f"{base}/{name}" + (f"/{sub}" if sub else "")
    kind = "".join(p.capitalize() for p in plural.rstrip("s").split("-"))
    version = "v1" if api_group == "" else f"{api_group}/v1"
    body = {"apiVersion": version, "kind": kind, "metadata": {"name": name}}
    dry = [("dryRun", "All")]
    json_headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if verb == "get":
        request = ("GET", named, [], None, json_headers)
    elif verb == "list":
        request = ("GET", base, [("limit", "1")], None, json_headers)
    elif verb == "watch":
        request = ("GET", base, [("watch", "true"), ("timeoutSeconds", "1")], None, json_headers)
    elif verb == "create":
        target = named if sub else base
        request = ("POST", target, dry, body, json_headers)
    elif verb == "update":
        request = ("PUT", named, dry, body, json_headers)
    elif verb == "patch":
        headers = {**json_headers, "Content-Type": "application/merge-patch+json"}
        request = ("PATCH", named, dry, {}, headers)
    elif verb == "delete":
        request = ("DELETE", named, dry, None, json_headers)
    elif verb == "deletecollection":
        request = ("DELETE", base, [*dry, ("labelSelector", "rbac-probe=none")], None, json_headers)
    else:
        raise ValueError(verb)
    method, path, query, data, headers = request
    response = await api.call_api(
        path,
        method,
        query_params=query,
        header_params=headers,
        body=data,
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    status = response.status
    response.close()
    return status


def rule_id(rule: dict) -> str:
    groups = ",".join(g or "core" for g in rule["apiGroups"])
    names = rule.get("resourceNames")
    return f"{groups}:{','.join(rule['resources'])}" + (f"[{','.join(names)}]" if names else "")
