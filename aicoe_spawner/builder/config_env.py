"""The environment variables of the builder's configuration: :data:`ENV_VARS` maps each
``AICOE_BUILDER_*`` (and the ``JUPYTERHUB_*`` and ``KUBECONFIG`` it reads) onto a trait of
:class:`~aicoe_spawner.builder.config.ImageBuilder`, with how its text is parsed; the trait
then validates the value like one from the config file."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from traitlets import Enum, List, Unicode

# -- parsing environment values ----------------------------------------------------------


def comma_list(text: str) -> list[str]:
    """``a, b,,c`` -> ``["a", "b", "c"]``."""
    return [v.strip() for v in text.split(",") if v.strip()]


def lines(text: str) -> list[str]:
    """Lines separated by newlines or ``;``, stripped, empty ones dropped."""
    return [line.strip() for line in re.split(r"[;\n]", text) if line.strip()]


def version_images(text: str) -> dict[str, str]:
    """``3.12=<image>,3.11=<image>`` -> ``{"3.12": "<image>", …}``."""
    out = {}
    for item in comma_list(text):
        version, sep, image = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not <major.minor>=<image>")
        out[version.strip()] = image.strip()
    return out


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def json_array(text: str) -> list:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(value, list):
        raise ValueError("must be a JSON array")
    return value


@dataclass(frozen=True)
class EnvVar:
    """An environment variable and the trait it sets. ``parse`` turns its text into the
    trait's value (default: the trait's own ``from_string``, lists comma-separated)."""

    name: str
    trait: str
    parse: Callable[[str], Any] | None = None


#: Every environment variable the builder reads, and its trait. When several set one trait,
#: the first that is set (and not empty) wins.
ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("AICOE_BUILDER_NAMESPACE", "namespace"),
    EnvVar("AICOE_BUILDER_REGISTRY", "registry"),
    EnvVar("AICOE_BUILDER_ALLOWED_HOSTS", "allowed_hosts"),
    EnvVar("AICOE_BUILDER_PRIVATE_HOSTS", "private_hosts"),
    EnvVar("AICOE_BUILDER_ALLOW_HTTP", "allow_http"),
    EnvVar("AICOE_BUILDER_TLS_VERIFY", "tls_verify"),
    EnvVar("AICOE_BUILDER_PUSH_SECRET", "push_secret"),
    EnvVar("AICOE_BUILDER_DESTINATIONS", "destinations", json_array),
    EnvVar("AICOE_BUILDER_IMAGE", "build_image"),
    EnvVar("AICOE_BUILDER_BACKEND", "backend"),
    EnvVar("AICOE_BUILDER_MAX_PER_USER", "max_per_user"),
    EnvVar("AICOE_BUILDER_MAX_TOTAL", "max_total"),
    EnvVar("AICOE_BUILDER_TIMEOUT", "build_timeout"),
    EnvVar("AICOE_BUILDER_WEBHOOK_SECRET", "webhook_secret"),
    EnvVar("AICOE_BUILDER_KUBECONFIG", "kubeconfig"),
    EnvVar("KUBECONFIG", "kubeconfig"),
    EnvVar("AICOE_BUILDER_INTERVAL", "reconcile_interval"),
    EnvVar("AICOE_BUILDER_BRANCH_TTL", "branch_ttl"),
    EnvVar("AICOE_BUILDER_JOB_RETENTION", "job_retention"),
    EnvVar("AICOE_BUILDER_CLEANUP_INTERVAL", "cleanup_interval"),
    EnvVar("AICOE_BUILDER_LEASE_DURATION", "lease_duration"),
    EnvVar("AICOE_BUILDER_LEASE_RENEW_INTERVAL", "lease_renew_interval"),
    EnvVar("AICOE_BUILDER_RESYNC_INTERVAL", "resync_interval"),
    EnvVar("AICOE_BUILDER_BUILD_NAMESPACE", "build_namespace"),
    EnvVar("AICOE_BUILDER_BUILD_STORAGE", "build_storage"),
    EnvVar("AICOE_BUILDER_BUILD_NODE_IMAGE_STORE", "build_node_image_store"),
    EnvVar("AICOE_BUILDER_BUILD_NODE_SELECTOR", "build_node_selector", json_object),
    EnvVar("AICOE_BUILDER_BUILD_TOLERATIONS", "build_tolerations", json_array),
    EnvVar("AICOE_BUILDER_RECORD_RETENTION", "record_retention"),
    EnvVar("AICOE_BUILDER_COOKIE_SECRET", "cookie_secret"),
    EnvVar("AICOE_BUILDER_MAX_STREAMS", "max_streams"),
    EnvVar("AICOE_BUILDER_MAX_STREAMS_PER_USER", "max_streams_per_user"),
    EnvVar("AICOE_BUILDER_MAX_IMAGE_STREAMS_PER_USER", "max_image_streams_per_user"),
    EnvVar("AICOE_BUILDER_BASE_IMAGE", "base_image"),
    EnvVar("AICOE_BUILDER_PYTHON_BASE_IMAGES", "python_base_images", version_images),
    EnvVar("AICOE_BUILDER_PACKAGE_INDEX_URL", "package_index_url"),
    EnvVar("AICOE_BUILDER_PACKAGE_INDEX_TRUSTED_HOST", "package_index_trusted_host"),
    EnvVar("AICOE_BUILDER_APT_SOURCES", "apt_sources", lines),
    EnvVar("AICOE_BUILDER_NOTEBOOK_USER", "notebook_user"),
    EnvVar("AICOE_BUILDER_NOTEBOOK_HOME", "notebook_home"),
    EnvVar("AICOE_BUILDER_LAYER_CACHE", "layer_cache"),
    EnvVar("AICOE_BUILDER_HUB_VERSION", "hub_version"),
    EnvVar("AICOE_BUILDER_CHECK_IMAGE", "check_image"),
    EnvVar("AICOE_BUILDER_IMPORT", "import_enabled"),
    EnvVar("AICOE_BUILDER_IMPORT_NAMESPACES", "import_namespaces"),
    EnvVar("AICOE_BUILDER_IMPORT_INTERVAL", "import_interval"),
    EnvVar("AICOE_BUILDER_IMPORT_RETRY", "import_retry"),
    EnvVar("AICOE_BUILDER_IMPORT_POLL", "import_poll"),
    EnvVar("AICOE_BUILDER_IMAGE_POLICY", "image_policy", json_object),
    EnvVar("AICOE_BUILDER_GITHUB_API_URL", "github_api_url"),
    EnvVar("AICOE_BUILDER_GITHUB_APP_ID", "github_app_id"),
    EnvVar("AICOE_BUILDER_GITHUB_APP_PRIVATE_KEY_FILE", "github_app_private_key_file"),
    EnvVar("AICOE_BUILDER_GITHUB_TOKEN_FILE", "github_token_file"),
    EnvVar("AICOE_BUILDER_GITHUB_TOKEN", "github_token"),
    EnvVar("AICOE_BUILDER_GITHUB_ISSUE_BUILDS", "github_issue_builds"),
    EnvVar("AICOE_BUILDER_PUBLIC_URL", "public_url"),
    EnvVar("AICOE_BUILDER_BIND_IP", "bind_ip"),
    EnvVar("JUPYTERHUB_SERVICE_URL", "service_url"),
    EnvVar("JUPYTERHUB_SERVICE_PREFIX", "service_prefix"),
    EnvVar("JUPYTERHUB_API_URL", "hub_api_url"),
)


def env_vars_of(trait: str) -> list[str]:
    """The variables that set ``trait``, in the order they are looked at."""
    return [v.name for v in ENV_VARS if v.trait == trait]


def parse_env_value(var: EnvVar, trait: Any, raw: str) -> Any:
    """The value of ``var``'s text ``raw`` for ``trait`` (not yet validated); ValueError
    saying what was expected."""
    if var.parse is not None:
        return var.parse(raw)
    if isinstance(trait, List):
        return comma_list(raw)
    if isinstance(trait, Unicode | Enum):
        return raw
    try:
        return trait.from_string(raw.strip())
    except ValueError:
        raise ValueError(f"expected {trait.info()}") from None
