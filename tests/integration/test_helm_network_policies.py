"""The NetworkPolicies of the hub, the proxy and the users' pods, as rendered: each selects its
component's pods, admits the peers that component talks to and nothing else (users' pods: no
other user's pod, no proxy API, no cloud metadata address), and the API server accepts them.
(The builder's and the build pods' policies: test_helm_build_pods.py.)"""

from __future__ import annotations

import pytest
from harness.helm_chart import apply, by_kind, egress_allows, one, render, selects
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

METADATA = "169.254.169.254"
# A user's pod as KubeSpawner labels it with the chart's config (component, common_labels).
USER_POD = {
    "component": "singleuser-server",
    "app.kubernetes.io/part-of": "aicoe-spawner",
    "hub.jupyter.org/username": "alice",
}
NAMES = {
    "hub": "r-aicoe-spawner-hub",
    "proxy": "r-aicoe-spawner-proxy",
    "builder": "r-aicoe-spawner-builder",
}


def labels_of(docs: list[dict]) -> dict[str, dict[str, str]]:
    """Pod labels of each component, the user's pod included."""
    found = {
        kind: one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        for kind, name in NAMES.items()
    }
    return {**found, "user": USER_POD}


def peers(rules: list[dict], key: str, labels: dict[str, dict[str, str]]) -> set[str]:
    """Which components the ``from``/``to`` pod peers of ``rules`` select."""
    return {
        name
        for rule in rules
        for peer in rule.get(key, [])
        if set(peer) == {"podSelector"}
        for name, pod in labels.items()
        if selects(peer["podSelector"], pod)
    }


def ports(rules: list[dict], key: str, labels, component: str) -> set[int]:
    return {
        p["port"]
        for rule in rules
        if component in peers([rule], key, labels)
        for p in rule.get("ports", [])
    }


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render(namespace="jh", release="r")


def policy_of(docs, name: str) -> dict:
    return one(docs, "NetworkPolicy", name)["spec"]


def test_each_policy_selects_its_component(docs):
    labels = labels_of(docs)
    for name, component in [
        ("r-aicoe-spawner-hub", "hub"),
        ("r-aicoe-spawner-proxy", "proxy"),
        ("r-aicoe-spawner-singleuser", "user"),
    ]:
        spec = policy_of(docs, name)
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        chosen = {kind for kind, pod in labels.items() if selects(spec["podSelector"], pod)}
        assert chosen == {component}, name


def test_user_pods_reach_only_dns_the_hub_and_public_addresses(docs):
    labels = labels_of(docs)
    spec = policy_of(docs, "r-aicoe-spawner-singleuser")
    policy = {"spec": spec}
    [ingress] = spec["ingress"]
    assert peers([ingress], "from", labels) == {"hub", "proxy"}  # not other users
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8888}]
    assert peers(spec["egress"], "to", labels) == {"hub"}  # not the proxy API, not the builder
    assert ports(spec["egress"], "to", labels, "hub") == {8081}
    for ip, port in [(METADATA, 80), ("10.244.0.7", 8888), ("10.0.0.1", 443), ("127.0.0.1", 80)]:
        assert not egress_allows(policy, ip, port), (ip, port)
    assert egress_allows(policy, "151.101.0.223", 443)  # pypi.org
    dns = spec["egress"][0]
    assert [set(p) for p in dns["to"]] == [{"namespaceSelector", "podSelector"}]

    closed = render(
        namespace="jh",
        release="r",
        values={
            "singleuser.networkPolicy.egressToInternet": False,
            "singleuser.networkPolicy.egress": [{"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]}],
        },
    )
    policy = one(closed, "NetworkPolicy", "r-aicoe-spawner-singleuser")
    assert not egress_allows(policy, "151.101.0.223", 443)
    assert egress_allows(policy, "10.9.1.1", 5432)


def test_the_hub_and_the_proxy_reach_their_peers_only(docs):
    labels = labels_of(docs)
    hub = policy_of(docs, "r-aicoe-spawner-hub")
    assert peers(hub["ingress"], "from", labels) == {"proxy", "builder", "user"}
    assert peers(hub["egress"], "to", labels) == {"proxy", "user", "builder"}
    assert ports(hub["egress"], "to", labels, "proxy") == {8001}
    assert ports(hub["egress"], "to", labels, "user") == {8888}
    assert not egress_allows({"spec": hub}, METADATA, 80)
    assert egress_allows({"spec": hub}, "140.82.112.3", 443)  # an OAuth provider
    assert egress_allows({"spec": hub}, "10.0.0.1", 443)  # the API server

    proxy = policy_of(docs, "r-aicoe-spawner-proxy")
    public, api = proxy["ingress"]
    assert "from" not in public and public["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert peers([api], "from", labels) == {"hub"}
    assert api["ports"] == [{"protocol": "TCP", "port": 8001}]
    assert peers(proxy["egress"], "to", labels) == {"hub", "user", "builder"}
    assert not [r for r in proxy["egress"] if any("ipBlock" in p for p in r.get("to", []))]


def test_the_builder_reaches_the_registry_only_while_it_imports():
    """Its importer resolves the catalog's tags in the registry (networkPolicy.registry*),
    as build pods push there; with imageImport off the builder's own pods do not reach it."""
    registry = {
        "builder.networkPolicy.registryCIDRs": ["10.1.2.3/32"],
        "builder.networkPolicy.registryPorts": [5000],
        "builder.networkPolicy.gitPorts": [443],
    }
    for importing in (True, False):
        values = {**registry, "builder.imageImport.enabled": importing}
        rendered = render(namespace="jh", release="r", values=values)
        builder = one(rendered, "NetworkPolicy", "r-aicoe-spawner-builder")
        builds = one(rendered, "NetworkPolicy", "r-aicoe-spawner-builder-builds")
        assert egress_allows(builds, "10.1.2.3", 5000)
        assert egress_allows(builder, "10.1.2.3", 5000) is importing


def test_switches():
    off = render(
        values={
            "hub.networkPolicy.enabled": False,
            "proxy.networkPolicy.enabled": False,
            "singleuser.networkPolicy.enabled": False,
            "builder.networkPolicy.enabled": False,
            "prePuller.networkPolicy.enabled": False,
        }
    )
    assert by_kind(off, "NetworkPolicy") == []
    openshift = render("openshift", namespace="jh", release="r")
    dns = one(openshift, "NetworkPolicy", "r-aicoe-spawner-singleuser")["spec"]["egress"][0]
    assert dns["ports"][0]["port"] == 5353


async def test_the_api_server_accepts_them(kube, namespace):
    chosen = [
        d
        for d in render(namespace=namespace, release="r")
        if d["kind"] == "NetworkPolicy" and "builder" not in d["metadata"]["name"]
    ]
    assert len(chosen) == 5  # hub, proxy, user pods, the image puller and its pods
    await apply(kube, chosen, namespace)
    stored = await client.NetworkingV1Api(kube).list_namespaced_network_policy(namespace)
    assert len(stored.items) == 5
