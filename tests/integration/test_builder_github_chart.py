"""The chart's ``builder.github`` values configure the builder's GitHub App (its key mounted
from a Secret, read-only, never in the environment) or token, the API URL and the links."""

from __future__ import annotations

import pytest
from harness.helm_chart import by_kind, render

from aicoe_spawner.builder.config import ENV_VARS, ImageBuilder

pytestmark = pytest.mark.integration


def builder_pod(docs: list[dict]) -> dict:
    [d] = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("builder")]
    return d["spec"]["template"]["spec"]


def configured(container: dict, monkeypatch, tmp_path) -> ImageBuilder:
    """ImageBuilder as the pod's environment configures it."""
    for var in ENV_VARS:
        monkeypatch.delenv(var.name, raising=False)
    for e in container["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    monkeypatch.chdir(tmp_path)
    app = ImageBuilder()
    app.initialize([])
    return app


def test_a_github_app_from_a_secret(monkeypatch, tmp_path):
    values = {
        "builder.github": {
            "appId": 12345,
            "privateKeySecret": "builder-github-app",
            "apiUrl": "https://ghe.example.com/api/v3",
            "publicUrl": "https://jupyter.example.com",
        }
    }
    pod = builder_pod(render(values=values))
    [container] = [c for c in pod["containers"] if c["name"] == "image-builder"]
    app = configured(container, monkeypatch, tmp_path)
    assert (app.github_app_id, app.github_api_url, app.public_url) == (
        "12345",
        "https://ghe.example.com/api/v3",
        "https://jupyter.example.com",
    )
    assert app.github_app_private_key_file == "/etc/aicoe/github-app/private-key.pem"
    assert app.github_issue_builds is True and app.github_token_file == ""
    assert container["volumeMounts"] == [
        {"name": "github-app", "mountPath": "/etc/aicoe/github-app", "readOnly": True}
    ]
    assert pod["volumes"] == [
        {
            "name": "github-app",
            "secret": {
                "secretName": "builder-github-app",
                "items": [{"key": "private-key.pem", "path": "private-key.pem"}],
            },
        }
    ]
    assert not [e for e in container["env"] if "valueFrom" in e and "github" in str(e).lower()]


def test_a_token_from_a_secret_and_issue_builds_off(monkeypatch, tmp_path):
    values = {"builder.github": {"tokenSecret": "gh-token", "issueBuilds": False}}
    pod = builder_pod(render(values=values))
    [container] = [c for c in pod["containers"] if c["name"] == "image-builder"]
    app = configured(container, monkeypatch, tmp_path)
    assert app.github_token_file == "/etc/aicoe/github-token/token"
    assert (app.github_app_id, app.github_issue_builds) == ("", False)
    assert pod["volumes"][0]["secret"]["secretName"] == "gh-token"


def test_without_github_values_the_builder_has_no_github_credentials(monkeypatch, tmp_path):
    pod = builder_pod(render())
    [container] = [c for c in pod["containers"] if c["name"] == "image-builder"]
    app = configured(container, monkeypatch, tmp_path)
    assert (app.github_app_id, app.github_token_file, app.github_token) == ("", "", "")
    assert "volumes" not in pod and "volumeMounts" not in container
