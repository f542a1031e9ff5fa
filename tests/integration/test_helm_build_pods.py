"""The chart's confinement of build pods: a NetworkPolicy that selects exactly the build pods
the builder creates (no ingress; egress to DNS, Git hosts, registry), the build namespace
option with the builder's Role there, and the build storage size reaching the builder."""

from __future__ import annotations

import pytest
from helm_chart import apply, by_kind, one, render
from kubernetes_asyncio import client

from aicoe_spawner.builder.backends.kubernetes import JobConfig, job_manifest
from aicoe_spawner.builder.requests import BuildSpec

pytestmark = pytest.mark.integration


def a_build_pod_labels() -> dict[str, str]:
    spec = BuildSpec(
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
    return job_manifest(spec, JobConfig())["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_build_pods_are_confined_by_a_network_policy():
    docs = render(namespace="jh", release="r")
    policy = one(docs, "NetworkPolicy", "r-aicoe-spawner-builder-builds")
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == "jh"
    assert selects(spec["podSelector"], a_build_pod_labels())
    # the hub's and the builder's own pods are not build pods
    for deployment in by_kind(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert not selects(spec["podSelector"], labels), deployment["metadata"]["name"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
    dns, git = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53, 5353}
    [block] = git["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in block["ipBlock"]["except"]
    assert "169.254.0.0/16" in block["ipBlock"]["except"]  # no cloud metadata service
    assert [p["port"] for p in git["ports"]] == [443]

    registry = render(
        namespace="jh",
        release="r",
        values={
            "builder.networkPolicy.registryCIDRs": ["10.9.0.0/16"],
            "builder.networkPolicy.gitCIDRs": ["140.82.112.0/20"],
        },
    )
    egress = one(registry, "NetworkPolicy", "r-aicoe-spawner-builder-builds")["spec"]["egress"]
    assert egress[1]["to"][0]["ipBlock"]["cidr"] == "140.82.112.0/20"
    assert egress[2]["to"] == [{"ipBlock": {"cidr": "10.9.0.0/16"}}]
    off = render(values={"builder.networkPolicy.enabled": False})
    assert by_kind(off, "NetworkPolicy") == []


def test_builds_in_their_own_namespace():
    docs = render(namespace="jh", release="r", values={"builder.buildNamespace": "builds"})
    env = {
        e["name"]: e.get("value")
        for e in one(docs, "Deployment", "r-aicoe-spawner-builder")["spec"]["template"]["spec"][
            "containers"
        ][0]["env"]
    }
    assert env["AICOE_BUILDER_BUILD_NAMESPACE"] == "builds"
    assert env["AICOE_BUILDER_BUILD_STORAGE"] == "20Gi"
    role = one(docs, "Role", "r-aicoe-spawner-builder-builds")
    assert role["metadata"]["namespace"] == "builds"
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"jobs", "pods", "pods/log"}
    main = one(docs, "Role", "r-aicoe-spawner-builder")
    assert "jobs" not in {r for rule in main["rules"] for r in rule["resources"]}
    binding = one(docs, "RoleBinding", "r-aicoe-spawner-builder-builds")
    assert binding["subjects"][0]["namespace"] == "jh"
    policy = one(docs, "NetworkPolicy", "r-aicoe-spawner-builder-builds")
    assert policy["metadata"]["namespace"] == "builds"


async def test_network_policy_applies_to_the_api_server(kube, namespace):
    docs = render(namespace=namespace, release="r")
    [policy] = by_kind(docs, "NetworkPolicy")
    [stored] = await apply(kube, [policy], namespace)
    read = await client.NetworkingV1Api(kube).read_namespaced_network_policy(
        "r-aicoe-spawner-builder-builds", namespace
    )
    assert stored["kind"] == "NetworkPolicy" and read.spec.policy_types == ["Ingress", "Egress"]
