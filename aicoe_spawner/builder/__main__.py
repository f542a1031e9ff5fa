"""``aicoe-image-builder``: run the builder service.

Configured by :class:`~aicoe_spawner.builder.config.ImageBuilder` (a traitlets Application: a
config file, command-line options, ``AICOE_BUILDER_*`` and the ``JUPYTERHUB_*`` variables
JupyterHub passes to a managed service); every setting is in docs/builder-config.md and in
``aicoe-image-builder --help-all``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuth
from kubernetes_asyncio import client, config
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer

from ..watch import ImageStreamWatch
from .app import SERVER_OPTIONS, make_app
from .backends import backend_type, choose_backend
from .config import DEFAULT_PYTHON_BASE_IMAGES, ImageBuilder, Settings
from .github import GitHub, github_config
from .github_reporter import GitHubReporter, ReportStore
from .importer import Importer
from .quota import QuotaLedger
from .registration import Registrar
from .registry import SkopeoResolver
from .requests import BuildDefaults, RepoPolicy
from .service import BuildService, Limits
from .store import BuildStore

__all__ = [
    "DEFAULT_PYTHON_BASE_IMAGES",
    "ImageBuilder",
    "Settings",
    "build_service",
    "cookie_secret",
    "hub_version_of",
    "main",
    "make_github",
    "make_importer",
    "make_service",
    "make_service_and_importer",
    "serve",
]


def build_service(
    api: client.ApiClient, s: Settings, log_reader=None, *, backend: str | None = None
) -> BuildService:
    """The service for ``backend`` (default ``s.backend``; ``auto`` must be resolved first
    with :func:`make_service` / ``choose_backend``)."""
    impl = backend_type(backend or s.backend).from_settings(api, s, log_reader)
    return BuildService(
        BuildStore(api, s.namespace),
        impl,
        # where the cluster's image controller writes the ImageStream tag, the builder does not
        Registrar(api, write_status=impl.writes_stream_status, branch_ttl_seconds=s.branch_ttl),
        policy=RepoPolicy(s.allowed_hosts, s.private_hosts, s.allow_http),
        defaults=BuildDefaults(
            namespace=s.namespace,
            registry=s.registry,
            base_image=s.base_image,
            python_base_images=s.python_base_images,
            package_index_url=s.package_index_url,
            trusted_host=s.package_index_trusted_host,
            apt_sources=s.apt_sources,
            notebook_user=s.notebook_user,
            notebook_home=s.notebook_home,
            layer_cache=s.layer_cache,
            destinations=s.destinations,
        ),
        limits=Limits(
            per_user=s.max_per_user,
            total=s.max_total,
            branch_ttl_seconds=s.branch_ttl,
            cleanup_after_seconds=s.job_retention,
            cleanup_interval_seconds=s.cleanup_interval,
            lease_duration_seconds=s.lease_duration,
            lease_renew_seconds=s.lease_renew,
            resync_interval_seconds=s.resync_interval,
            record_retention_seconds=s.record_retention,
            image_streams_per_user=s.max_image_streams_per_user,
        ),
        ledger=QuotaLedger(api, s.namespace),
    )


def hub_version_of(body: bytes | str) -> str | None:
    """The ``version`` of the hub API's root answer (``GET /hub/api/``), if it is one."""
    try:
        version = json.loads(body).get("version")
    except (ValueError, AttributeError):
        return None
    ok = isinstance(version, str) and version[:1].isdigit() and len(version) < 40
    return version if ok and version.isprintable() and " " not in version else None


async def ask_hub_version(api_url: str) -> str | None:
    """The hub's JupyterHub version from its API root (``GET $JUPYTERHUB_API_URL/``), or None
    (logged) when the hub does not answer."""
    log = logging.getLogger("aicoe_spawner.builder")
    try:
        answer = await AsyncHTTPClient().fetch(api_url.rstrip("/") + "/", request_timeout=5)
    except Exception as e:  # the hub may not be up yet: asked again at the next build
        log.warning("the hub's version (%s/): %s; built images are checked without it", api_url, e)
        return None
    version = hub_version_of(answer.body)
    if version:
        log.info(
            "the hub runs JupyterHub %s: built images must have %s.*",
            version,
            version.split(".")[0],
        )
    return version


