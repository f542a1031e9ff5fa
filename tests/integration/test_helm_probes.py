"""Probes as zero-to-jupyterhub tunes them, and the builder's PodDisruptionBudget when it has
more than one replica (issue 21, item 1)."""

from __future__ import annotations

from harness.helm_chart import by_kind, one, render

HUB, PROXY, BUILDER = (f"aicoe-aicoe-spawner-{n}" for n in ("hub", "proxy", "builder"))


def container(docs: list[dict], name: str) -> dict:
    return one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def test_probes_are_zero_to_jupyterhubs():
    docs = render()
    hub = container(docs, HUB)
    # a starting hub (database upgrade, many servers to check) is never given up on
    assert hub["readinessProbe"] == {
        "httpGet": {"path": "/hub/health", "port": "http"},
        "initialDelaySeconds": 0,
        "periodSeconds": 2,
        "timeoutSeconds": 1,
        "failureThreshold": 1000,
    }
    assert hub["livenessProbe"]["initialDelaySeconds"] == 300
    assert hub["livenessProbe"]["failureThreshold"] == 30
    proxy = container(docs, PROXY)
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/_chp_healthz", "port": "http"}
    assert proxy["readinessProbe"]["failureThreshold"] == 1000
    assert proxy["livenessProbe"]["initialDelaySeconds"] == 60
    builder = container(docs, BUILDER)
    health = {"path": "/services/image-builder/health", "port": "http"}
    assert builder["readinessProbe"]["httpGet"] == health
    assert builder["livenessProbe"]["httpGet"] == health


def test_probes_can_be_tuned_and_turned_off():
    docs = render(
        values={
            "hub.livenessProbe": {"enabled": False},
            "hub.readinessProbe": {"failureThreshold": 5},
            "proxy.chp.livenessProbe": {"enabled": False},
            "builder.readinessProbe": {"periodSeconds": 9},
        }
    )
    hub = container(docs, HUB)
    assert "livenessProbe" not in hub
    assert hub["readinessProbe"]["failureThreshold"] == 5
    assert hub["readinessProbe"]["periodSeconds"] == 2  # the rest kept
    assert "livenessProbe" not in container(docs, PROXY)
    assert container(docs, BUILDER)["readinessProbe"]["periodSeconds"] == 9


def test_a_disruption_budget_only_with_several_builders():
    assert by_kind(render(), "PodDisruptionBudget") == []
    docs = render(values={"builder.replicas": 3})
    pdb = one(docs, "PodDisruptionBudget", BUILDER)
    pods = one(docs, "Deployment", BUILDER)["spec"]["selector"]["matchLabels"]
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": pods}}
    docs = render(values={"builder.replicas": 3, "builder.pdb": {"maxUnavailable": 2}})
    assert one(docs, "PodDisruptionBudget", BUILDER)["spec"]["maxUnavailable"] == 2
    # the hub is one process with one database: never a budget for it
    assert {p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")} == {BUILDER}
