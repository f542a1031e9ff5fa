"""The example jupyterhub_config.py at the repository root loads, and AICoESpawner accepts every
setting in it."""

from __future__ import annotations

from types import SimpleNamespace

from jupyterhub.scopes import _custom_scope_pattern
from traitlets import HasTraits
from traitlets.config import PyFileConfigLoader

from aicoe_devcluster.controlplane import REPO_ROOT
from aicoe_spawner.options import Size
from aicoe_spawner.spawner import AICoESpawner


def load(monkeypatch, **env):
    for name in ("AICOE_NAMESPACE", "AICOE_IMAGE_NAMESPACES", "IMAGE_BUILDER_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return PyFileConfigLoader("jupyterhub_config.py", path=str(REPO_ROOT)).load_config()


def test_example_config_loads_with_defaults(monkeypatch):
    c = load(monkeypatch)
    assert c.JupyterHub.spawner_class == "aicoe"
    assert c.KubeSpawner.namespace == "default"
    assert c.AICoESpawner.image_namespaces == ["default"]
    (builder,) = c.JupyterHub.services
    assert builder["name"] == "image-builder"
    assert builder["command"][-2:] == ["-m", "aicoe_spawner.builder"]
    assert len(builder["api_token"]) == 64


def test_example_config_reads_its_environment(monkeypatch):
    c = load(
        monkeypatch,
        AICOE_NAMESPACE="jupyterhub",
        AICOE_IMAGE_NAMESPACES="jupyterhub,odh-images",
        IMAGE_BUILDER_API_TOKEN="t0k3n",
        AICOE_REGISTRY="quay.io/me",
    )
    assert c.KubeSpawner.namespace == "jupyterhub"
    assert c.AICoESpawner.image_namespaces == ["jupyterhub", "odh-images"]
    (builder,) = c.JupyterHub.services
    assert builder["api_token"] == "t0k3n"
    assert builder["environment"]["AICOE_BUILDER_NAMESPACE"] == "jupyterhub"
    assert builder["environment"]["AICOE_BUILDER_REGISTRY"] == "quay.io/me"


def test_example_config_is_valid_for_the_spawner_and_the_hub(monkeypatch):
    c = load(monkeypatch)
    # Every AICoESpawner setting is a configurable trait and its value validates.
    traits = AICoESpawner.class_traits(config=True)
    settings = {}
    for name, value in c.AICoESpawner.items():
        assert name in traits, name
        settings[name] = traits[name].validate(HasTraits(), value)
    assert [s["name"] for s in settings["sizes"]] == ["small", "medium", "large"]
    # ... and they make a valid policy, for a user in no group and one in gpu-users.
    for groups, max_gpus in (([], 0), (["gpu-users"], 2)):
        defaults = {name: trait.default() for name, trait in traits.items()}
        spawner = SimpleNamespace(
            **{**defaults, **settings},
            user=SimpleNamespace(groups=[SimpleNamespace(name=g) for g in groups]),
            configured_sizes=lambda: [Size.from_config(s) for s in settings["sizes"]],
        )
        policy = AICoESpawner.user_policy(spawner)
        assert policy.max_gpus == max_gpus

    scopes = c.JupyterHub.custom_scopes
    assert set(scopes) == {"custom:image-builder:build", "custom:image-builder:admin"}
    for name, definition in scopes.items():
        assert _custom_scope_pattern.match(name), name
        assert definition["description"]
        assert set(definition.get("subscopes", [])) <= set(scopes)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "custom:image-builder:build" in roles["user"]["scopes"]
    assert roles["image-builder-admins"]["groups"] == ["image-admins"]
    assert roles["image-builder-service"]["services"] == ["image-builder"]