def cookie_secret(s: Settings, env=os.environ) -> bytes:
    """The cookie secret every replica shares: configured, else derived from the service's
    API token (the same for every replica and across restarts)."""
    if s.cookie_secret:
        try:
            return bytes.fromhex(s.cookie_secret)
        except ValueError:
            return s.cookie_secret.encode()
    token = env.get("JUPYTERHUB_API_TOKEN", "")
    if not token:
        raise SystemExit("set AICOE_BUILDER_COOKIE_SECRET (or JUPYTERHUB_API_TOKEN)")
    return hmac.new(token.encode(), b"aicoe-image-builder cookie secret", "sha256").digest()


async def make_service(api: client.ApiClient, s: Settings, log_reader=None) -> BuildService:
    """:func:`build_service` with ``auto`` resolved by API discovery."""
    service, _ = await make_service_and_importer(api, s, log_reader)
    return service


def make_importer(api: client.ApiClient, s: Settings, backend: str) -> Importer | None:
    """The image import loop for plain Kubernetes (``backend`` kubernetes); None on OpenShift,
    whose image import controller imports, or when disabled."""
    if backend_type(backend).imports_images or not s.import_enabled:
        return None
    return Importer(
        api,
        s.import_namespaces or (s.namespace,),
        SkopeoResolver(),
        interval=s.import_interval,
        retry=s.import_retry,
        poll=s.import_poll,
    )


async def make_service_and_importer(
    api: client.ApiClient, s: Settings, log_reader=None
) -> tuple[BuildService, Importer | None]:
    """The service and the import loop for the backend that ``s.backend`` resolves to."""
    name = await choose_backend(api, s.backend)
    logging.getLogger("aicoe_spawner.builder").info("build backend: %s", name)
    return build_service(api, s, log_reader, backend=name), make_importer(api, s, name)


def make_github(
    api: client.ApiClient, s: Settings, service: BuildService, prefix: str
) -> tuple[GitHub | None, GitHubReporter | None]:
    """GitHub (App or token) and the reporter it observes the builds with; (None, None)
    when no GitHub credentials are configured."""
    config = github_config(s, prefix)
    if config is None:
        return None, None
    github = GitHub(config)
    reporter = GitHubReporter(github, ReportStore(api, s.namespace), service.record)
    service.observers.append(reporter)
    logging.getLogger("aicoe_spawner.builder").info(
        "GitHub at %s as %s; issue builds %s",
        config.api_url,
        f"App {config.app_id}" if config.app_id else "a token",
        "on" if config.issue_builds else "off",
    )
    return github, reporter


async def serve(app: ImageBuilder) -> None:
    """Run the builder configured by ``app`` until the process ends."""
    logging.basicConfig(level=app.log_level, format="%(asctime)s %(name)s %(message)s")
    s = app.settings()
    image_policies = s.image_policies()
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not s.kubeconfig:
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(config_file=s.kubeconfig, client_configuration=configuration)
    api = client.ApiClient(configuration)
    service, importer = await make_service_and_importer(api, s)
    service.start(s.interval)
    if s.check_image and not s.hub_version and app.hub_api_url:
        service.backend.hub_version_lookup = lambda: ask_hub_version(app.hub_api_url)
    if importer is not None:
        importer.start()
    watch = ImageStreamWatch(
        client.CustomObjectsApi(api), (s.namespace,), "opendatahub.io/notebook-image=true"
    )
    watch.start()
    # c.HubOAuth.* of the config file apply; the hub's URL is ours when it is set
    hub_auth = HubOAuth(parent=app, **({"api_url": app.hub_api_url} if app.hub_api_url else {}))
    github, reporter = make_github(api, s, service, app.service_prefix)
    if reporter is not None:
        reporter.start()
    web_app = make_app(
        service,
        hub_auth,
        watch,
        prefix=app.service_prefix,
        webhook_secret=s.webhook_secret.encode(),
        cookie_secret=cookie_secret(s, {"JUPYTERHUB_API_TOKEN": hub_auth.api_token or ""}),
        max_streams=s.max_streams,
        max_streams_per_user=s.max_streams_per_user,
        image_policies=image_policies,
        github=github,
        github_reporter=reporter,
    )
    url = urlsplit(app.service_url)
    server = HTTPServer(web_app, **SERVER_OPTIONS)  # bodies: see app.CappedBody
    server.listen(url.port or 8890, app.bind_ip or url.hostname or "127.0.0.1")
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """The ``aicoe-image-builder`` command (``python -m aicoe_spawner.builder``)."""
    ImageBuilder.launch_instance(argv, serve=serve)


if __name__ == "__main__":
    main()
