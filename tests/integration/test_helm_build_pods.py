"""The chart's confinement of build pods and of the builder: NetworkPolicies that select
exactly the build pods the builder creates (no ingress; egress to the cluster DNS, Git hosts,
registry) and the builder's own pods (egress to DNS, the hub, the API server, Git hosts; never
the cloud metadata address), the build namespace (its own by default) with the builder's Role
there, and the build image and storage size reaching the builder."""

from __future__ import annotations

import pytest
from harness.helm_chart import (
    apply,
    by_kind,
    egress_allows,
    one,
    remove_cluster_objects,
    render,
    selects,
)
from kubernetes_asyncio import client

from aicoe_spawner.builder.__main__ import Settings
from aicoe_spawner.builder.backends.kubernetes_job import JobConfig, job_manifest
from aicoe_spawner.builder.requests import BuildSpec

pytestmark = pytest.mark.integration


def a_build_spec() -> BuildSpec:
    return BuildSpec(
        id="0" * 20,
        repo="https://github.com/o/r",
        ref="v1",
        commit="c" * 40,
        ref_kind="tag",
        namespace="jh",
        stream="o-r",
        tag="v1",
        strategy="dockerfile",
        dockerfile="Dockerfile",
        context_dir="",
        base_image="",
        output_image="reg/jh/o-r:v1",
        display_name="",
        description="",
        requester="alice",
    )


def a_build_pod_labels() -> dict[str, str]:
    return job_manifest(a_build_spec(), JobConfig())["spec"]["template"]["metadata"]["labels"]


KUBE_DNS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
METADATA = "169.254.169.254"  # the cloud metadata service


