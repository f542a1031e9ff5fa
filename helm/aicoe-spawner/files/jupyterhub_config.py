# jupyterhub_config.py of the aicoe-spawner Helm chart.
#
# It reads values.json (rendered by the chart from its values) next to this file, sets up
# JupyterHub behind the chart's configurable-http-proxy with AICoESpawner and the image builder
# service, then applies hub.config (c.<Class>.<trait> = value) and hub.extraConfig, so that
# values always win. For a hub outside this chart, see jupyterhub_config.py at the repository
# root instead.
import json
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

CONFIG_DIR = Path(os.environ.get("AICOE_CHART_CONFIG_DIR", Path(__file__).resolve().parent))
values = json.loads((CONFIG_DIR / "values.json").read_text())
hub = values["hub"]
namespace = os.environ.get("POD_NAMESPACE", values["namespace"])

# -- hub and proxy -------------------------------------------------------------------------
# The proxy runs in its own Deployment (proxy.* values); the hub talks to its API Service.
c.JupyterHub.hub_bind_url = f"http://:{hub['port']}"
c.JupyterHub.hub_connect_url = f"http://{hub['service']}:{hub['port']}"
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = (
    f"http://{values['proxy']['apiService']}:{values['proxy']['apiPort']}"
)
# CONFIGPROXY_AUTH_TOKEN and JPY_COOKIE_SECRET come from the chart's Secret as env variables.
c.JupyterHub.cleanup_servers = False  # user pods outlive hub restarts
c.JupyterHub.last_activity_interval = 60

db = hub["db"]
if db["type"] == "sqlite-pvc":
    c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
elif db["type"] == "sqlite-memory":
    c.JupyterHub.db_url = "sqlite://"
else:
    c.JupyterHub.db_url = db["url"]

# -- spawner ------------------------------------------------------------------------------
c.JupyterHub.spawner_class = "aicoe"
c.KubeSpawner.namespace = namespace
c.AICoESpawner.image_namespaces = values["imageNamespaces"]
c.KubeSpawner.common_labels = {"app.kubernetes.io/part-of": "aicoe-spawner"}
c.KubeSpawner.start_timeout = 600  # pulling a big notebook image takes a while
c.KubeSpawner.environment = dict(values["singleuser"].get("extraEnv") or {})
singleuser = values["singleuser"]
if singleuser.get("uid") is not None:
    c.KubeSpawner.uid = singleuser["uid"]
if singleuser.get("fsGid") is not None:
    c.KubeSpawner.fs_gid = singleuser["fsGid"]
c.KubeSpawner.pod_security_context = dict(singleuser.get("podSecurityContext") or {})
c.KubeSpawner.container_security_context = dict(singleuser.get("containerSecurityContext") or {})
if singleuser.get("imagePullSecrets"):
    c.KubeSpawner.image_pull_secrets = list(singleuser["imagePullSecrets"])

storage = values["singleuser"]["storage"]
if storage["type"] == "dynamic":
    c.KubeSpawner.storage_pvc_ensure = True
    c.KubeSpawner.pvc_name_template = "claim-{user_server}"
    c.KubeSpawner.storage_capacity = storage["capacity"]
    if storage.get("storageClass"):
        c.KubeSpawner.storage_class = storage["storageClass"]
    c.KubeSpawner.volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
    c.KubeSpawner.volume_mounts = [{"name": "home", "mountPath": storage["homeMountPath"]}]
    # the repository's files built images keep in the home reach the volume (docs/builder.md)
    c.AICoESpawner.home_path = storage["homeMountPath"]
else:
    c.KubeSpawner.storage_pvc_ensure = False

# -- hub services and roles, by name (hub.services / hub.loadRoles merge into these) ---------
services = {}
roles = {}

