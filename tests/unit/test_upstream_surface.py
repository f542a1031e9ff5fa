"""What aicoe_spawner relies on in JupyterHub and KubeSpawner beyond their documented
configuration (docs/architecture.md, "What the spawner relies on upstream"): the import-time
patches, the private methods we override or call, and the upstream behaviour each depends on.

A failure here names what changed upstream; the pyproject upper bounds keep a release that
could change it from being installed untested. Signatures are compared by parameter names:
upstream may add parameters with defaults, not rename or reorder the ones we use.
"""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

import jupyterhub.log as hub_log
import pytest
from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.app import JupyterHub
from jupyterhub.auth import Authenticator
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.handlers.pages import SpawnHandler
from jupyterhub.spawner import Spawner
from jupyterhub.user import User
from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from kubespawner.utils import get_k8s_model
from packaging.requirements import Requirement

from aicoe_spawner import secret_env, spawn_page
from aicoe_spawner.spawner import AICoESpawner

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"

# (class, method, the leading parameters we call or override it with, who relies on it)
METHODS = [
    (KubeSpawner, "_apply_overrides", ["spawner_override"], "pod.PodShaping (sizes, groups)"),
    (KubeSpawner, "_make_create_pod_request", ["pod", "request_timeout"], "secret_env (owner)"),
    (KubeSpawner, "_start", [], "secret_env.SecretEnv.start wraps it"),
    (KubeSpawner, "_expand_user_properties", ["template"], "secret_env (Secret labels)"),
    (KubeSpawner, "get_pod_manifest", [], "home_seed.HomeSeed"),
    (KubeSpawner, "get_env", [], "pod.PodShaping"),
    (KubeSpawner, "stop", ["now"], "secret_env.SecretEnv"),
    (KubeSpawner, "load_user_options", [], "AICoESpawner.load_user_options"),
    (Spawner, "_run_apply_user_options", ["user_options"], "AICoESpawner (no traceback)"),
    (Spawner, "apply_group_overrides", [], "pod.PodShaping"),
    (Spawner, "run_options_from_form", ["form_data"], "spawn_page.SpawnPage"),
    (Spawner, "run_auth_state_hook", ["auth_state"], "spawn_page.SpawnPage"),
    (SpawnHandler, "_get", ["user_name", "server_name", "display_name"], "SpawnPage overrides"),
    (SpawnHandler, "_post", ["user_name", "server_name", "display_name"], "SpawnPage overrides"),
    (
        SpawnHandler,
        "_render_form",
        ["for_user", "spawner_options_form", "message", "html_message"],
        "SpawnPage overrides",
    ),
    (
        SpawnHandler,
        "_wrap_spawn_single_user",
        ["user", "server_name", "display_name", "spawner", "pending_url", "options"],
        "SpawnPage calls",
    ),
    (SpawnHandler, "_get_pending_url", ["user", "server_name"], "SpawnPage calls"),
    (
        BaseHandler,
        "_check_named_server_request",
        ["user", "server_name", "display_name"],
        "SpawnPage calls",
    ),
    (BaseHandler, "stop_single_user", ["user", "server_name"], "SpawnPage calls"),
    (BaseHandler, "render_template", ["name"], "SpawnPage calls"),
    (BaseHandler, "get_next_url", ["user", "default"], "SpawnPage calls"),
    (BaseHandler, "find_user", ["name"], "SpawnPage, FormState call"),
    (APIHandler, "get_json_body", [], "secret_env.ServerRequestBody overrides"),
    (User, "get_or_create_spawner", ["server_name", "display_name", "replace_failed"], "page"),
    (JupyterHub, "init_handlers", [], "spawn_page.attach_to_hub wraps it"),
]