def builder_env(docs: list[dict]) -> dict[str, str | None]:
    deployment = one(docs, "Deployment", "r-aicoe-spawner-builder")
    return {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def pod_labels(docs: list[dict], deployment: str) -> dict[str, str]:
    return one(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


def test_build_pods_are_confined_by_a_network_policy():
    docs = render(namespace="jh", release="r")
    policy = one(docs, "NetworkPolicy", "r-aicoe-spawner-builder-builds")
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == "jh-builds"
    assert selects(spec["podSelector"], a_build_pod_labels())
    # the hub's and the builder's own pods are not build pods
    for deployment in by_kind(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert not selects(spec["podSelector"], labels), deployment["metadata"]["name"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
    dns, git = spec["egress"]
    # DNS only to the cluster DNS pods, on 53 (not every pod of every namespace)
    assert dns["to"] == [KUBE_DNS]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    [block] = git["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in block["ipBlock"]["except"]
    assert not egress_allows(policy, METADATA, 443)
    assert not egress_allows(policy, METADATA, 80)
    assert egress_allows(policy, "140.82.112.3", 443)  # github.com
    assert [p["port"] for p in git["ports"]] == [443]

    registry = render(
        namespace="jh",
        release="r",
        values={
            "builder.networkPolicy.registryCIDRs": ["10.9.0.0/16"],
            "builder.networkPolicy.gitCIDRs": ["140.82.112.0/20"],
            "networkPolicy.dnsCIDRs": ["169.254.20.10/32"],
            "builder.networkPolicy.dnsCIDRs": ["169.254.20.10/32"],  # the builder chart's copy
        },
    )
    egress = one(registry, "NetworkPolicy", "r-aicoe-spawner-builder-builds")["spec"]["egress"]
    assert egress[0]["to"] == [KUBE_DNS, {"ipBlock": {"cidr": "169.254.20.10/32"}}]
    assert egress[1]["to"][0]["ipBlock"]["cidr"] == "140.82.112.0/20"
    assert egress[2]["to"] == [{"ipBlock": {"cidr": "10.9.0.0/16"}}]
    off = render(values={"builder.networkPolicy.enabled": False})
    assert [p for p in by_kind(off, "NetworkPolicy") if "builder" in p["metadata"]["name"]] == []


def test_openshift_dns_is_its_dns_pods():
    docs = render("openshift", namespace="jh", release="r")
    for name in ("r-aicoe-spawner-builder-builds", "r-aicoe-spawner-builder"):
        dns = one(docs, "NetworkPolicy", name)["spec"]["egress"][0]
        [peer] = dns["to"]
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "openshift-dns"
        }
        assert {p["port"] for p in dns["ports"]} == {5353}


def test_the_builder_pod_is_confined_by_a_network_policy():
    """S6: the builder's own pods fetch from user-named Git hosts; their policy admits the
    cluster DNS, the hub's API, the API server and public Git hosts, never the cloud
    metadata address or a private service; ingress only from the hub and the proxy."""
    docs = render(namespace="jh", release="r")
    policy = one(docs, "NetworkPolicy", "r-aicoe-spawner-builder")
    spec = policy["spec"]
    assert policy["metadata"].get("namespace", "jh") == "jh"
    selected = [
        d["metadata"]["name"]
        for d in by_kind(docs, "Deployment")
        if selects(spec["podSelector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    assert selected == ["r-aicoe-spawner-builder"]
    assert not selects(spec["podSelector"], a_build_pod_labels())
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    allowed = {
        name
        for name in ("r-aicoe-spawner-hub", "r-aicoe-spawner-proxy", "r-aicoe-spawner-builder")
        if any(selects(p["podSelector"], pod_labels(docs, name)) for p in ingress["from"])
    }
    assert allowed == {"r-aicoe-spawner-hub", "r-aicoe-spawner-proxy"}
    assert all(set(p) == {"podSelector"} for p in ingress["from"])  # this namespace only
    dns, hub, api, git = spec["egress"]
    assert [p["port"] for p in api["ports"]] == [443, 6443]
    assert [p["port"] for p in git["ports"]] == [443]
    assert dns["to"] == [KUBE_DNS] and {p["port"] for p in dns["ports"]} == {53}
    [hub_peer] = hub["to"]
    assert selects(hub_peer["podSelector"], pod_labels(docs, "r-aicoe-spawner-hub"))
    assert not selects(hub_peer["podSelector"], pod_labels(docs, "r-aicoe-spawner-proxy"))
    assert hub["ports"] == [{"protocol": "TCP", "port": 8081}]
    assert egress_allows(policy, "10.0.0.1", 443)  # the API server (its Service address)
    assert egress_allows(policy, "192.168.1.10", 6443)  # ... or a control-plane node
    assert egress_allows(policy, "140.82.112.3", 443)  # github.com
    for port in (80, 443, 6443):
        assert not egress_allows(policy, METADATA, port), port
    assert not egress_allows(policy, "10.1.2.3", 80)  # a private service
    assert not egress_allows(policy, "10.1.2.3", 5432)

    narrowed = render(
        namespace="jh",
        release="r",
        values={
            "builder.networkPolicy.apiServerCIDRs": ["192.168.1.10/32"],
            "builder.networkPolicy.apiServerExcept": [],
        },
    )
    policy = one(narrowed, "NetworkPolicy", "r-aicoe-spawner-builder")
    assert egress_allows(policy, "192.168.1.10", 6443)
    assert not egress_allows(policy, "10.0.0.1", 6443)


def test_builds_in_their_own_namespace_by_default():
    """S8: with the default values the builder's Job rights are in the build namespace only
    (created by the chart), and in the hub's namespace it may update no ConfigMap but the
    quota ledger."""
    docs = render(namespace="jh", release="r")
    env = builder_env(docs)
    assert env["AICOE_BUILDER_BUILD_NAMESPACE"] == "jh-builds"
    assert env["AICOE_BUILDER_BUILD_STORAGE"] == "20Gi"
    # the admission policy admits this image; it is the builder's own default
    assert env["AICOE_BUILDER_IMAGE"] == Settings.builder_image
    namespace = one(docs, "Namespace", "jh-builds")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    role = one(docs, "Role", "r-aicoe-spawner-builder-builds")
    assert role["metadata"]["namespace"] == "jh-builds"
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"jobs", "pods", "pods/log"}
    main = one(docs, "Role", "r-aicoe-spawner-builder")
    assert "jobs" not in {r for rule in main["rules"] for r in rule["resources"]}
    assert "pods" not in {r for rule in main["rules"] for r in rule["resources"]}
    for rule in main["rules"]:
        if "update" in rule["verbs"] and "configmaps" in rule["resources"]:
            assert rule["resourceNames"] == ["aicoe-image-builder-quota"], rule
    binding = one(docs, "RoleBinding", "r-aicoe-spawner-builder-builds")
    assert binding["subjects"][0]["namespace"] == "jh"
    policies = {d["metadata"]["name"] for d in by_kind(docs, "ValidatingAdmissionPolicy")}
    assert policies == {"jh.r-aicoe-spawner-builder-jobs", "jh.r-aicoe-spawner-builder-configmaps"}
    bindings = by_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert {b["spec"]["policyName"] for b in bindings} == policies
    assert all(b["spec"]["validationActions"] == ["Deny"] for b in bindings)

    named = render(namespace="jh", release="r", values={"builder.buildNamespace": "builds"})
    assert builder_env(named)["AICOE_BUILDER_BUILD_NAMESPACE"] == "builds"
    assert one(named, "Role", "r-aicoe-spawner-builder-builds")["metadata"]["namespace"] == "builds"
    policy = one(named, "NetworkPolicy", "r-aicoe-spawner-builder-builds")
    assert policy["metadata"]["namespace"] == "builds"
    existing = render(
        values={"builder.buildNamespace": "builds", "builder.createBuildNamespace": False}
    )
    assert by_kind(existing, "Namespace") == []
    off = render(values={"builder.admissionPolicy.enabled": False})
    assert by_kind(off, "ValidatingAdmissionPolicy") == []


def test_builds_beside_the_hub_when_configured():
    docs = render(namespace="jh", release="r", values={"builder.buildNamespace": "jh"})
    assert by_kind(docs, "Namespace") == []
    assert [
        r["metadata"]["name"] for r in by_kind(docs, "Role") if "builds" in r["metadata"]["name"]
    ] == []
    main = one(docs, "Role", "r-aicoe-spawner-builder")
    assert "jobs" in {r for rule in main["rules"] for r in rule["resources"]}
    assert (
        one(docs, "NetworkPolicy", "r-aicoe-spawner-builder-builds")["metadata"]["namespace"]
        == "jh"
    )


async def test_network_policies_apply_to_the_api_server(kube, namespace):
    docs = render(namespace=namespace, release="r")
    chosen = [
        d
        for d in docs
        if d["kind"] == "Namespace"
        or (d["kind"] == "NetworkPolicy" and "builder" in d["metadata"]["name"])
    ]
    try:
        stored = await apply(kube, chosen, namespace)
        assert [s["kind"] for s in stored] == ["Namespace", "NetworkPolicy", "NetworkPolicy"]
        networking = client.NetworkingV1Api(kube)
        builds = await networking.read_namespaced_network_policy(
            "r-aicoe-spawner-builder-builds", f"{namespace}-builds"
        )
        builder = await networking.read_namespaced_network_policy(
            "r-aicoe-spawner-builder", namespace
        )
        assert builds.spec.policy_types == builder.spec.policy_types == ["Ingress", "Egress"]
    finally:
        await remove_cluster_objects(kube, chosen)
