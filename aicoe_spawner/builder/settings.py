"""The values the rest of the builder receives from its configuration (``Settings``): made
by :meth:`aicoe_spawner.builder.config.ImageBuilder.settings` (or, from the environment alone,
:func:`aicoe_spawner.builder.config.settings_from_env`), whose traits take their defaults from
here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import imports
from .catalog_view import ImagePolicies
from .destinations import Destination, parse_destinations
from .requests import DEFAULT_BASE_IMAGE

if TYPE_CHECKING:
    from .config import ImageBuilder

#: runtime.txt / .python-version versions offered by default (Jupyter Docker Stacks' tags)
DEFAULT_PYTHON_BASE_IMAGES = (
    ("3.11", "quay.io/jupyter/minimal-notebook:python-3.11"),
    ("3.12", "quay.io/jupyter/minimal-notebook:python-3.12"),
    ("3.13", "quay.io/jupyter/minimal-notebook:python-3.13"),
)


@dataclass
class Settings:
    """The values the rest of the builder receives (``build_service``, ``make_importer``);
    made by :meth:`ImageBuilder.settings`. Its defaults are the traits' defaults."""

    namespace: str = "default"
    registry: str = "image-registry.local:5000"
    allowed_hosts: tuple[str, ...] = ("github.com", "gitlab.com")
    private_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    tls_verify: bool = True
    push_secret: str | None = None
    destinations: tuple[Destination, ...] = ()  # per-project destinations, first match wins
    builder_image: str = "quay.io/buildah/stable:v1.37"
    backend: str = "kubernetes"
    max_per_user: int = 2
    max_total: int = 10
    timeout: int = 3600
    webhook_secret: str = ""
    kubeconfig: str | None = None
    interval: float = 1.0
    branch_ttl: int = 0
    job_retention: int = 600
    cleanup_interval: float = 60.0
    lease_duration: float = 10.0
    lease_renew: float = 2.0
    resync_interval: float = 60.0
    build_namespace: str | None = None
    build_storage: str = "20Gi"
    build_node_image_store: str = ""
    build_node_selector: tuple[tuple[str, str], ...] = ()
    build_tolerations: tuple[dict, ...] = ()
    record_retention: int = 7 * 24 * 3600
    cookie_secret: str = ""
    max_streams: int = 200
    max_streams_per_user: int = 10
    max_image_streams_per_user: int = 20
    base_image: str = DEFAULT_BASE_IMAGE
    python_base_images: tuple[tuple[str, str], ...] = DEFAULT_PYTHON_BASE_IMAGES
    package_index_url: str = ""
    package_index_trusted_host: str = ""
    apt_sources: tuple[str, ...] = ()
    notebook_user: str = "1000:100"
    notebook_home: str = "/home/jovyan"
    layer_cache: bool = True
    hub_version: str = ""  # "" = ask the hub's API at start
    check_image: bool = True
    import_enabled: bool = True
    import_namespaces: tuple[str, ...] = ()  # empty: (namespace,)
    import_interval: float = imports.DEFAULT_INTERVAL
    import_retry: float = imports.DEFAULT_RETRY
    import_poll: float = 30.0
    image_policy: str = ""  # JSON, see ImageBuilder.image_policy
    github_api_url: str = "https://api.github.com"
    github_app_id: str = ""
    github_app_private_key_file: str = ""
    github_token_file: str = ""
    github_token: str = field(default="", repr=False)
    github_issue_builds: bool = True
    public_url: str = ""

    @classmethod
    def of(cls, app: ImageBuilder) -> Settings:
        """The settings of ``app``'s traits (their names differ for a few: build_image,
        build_timeout, reconcile_interval, lease_renew_interval; empty texts are None)."""
        return cls(
            namespace=app.namespace,
            registry=app.registry,
            allowed_hosts=tuple(app.allowed_hosts),
            private_hosts=tuple(app.private_hosts),
            allow_http=app.allow_http,
            tls_verify=app.tls_verify,
            push_secret=app.push_secret or None,
            destinations=parse_destinations(app.destinations),
            builder_image=app.build_image,
            backend=app.backend,
            max_per_user=app.max_per_user,
            max_total=app.max_total,
            timeout=app.build_timeout,
            webhook_secret=app.webhook_secret,
            kubeconfig=app.kubeconfig or None,
            interval=app.reconcile_interval,
            branch_ttl=app.branch_ttl,
            job_retention=app.job_retention,
            cleanup_interval=app.cleanup_interval,
            lease_duration=app.lease_duration,
            lease_renew=app.lease_renew_interval,
            resync_interval=app.resync_interval,
            build_namespace=app.build_namespace or None,
            build_storage=app.build_storage,
            build_node_image_store=app.build_node_image_store,
            build_node_selector=tuple(app.build_node_selector.items()),
            build_tolerations=tuple(app.build_tolerations),
            record_retention=app.record_retention,
            cookie_secret=app.cookie_secret,
            max_streams=app.max_streams,
            max_streams_per_user=app.max_streams_per_user,
            max_image_streams_per_user=app.max_image_streams_per_user,
            base_image=app.base_image,
            python_base_images=tuple(app.python_base_images.items()),
            package_index_url=app.package_index_url,
            package_index_trusted_host=app.package_index_trusted_host,
            apt_sources=tuple(app.apt_sources),
            notebook_user=app.notebook_user,
            notebook_home=app.notebook_home,
            layer_cache=app.layer_cache,
            hub_version=app.hub_version,
            check_image=app.check_image,
            import_enabled=app.import_enabled,
            import_namespaces=tuple(app.import_namespaces),
            import_interval=app.import_interval,
            import_retry=app.import_retry,
            import_poll=app.import_poll,
            image_policy=json.dumps(app.image_policy) if app.image_policy else "",
            github_api_url=app.github_api_url,
            github_app_id=app.github_app_id,
            github_app_private_key_file=app.github_app_private_key_file,
            github_token_file=app.github_token_file,
            github_token=app.github_token,
            github_issue_builds=app.github_issue_builds,
            public_url=app.public_url,
        )

    def image_policies(self) -> ImagePolicies:
        """The policies of ``image_policy``; SystemExit naming the variable if invalid."""
        try:
            return ImagePolicies.from_json(self.image_policy)
        except ValueError as e:
            raise SystemExit(f"AICOE_BUILDER_IMAGE_POLICY: {e}") from None