builder = values["builder"]
# builder.destinations: user pods of images under a destination's registry get its pullSecret
# (the same list as the builder's; AICoESpawner.registry_pull_secrets)
c.AICoESpawner.registry_pull_secrets = [
    d for d in builder.get("destinations") or [] if d.get("pullSecret")
]
if builder["enabled"]:
    name = builder["name"]
    services[name] = {
        "url": builder["url"],
        "api_token": os.environ.get("IMAGE_BUILDER_API_TOKEN"),
        "display": True,
        # The page signs users in with the hub's OAuth: its tokens may carry the builder's
        # two scopes (without this every user gets 403 on the page), and users are not
        # asked to confirm access to a service of their own hub.
        "oauth_client_allowed_scopes": [f"custom:{name}:build", f"custom:{name}:admin"],
        "oauth_no_confirm": True,
    }
    # The options form links to the builder's page ("Build an image from a repository").
    c.AICoESpawner.builder_url = f"/services/{name}/"
    # Custom scopes of the builder: submit builds / see and cancel everyone's builds.
    c.JupyterHub.custom_scopes = {
        f"custom:{name}:build": {"description": "Submit image builds and see your own builds."},
        f"custom:{name}:admin": {
            "description": "See, cancel and rebuild every image build.",
            "subscopes": [f"custom:{name}:build"],
        },
    }
    builders = {
        "description": "May build notebook images with the image builder",
        "scopes": [f"access:services!service={name}", f"custom:{name}:build"],
    }
    if builder["builderGroups"]:
        builders["groups"] = builder["builderGroups"]
        user_scopes = ["self", f"access:services!service={name}"]
    else:
        # No groups configured: every user may build.
        user_scopes = ["self", f"access:services!service={name}", f"custom:{name}:build"]
    roles["user"] = {"scopes": user_scopes}
    roles["image-builder-users"] = builders
    roles["image-builder-admins"] = {
        "description": "Administer all image builds",
        "scopes": [f"access:services!service={name}", f"custom:{name}:admin"],
        "groups": builder["adminGroups"],
    }
    # What the builder service itself may do with the hub's API: identify users (OAuth,
    # tokens) and read their groups to check the custom scopes.
    roles["image-builder-service"] = {
        "scopes": ["read:users:name", "read:users:groups", "read:groups"],
        "services": [name],
    }

cull = values["cull"]
if cull["enabled"]:
    # jupyterhub-idle-culler, started by the hub with its own token (JUPYTERHUB_API_TOKEN),
    # talking to the hub's API on this pod.
    base_url = (hub.get("config") or {}).get("JupyterHub", {}).get("base_url") or ""
    prefix = "".join(f"/{part}" for part in base_url.split("/") if part)
    api_url = f"http://127.0.0.1:{hub['port']}{prefix}/hub/api"

    def flag(value):
        return "true" if value else "false"

    services["jupyterhub-idle-culler"] = {
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--url={api_url}",
            f"--timeout={cull['timeout']}",
            f"--cull-every={cull['every']}",
            f"--concurrency={cull['concurrency']}",
            f"--max-age={cull['maxAge']}",
            f"--cull-users={flag(cull['users'])}",
            f"--cull-admin-users={flag(cull['adminUsers'])}",
            f"--remove-named-servers={flag(cull['removeNamedServers'])}",
        ],
    }
    # Least privilege: find idle servers and stop them; delete users only with cull.users.
    roles["jupyterhub-idle-culler"] = {
        "description": "Stop idle servers (jupyterhub-idle-culler)",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]
        + (["admin:users"] if cull["users"] else []),
        "services": ["jupyterhub-idle-culler"],
    }


def merge(chart, extra, renames):
    """The chart's specs by name, updated by the admin's (an entry's fields win; null removes
    the entry); as JupyterHub's list of specs, each with its name."""
    merged = {key: dict(spec) for key, spec in chart.items()}
    for key, spec in (extra or {}).items():
        if spec is None:
            merged.pop(key, None)
            continue
        spec = {renames.get(k, k): v for k, v in spec.items()}
        merged[key] = {**merged.get(key, {}), **spec}
    return [{**spec, "name": key} for key, spec in merged.items()]


service_list = merge(services, hub.get("services"), {"apiToken": "api_token"})
if service_list:
    c.JupyterHub.services = service_list
role_list = merge(roles, hub.get("loadRoles"), {})
if role_list:
    c.JupyterHub.load_roles = role_list

# -- hub.config passthrough and hub.extraConfig (as in zero-to-jupyterhub) -------------------
for section, traits in (hub.get("config") or {}).items():
    for trait, value in (traits or {}).items():
        c[section][trait] = value

for key in sorted(hub.get("extraConfig") or {}):
    exec(compile(hub["extraConfig"][key], f"hub.extraConfig.{key}", "exec"), globals())