def _leading(function, n: int) -> list[str]:
    params = list(inspect.signature(function).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    return [p.name for p in params[:n]], params[n:]


@pytest.mark.parametrize(
    ("owner", "name", "expected", "user"),
    METHODS,
    ids=[f"{c.__name__}.{n}" for c, n, _, _ in METHODS],
)
def test_the_upstream_methods_we_override_or_call_keep_their_parameters(
    owner, name, expected, user
):
    function = inspect.getattr_static(owner, name, None)
    assert function is not None, f"{owner.__qualname__}.{name} is gone (used by {user})"
    names, rest = _leading(getattr(owner, name), len(expected))
    assert names == expected, f"{owner.__qualname__}.{name}{inspect.signature(function)}"
    required = [p.name for p in rest if p.default is p.empty and p.kind <= p.KEYWORD_ONLY]
    assert not required, f"{owner.__qualname__}.{name} now requires {required} (used by {user})"


@pytest.mark.parametrize("trait", ["apply_user_options", "options_from_form", "options_form"])
def test_the_spawner_traits_whose_defaults_we_set_exist(trait):
    """AICoESpawner sets their defaults (``@default``): JupyterHub must still read them."""
    assert Spawner.class_traits().get(trait) is not None


def test_the_upstream_code_paths_our_overrides_hook_into():
    """Each override works because upstream calls the method it overrides, from here."""
    source = {
        "SpawnHandler.get": inspect.getsource(SpawnHandler.get),
        "SpawnHandler.post": inspect.getsource(SpawnHandler.post),
        "KubeSpawner.progress": inspect.getsource(KubeSpawner.progress),
        "BaseHandler.stop_single_user": inspect.getsource(BaseHandler.stop_single_user),
        "User.spawn": inspect.getsource(User.spawn),
        "UserServerAPIHandler.patch": inspect.getsource(UserServerAPIHandler.patch),
    }
    expected = {
        # SpawnPage overrides _get/_post, JupyterHub's get/post delegate to them
        "SpawnHandler.get": "self._get(",
        "SpawnHandler.post": "self._post(",
        # SecretEnv.start sets _start_future as KubeSpawner.start does: progress waits on it
        "KubeSpawner.progress": "self._start_future",
        # SpawnPage waits for a replaced server's stop through it
        "BaseHandler.stop_single_user": "spawner._stop_future",
        # the order AICoESpawner's options rely on: group overrides, then the user's options
        "User.spawn": "spawner._run_apply_user_options(",
        # ServerRequestBody drops secret values where the body is read
        "UserServerAPIHandler.patch": "self.get_json_body()",
    }
    for where, text in expected.items():
        assert text in source[where], f"{where} no longer contains {text!r}"
    spawn = source["User.spawn"]
    assert spawn.index("apply_group_overrides(") < spawn.index("_run_apply_user_options(")


def test_the_kubespawner_helpers_we_call_keep_their_parameters():
    assert _leading(shared_client, 1)[0] == ["ClientType"]
    assert _leading(get_k8s_model, 2)[0] == ["model_type", "model_dict"]


# -- the import-time patches --------------------------------------------------------------


def test_init_handlers_is_wrapped_once_and_serves_our_pages(tmp_path, monkeypatch):
    """``attach_to_hub`` wraps ``JupyterHub.init_handlers``: JupyterHub's own handler list
    (tuples of pattern, class[, kwargs]) gets our spawn page, form state and server API."""
    assert getattr(JupyterHub.init_handlers, "_aicoe_spawn_page", False)
    assert inspect.signature(JupyterHub.init_handlers.__wrapped__).parameters.keys() == {"self"}
    spawn_page.attach_to_hub(AICoESpawner)  # a second import: still one wrapper
    assert not hasattr(JupyterHub.init_handlers.__wrapped__, "__wrapped__")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        'clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]\n'
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u, namespace: ns}}]\n"
        "current-context: x\n"
    )
    # read once at import by kubernetes_asyncio (KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.setattr(hub_log, "SCRUB_PARAM_KEYS", hub_log.SCRUB_PARAM_KEYS)  # restored after

    async def handlers(spawner_class):
        app = JupyterHub(spawner_class=spawner_class)
        app.authenticator = Authenticator(parent=app)
        app.init_handlers()  # no network: the spawner's configuration check only reads it
        return {h[0]: h[1] for h in app.handlers}

    plain = asyncio.run(handlers(KubeSpawner))
    ours = asyncio.run(handlers(AICoESpawner))
    spawn_urls = [u for u, h in plain.items() if h is SpawnHandler]
    server_urls = [u for u, h in plain.items() if h is UserServerAPIHandler]
    assert len(spawn_urls) == 3 and len(server_urls) == 2
    assert {ours[u] for u in spawn_urls} == {spawn_page.SpawnPage}
    assert {ours[u] for u in server_urls} == {secret_env.ServerAPIHandler}
    assert spawn_page.FormState in ours.values()
    assert spawn_page.FormState not in plain.values()
    assert SpawnHandler not in ours.values() and UserServerAPIHandler not in ours.values()


def test_scrub_param_keys_is_a_tuple_the_request_log_reads_at_each_call(monkeypatch):
    """``install`` adds "secret" to ``jupyterhub.log.SCRUB_PARAM_KEYS``: the request log
    (``_scrub_uri``) must read the module attribute when it logs, not a copy."""
    assert isinstance(hub_log.SCRUB_PARAM_KEYS, tuple)
    uri = "/hub/spawn?image=a&secret_env_value=hunter2"
    monkeypatch.setattr(hub_log, "SCRUB_PARAM_KEYS", ("token",))
    assert "hunter2" in hub_log._scrub_uri(uri)
    monkeypatch.setattr(hub_log, "SCRUB_PARAM_KEYS", ("token", "secret"))
    assert hub_log._scrub_uri(uri) == "/hub/spawn?image=a&secret_env_value=[secret]"


def test_the_database_listener_strips_secret_values_from_stored_user_options():
    """``spawner.py`` listens to ``orm.Spawner.user_options`` "set" events (SQLAlchemy, with
    retval): whatever JupyterHub assigns there is stored without secret values."""
    assert isinstance(orm.Spawner.__table__.c.user_options.type, orm.JSONDict)
    row = orm.Spawner(name="")
    row.user_options = {"image": "a", "secret_env": {"TOKEN": "hunter2"}}
    assert row.user_options == {"image": "a", "secret_env_names": ["TOKEN"]}


def test_the_installed_versions_are_inside_the_declared_bounds():
    """Both are bounded above (the surface above is private) and installed inside the bounds
    (``make test-floors`` runs this file at the lower ones)."""
    declared = {
        r.name: r
        for r in map(Requirement, tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"])
    }
    for name in ("jupyterhub", "jupyterhub-kubespawner"):
        spec = declared[name].specifier
        assert any(s.operator == "<" for s in spec), f"{name}: no upper bound in pyproject.toml"
        assert spec.contains(version(name)), f"{name} {version(name)} installed, declared {spec}"
