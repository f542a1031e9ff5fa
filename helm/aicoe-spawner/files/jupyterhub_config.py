# jupyterhub_config.py of the aicoe-spawner Helm chart.
#
# It reads values.json (rendered by the chart from its values) next to this file, sets up
# JupyterHub behind the chart's configurable-http-proxy with AICoESpawner and the image builder
# service, then applies hub.config (c.<Class>.<trait> = value) and hub.extraConfig, so that
# values always win. For a hub outside this chart, see jupyterhub_config.py at the repository
# root instead.
import json
import os
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

# -- the image builder service --------------------------------------------------------------
builder = values["builder"]
if builder["enabled"]:
    name = builder["name"]
    c.JupyterHub.services = [
        {
            "name": name,
            "url": builder["url"],
            "api_token": os.environ.get("IMAGE_BUILDER_API_TOKEN"),
            "display": True,
            # The page signs users in with the hub's OAuth: its tokens may carry the builder's
            # two scopes (without this every user gets 403 on the page), and users are not
            # asked to confirm access to a service of their own hub.
            "oauth_client_allowed_scopes": [f"custom:{name}:build", f"custom:{name}:admin"],
            "oauth_no_confirm": True,
        }
    ]
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
        "name": "image-builder-users",
        "description": "May build notebook images with the image builder",
        "scopes": [f"access:services!service={name}", f"custom:{name}:build"],
    }
    if builder["builderGroups"]:
        builders["groups"] = builder["builderGroups"]
        user_scopes = ["self", f"access:services!service={name}"]
    else:
        # No groups configured: every user may build.
        user_scopes = ["self", f"access:services!service={name}", f"custom:{name}:build"]
    c.JupyterHub.load_roles = [
        {"name": "user", "scopes": user_scopes},
        builders,
        {
            "name": "image-builder-admins",
            "description": "Administer all image builds",
            "scopes": [f"access:services!service={name}", f"custom:{name}:admin"],
            "groups": builder["adminGroups"],
        },
        {
            # What the builder service itself may do with the hub's API: identify users
            # (OAuth, tokens) and read their groups to check the custom scopes.
            "name": "image-builder-service",
            "scopes": ["read:users:name", "read:users:groups", "read:groups"],
            "services": [name],
        },
    ]

# -- hub.config passthrough and hub.extraConfig (as in zero-to-jupyterhub) -------------------
for section, traits in (hub.get("config") or {}).items():
    for trait, value in (traits or {}).items():
        c[section][trait] = value

for key in sorted(hub.get("extraConfig") or {}):
    exec(compile(hub["extraConfig"][key], f"hub.extraConfig.{key}", "exec"), globals())
