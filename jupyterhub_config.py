# An example jupyterhub_config.py for a hub with aicoe-spawner, for hub admins who run
# JupyterHub themselves (a VM, their own Deployment, or zero-to-jupyterhub's hub.extraConfig:
# see docs/zero-to-jupyterhub.md). The Helm chart in helm/aicoe-spawner has its own config.
#
#   jupyterhub -f jupyterhub_config.py
#
# Every AICoESpawner setting is described in docs/configuration.md. Values that differ per
# installation come from environment variables so that this file can be used as it is:
#
#   AICOE_NAMESPACE            namespace of users' pods and of the builder (default: default)
#   AICOE_IMAGE_NAMESPACES     comma-separated namespaces of notebook ImageStreams
#                              (default: AICOE_NAMESPACE)
#   AICOE_REGISTRY             registry the builder pushes to (default: image-registry.local:5000)
#   IMAGE_BUILDER_API_TOKEN    the builder's JupyterHub API token (default: generated per start)
#   KUBECONFIG                 outside a cluster: the kubeconfig of the hub and the builder
#   AICOE_BUILDER_*            passed on to the image builder service (docs/builder.md)
import json
import os
import secrets
import sys

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

namespace = os.environ.get("AICOE_NAMESPACE", "default")
image_namespaces = [
    ns.strip() for ns in os.environ.get("AICOE_IMAGE_NAMESPACES", namespace).split(",") if ns
]

# -- JupyterHub ----------------------------------------------------------------------------
c.JupyterHub.bind_url = "http://:8000"
# Replace with a real authenticator (github, generic-oauth, ldap, ...). The dummy one lets
# any name in: only for trying things out.
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}

# -- the spawner -----------------------------------------------------------------------------
# "aicoe" is the entry point of aicoe_spawner.AICoESpawner, a KubeSpawner: every KubeSpawner
# setting (c.KubeSpawner.* or c.AICoESpawner.*) still applies.
c.JupyterHub.spawner_class = "aicoe"
c.KubeSpawner.namespace = namespace
c.KubeSpawner.start_timeout = 600  # first pulls of big notebook images take a while

# The catalog: ImageStreams labelled opendatahub.io/notebook-image=true in these namespaces,
# watched live (a new or rebuilt image shows up without a restart). Pods start on the digest
# that the stream's status resolves, never on a floating tag.
c.AICoESpawner.image_namespaces = image_namespaces
c.AICoESpawner.image_label_selector = "opendatahub.io/notebook-image=true"

# Sizes users choose from. cpu_* in cores, mem_* as Kubernetes quantities; "default" marks the
# preselected one. Like a KubeSpawner profile, a size may add "kubespawner_override" (pod
# settings for that size only: node_selector, tolerations, extra_resource_limits, volumes,
# volume_mounts, extra_labels, ...) and "profile_options". An existing c.KubeSpawner.profile_list
# is read as the sizes instead (then leave this unset).
c.AICoESpawner.sizes = [
    {
        "name": "small",
        "display_name": "Small",
        "description": "1 CPU, 2 GiB: exploring and light work",
        "cpu_guarantee": 0.5,
        "cpu_limit": 1,
        "mem_guarantee": "1Gi",
        "mem_limit": "2Gi",
        "default": True,
    },
    {
        "name": "medium",
        "display_name": "Medium",
        "description": "2 CPU, 8 GiB: everyday data science",
        "cpu_guarantee": 1,
        "cpu_limit": 2,
        "mem_guarantee": "4Gi",
        "mem_limit": "8Gi",
    },
    {
        "name": "large",
        "display_name": "Large",
        "description": "4 CPU, 16 GiB: training and big data sets",
        "cpu_guarantee": 2,
        "cpu_limit": 4,
        "mem_guarantee": "8Gi",
        "mem_limit": "16Gi",
        # e.g. the high-memory node pool:
        # "kubespawner_override": {"node_selector": {"node-pool": "highmem"}},
    },
]
# Let users type their own CPU/memory, up to these bounds.
c.AICoESpawner.allow_custom_resources = True
c.AICoESpawner.max_cpu = 4
c.AICoESpawner.max_memory = "16Gi"
# ... and no less than these (form, links and REST alike).
c.AICoESpawner.min_cpu = 0.1
c.AICoESpawner.min_memory = "256Mi"

# GPUs: none for most users (max_gpus = 0); the gpu-users group below may ask for up to 2.
# Pods with GPUs get the limit below, these tolerations and this node selector.
c.AICoESpawner.gpu_resource_name = "nvidia.com/gpu"
c.AICoESpawner.max_gpus = 0
c.AICoESpawner.gpu_tolerations = [
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
]
c.AICoESpawner.gpu_node_selector = {"nvidia.com/gpu.present": "true"}

