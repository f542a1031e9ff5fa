"""jupyterhub-idle-culler as the chart's hub service, and hub.services / hub.loadRoles merged by
name: the chart's jupyterhub_config.py loaded with the values `helm template` renders, the
culler's command parsed by the culler itself, its role's scopes checked by JupyterHub."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import yaml
from harness.helm_chart import CHART, one, render
from jupyterhub.scopes import _check_scopes_exist
from jupyterhub_idle_culler import IdleCuller
from traitlets.config import Config, PyFileConfigLoader

pytestmark = pytest.mark.integration

CULLER = "jupyterhub-idle-culler"
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
# zero-to-jupyterhub's cull.* defaults
Z2JH_CULL = {
    "enabled": True,
    "users": False,
    "adminUsers": True,
    "removeNamedServers": False,
    "timeout": 3600,
    "every": 600,
    "concurrency": 10,
    "maxAge": 0,
}


def chart_config(tmp_path: Path, monkeypatch, **render_kwargs) -> Config:
    """The hub's config as the pod loads it: jupyterhub_config.py from the ConfigMap and
    values.json from the Secret of a `helm template`."""
    docs = render(**render_kwargs)
    files = one(docs, "ConfigMap", "aicoe-aicoe-spawner-hub")["data"]
    (tmp_path / "jupyterhub_config.py").write_text(files["jupyterhub_config.py"])
    secret = one(docs, "Secret", "aicoe-aicoe-spawner-hub")["data"]
    (tmp_path / "values.json").write_bytes(base64.b64decode(secret["values.json"]))
    monkeypatch.setenv("IMAGE_BUILDER_API_TOKEN", "builder-token")
    monkeypatch.setenv("POD_NAMESPACE", "aicoe")
    return PyFileConfigLoader("jupyterhub_config.py", path=str(tmp_path)).load_config()


def services(c: Config) -> dict[str, dict]:
    return {s["name"]: s for s in c.JupyterHub.get("services", [])}


def roles(c: Config) -> dict[str, dict]:
    return {r["name"]: r for r in c.JupyterHub.get("load_roles", [])}


def culler_settings(service: dict) -> IdleCuller:
    """The culler's own parse of the command the hub starts it with."""
    command = service["command"]
    assert command[1:3] == ["-m", "jupyterhub_idle_culler"]
    culler = IdleCuller()
    culler.parse_command_line(command[3:])
    return culler


def test_values_default_to_zero_to_jupyterhubs_cull():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["cull"] == Z2JH_CULL


def test_culler_is_a_hub_service_by_default_with_least_privilege(tmp_path, monkeypatch):
    c = chart_config(tmp_path, monkeypatch)
    found = services(c)
    assert set(found) == {"image-builder", CULLER}
    culler = culler_settings(found[CULLER])
    assert culler.url == "http://127.0.0.1:8081/hub/api"  # the hub's API on its own pod
    assert (culler.timeout, culler.cull_every, culler.concurrency, culler.max_age) == (
        3600,
        600,
        10,
        0,
    )
    assert culler.cull_users is False
    assert culler.cull_admin_users is True
    assert culler.remove_named_servers is False
    assert "url" not in found[CULLER] and "api_token" not in found[CULLER]  # hub-managed
    role = roles(c)[CULLER]
    assert role["scopes"] == CULLER_SCOPES
    assert role["services"] == [CULLER]
    _check_scopes_exist(role["scopes"])  # JupyterHub knows every scope it names
    # no other role names the culler
    assert [r for r in roles(c).values() if CULLER in r.get("services", [])] == [role]


def test_culler_deletes_users_only_when_cull_users(tmp_path, monkeypatch):
    c = chart_config(
        tmp_path,
        monkeypatch,
        values={
            "cull": {
                **Z2JH_CULL,
                "users": True,
                "adminUsers": False,
                "removeNamedServers": True,
                "timeout": 120,
                "every": 30,
                "concurrency": 3,
                "maxAge": 86400,
            },
            "hub.config": {"JupyterHub": {"base_url": "/jupyter/"}},
        },
    )
    culler = culler_settings(services(c)[CULLER])
    assert culler.url == "http://127.0.0.1:8081/jupyter/hub/api"
    assert (culler.timeout, culler.cull_every, culler.concurrency, culler.max_age) == (
        120,
        30,
        3,
        86400,
    )
    assert culler.cull_users is True
    assert culler.cull_admin_users is False
    assert culler.remove_named_servers is True
    role = roles(c)[CULLER]
    assert role["scopes"] == [*CULLER_SCOPES, "admin:users"]
    _check_scopes_exist(role["scopes"])


def test_culler_off(tmp_path, monkeypatch):
    c = chart_config(tmp_path, monkeypatch, sets=["cull.enabled=false"])
    assert set(services(c)) == {"image-builder"}
    assert CULLER not in roles(c)
    c = chart_config(tmp_path, monkeypatch, sets=["cull.enabled=false", "builder.enabled=false"])
    assert "services" not in c.JupyterHub and "load_roles" not in c.JupyterHub


def test_hub_services_and_load_roles_merge_by_name(tmp_path, monkeypatch):
    c = chart_config(
        tmp_path,
        monkeypatch,
        values={
            "hub.services": {
                "my-service": {"url": "http://my-service:8000", "apiToken": "my-token"},
                "image-builder": {"display": False},  # a field of the chart's service
            },
            "hub.loadRoles": {
                "my-service": {"scopes": ["list:users"], "services": ["my-service"]},
                "user": {"scopes": ["self"]},  # replaces the chart's user scopes
            },
        },
    )
    found = services(c)
    assert set(found) == {"image-builder", CULLER, "my-service"}
    assert found["my-service"] == {
        "name": "my-service",
        "url": "http://my-service:8000",
        "api_token": "my-token",
    }
    builder = found["image-builder"]
    assert builder["display"] is False
    assert builder["url"] == "http://aicoe-aicoe-spawner-builder:8080"  # the rest kept
    assert builder["api_token"] == "builder-token"
    found_roles = roles(c)
    assert found_roles["my-service"]["scopes"] == ["list:users"]
    assert found_roles["user"]["scopes"] == ["self"]
    assert found_roles[CULLER]["scopes"] == CULLER_SCOPES
    assert "image-builder-service" in found_roles
    # JupyterHub refuses a role defined twice: every name appears once
    names = [r["name"] for r in c.JupyterHub.load_roles]
    assert len(names) == len(set(names))


def test_null_removes_a_chart_service_and_role(tmp_path, monkeypatch):
    c = chart_config(
        tmp_path,
        monkeypatch,
        values={"hub.services": {CULLER: None}, "hub.loadRoles": {CULLER: None}},
    )
    assert CULLER not in services(c) and CULLER not in roles(c)


@pytest.mark.parametrize(
    "bad",
    ["cull.timeout=0", "cull.every=-1", "cull.unknown=1", "cull.users=maybe"],
)
def test_schema_refuses_bad_cull_values(bad):
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render(sets=[bad])
    assert "cull" in refused.value.stderr
