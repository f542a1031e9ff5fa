"""The chart's builder Deployment configures ImageBuilder: its environment is valid and
``builder.extraArgs`` reaches the command line, which wins over the environment."""

from __future__ import annotations

import pytest
from harness.helm_chart import by_kind, render

from aicoe_spawner.builder.config import ENV_VARS, ImageBuilder


def builder_container(docs: list[dict]) -> dict:
    [container] = [
        c
        for d in by_kind(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == "image-builder"
    ]
    return container


@pytest.mark.parametrize("variant", ["default", "openshift", "kubernetes"])
def test_the_charts_builder_environment_and_extra_args_configure_the_builder(
    variant, monkeypatch, tmp_path
):
    values = {
        "builder.extraArgs": ["--max-total=17", "--ImageBuilder.build_timeout=90"],
        "builder.extraEnv": {"AICOE_BUILDER_MAX_TOTAL": "3", "AICOE_BUILDER_BRANCH_TTL": "60"},
        "builder.registry": "registry.example.com/notebooks",
    }
    container = builder_container(render(variant, values=values))
    assert container["command"] == ["aicoe-image-builder"]
    # the values the pod gets from its spec (secrets and the namespace come at run time)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    ours = {v.name for v in ENV_VARS}
    for name in ours:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    app = ImageBuilder()
    app.initialize(container["args"])  # a bad value would stop it here (SystemExit)
    assert (app.max_total, app.build_timeout, app.branch_ttl) == (17, 90, 60)
    assert app.registry == "registry.example.com/notebooks"
    assert app.service_prefix == "/services/image-builder/"
    assert app.backend == env["AICOE_BUILDER_BACKEND"]
    # every AICOE_BUILDER_* the chart sets is one the builder reads
    assert {n for n in env if n.startswith("AICOE_BUILDER_")} <= ours