# Environment variables users may set: names must look like shell variables; JUPYTERHUB_*,
# JPY_*, JUPYTER_IMAGE*, MEM_* and CPU_* are always reserved; add your own here.
c.AICoESpawner.reserved_env_names = ["AWS_ROLE_ARN", "PIP_INDEX_URL"]
c.AICoESpawner.reserved_env_prefixes = ["KUBERNETES_"]
c.AICoESpawner.max_env_vars = 20
c.AICoESpawner.max_env_value_length = 4096
# Variables every pod gets (set by the admin, not the user).
c.AICoESpawner.environment = {"PIP_INDEX_URL": "https://pypi.org/simple"}

# Policies: what everybody may choose, and what members of JupyterHub groups may choose in
# addition (the union applies). Image patterns match "stream" or "namespace/stream".
c.AICoESpawner.default_policy = {"images": ["*"], "sizes": ["small", "medium"]}
c.AICoESpawner.group_policies = {
    "gpu-users": {"sizes": ["large"], "max_gpus": 2},
    "project-x": {"images": ["project-x-*"]},
}

# -- the image builder, as a service JupyterHub runs -------------------------------------------
# It builds images from Git repositories (API, web page, GitHub webhooks) and publishes them
# as notebook ImageStreams. JupyterHub starts it and passes JUPYTERHUB_* variables to it.
builder_token = os.environ.get("IMAGE_BUILDER_API_TOKEN") or secrets.token_hex(32)
# The spawn page links to the builder's page.
c.AICoESpawner.builder_url = "/services/image-builder/"
# Per-project destinations (docs/builder.md#per-project-destinations), one list for both: the
# builder reads AICOE_BUILDER_DESTINATIONS (which repositories push where, with which
# Secrets), and user pods of images under an entry's registry get its pullSecret.
destinations = json.loads(os.environ.get("AICOE_BUILDER_DESTINATIONS") or "[]")
c.AICoESpawner.registry_pull_secrets = [d for d in destinations if d.get("pullSecret")]
c.JupyterHub.services = [
    {
        "name": "image-builder",
        "command": [sys.executable, "-m", "aicoe_spawner.builder"],
        # (IMAGE_BUILDER_PORT: the demo and the tests give each hub a free port)
        "url": f"http://127.0.0.1:{os.environ.get('IMAGE_BUILDER_PORT', '8890')}",
        "api_token": builder_token,
        "display": True,
        # The page signs users in with the hub's OAuth: the tokens it gets may carry the
        # builder's two scopes (without this every user gets 403 on the page).
        "oauth_client_allowed_scopes": [
            "custom:image-builder:build",
            "custom:image-builder:admin",
        ],
        "oauth_no_confirm": True,
        "environment": {
            "AICOE_BUILDER_NAMESPACE": namespace,
            "AICOE_BUILDER_REGISTRY": os.environ.get("AICOE_REGISTRY", "image-registry.local:5000"),
            "KUBECONFIG": os.environ.get("KUBECONFIG", ""),
            # GET api/images lists for each user what their spawn page offers.
            "AICOE_BUILDER_IMAGE_POLICY": json.dumps(
                {
                    "default_policy": c.AICoESpawner.default_policy,
                    "group_policies": c.AICoESpawner.group_policies,
                }
            ),
            # Every other builder setting (AICOE_BUILDER_IMAGE, _ALLOWED_HOSTS, _PRIVATE_HOSTS,
            # _ALLOW_HTTP, _TLS_VERIFY, _WEBHOOK_SECRET, _PUSH_SECRET, ...; see
            # docs/builder.md) is passed on from the hub's environment, among them what
            # environment builds use: _BASE_IMAGE (default
            # quay.io/jupyter/minimal-notebook:2025-10-06), _PYTHON_BASE_IMAGES,
            # _PACKAGE_INDEX_URL, _APT_SOURCES.
            **{k: v for k, v in os.environ.items() if k.startswith("AICOE_BUILDER_")},
        },
    }
]

# Custom scopes of the builder: submit builds (and see one's own), administer all builds.
c.JupyterHub.custom_scopes = {
    "custom:image-builder:build": {
        "description": "Submit image builds and see your own builds.",
    },
    "custom:image-builder:admin": {
        "description": "See, cancel and rebuild every image build.",
        "subscopes": ["custom:image-builder:build"],
    },
}

# Roles: every user may open the builder and submit builds; the image-admins group
# administers all builds; the builder itself may look users and groups up.
c.JupyterHub.load_roles = [
    {
        "name": "user",
        "scopes": [
            "self",
            "access:services!service=image-builder",
            "custom:image-builder:build",
        ],
    },
    {
        "name": "image-builder-admins",
        "description": "Administer all image builds",
        "scopes": ["access:services!service=image-builder", "custom:image-builder:admin"],
        "groups": ["image-admins"],
    },
    {
        "name": "image-builder-service",
        "scopes": ["read:users:name", "read:users:groups", "read:groups"],
        "services": ["image-builder"],
    },
]
