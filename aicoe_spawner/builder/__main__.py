"""``aicoe-image-builder``: run the builder service (configured by environment variables;
JupyterHub passes JUPYTERHUB_* to a managed service).

AICOE_BUILDER_NAMESPACE       namespace for builds and ImageStreams (default: default)
AICOE_BUILDER_REGISTRY        registry host[:port] images are pushed to
AICOE_BUILDER_ALLOWED_HOSTS   comma-separated Git host globs (default github.com,gitlab.com)
AICOE_BUILDER_PRIVATE_HOSTS   hosts allowed to resolve to private/loopback addresses
AICOE_BUILDER_ALLOW_HTTP      "true": plain http for the private hosts
AICOE_BUILDER_TLS_VERIFY      "false": push/pull without TLS verification
AICOE_BUILDER_PUSH_SECRET     dockerconfigjson Secret mounted into the push step of build pods
                              (never into the step that runs the repository's Dockerfile)
AICOE_BUILDER_BUILD_NAMESPACE namespace build Jobs run in (Kubernetes backend; default:
                              AICOE_BUILDER_NAMESPACE), e.g. "notebook-builds", confined by
                              the chart's NetworkPolicy; records and ImageStreams stay put
AICOE_BUILDER_BUILD_STORAGE   size of each build pod emptyDir (buildah storage, the image
                              archive) and the pod's ephemeral-storage limit (default 20Gi)
AICOE_BUILDER_IMAGE           the buildah image of build pods
AICOE_BUILDER_BACKEND         kubernetes (default) | openshift | auto (openshift when the API
                              server serves build.openshift.io, found by discovery)
AICOE_BUILDER_MAX_PER_USER, AICOE_BUILDER_MAX_TOTAL, AICOE_BUILDER_TIMEOUT (seconds)
AICOE_BUILDER_BRANCH_TTL      seconds images built from branches live (0, default: forever)
AICOE_BUILDER_JOB_RETENTION   seconds finished build Jobs/Builds are kept (default 600)
AICOE_BUILDER_CLEANUP_INTERVAL  seconds between cleanup runs (default 60)
AICOE_BUILDER_RECORD_RETENTION  seconds finished build records (ImageBuild objects, their kept
                              logs) and remembered webhook deliveries are kept (default 604800)
AICOE_BUILDER_COOKIE_SECRET   secret signing the OAuth and XSRF cookies (hex, or text), the same
                              for every replica (the chart shares one Secret); default: derived
                              from JUPYTERHUB_API_TOKEN, which every replica shares too
AICOE_BUILDER_MAX_STREAMS, AICOE_BUILDER_MAX_STREAMS_PER_USER  open event streams per replica
AICOE_BUILDER_MAX_IMAGE_STREAMS_PER_USER  ImageStreams one requester may have published
                              (default 20; 0: no limit; builder admins are not limited)
AICOE_BUILDER_WEBHOOK_SECRET  GitHub webhook secret
AICOE_BUILDER_HUB_VERSION     the hub's JupyterHub version, whose major version every built image
                              must have (default: asked from $JUPYTERHUB_API_URL at start)
AICOE_BUILDER_CHECK_IMAGE     "false": offer built images without checking them (docs/builder.md)
AICOE_BUILDER_IMPORT          "false": no image import (on OpenShift there is none anyway: the
                              platform imports)
AICOE_BUILDER_IMPORT_NAMESPACES  comma-separated namespaces whose notebook ImageStreams are
                              imported (default: AICOE_BUILDER_NAMESPACE)
AICOE_BUILDER_IMPORT_INTERVAL seconds between imports of importPolicy.scheduled tags (900)
AICOE_BUILDER_IMPORT_RETRY    seconds before a failed import is tried again (120)
AICOE_BUILDER_IMPORT_POLL     seconds between passes over the streams (30)
AICOE_BUILDER_IMAGE_POLICY    JSON {"default_policy": {...}, "group_policies": {...}}: the
                              spawner's dicts of the same names, so that GET api/images shows
                              each user only the images their spawn page offers (default: all
                              images that are not hidden)
AICOE_BUILDER_KUBECONFIG      kubeconfig (default: in-cluster, else $KUBECONFIG)
AICOE_BUILDER_BASE_IMAGE      base image of environment builds and of `source` without one
                              (default: quay.io/jupyter/minimal-notebook, pinned)
AICOE_BUILDER_PYTHON_BASE_IMAGES  ``3.12=<image>,3.11=<image>``: the Python versions a
                              runtime.txt / .python-version may name, and their base images
AICOE_BUILDER_PACKAGE_INDEX_URL   PEP 503 index environment builds install from (pip, uv,
                              micropipenv); AICOE_BUILDER_PACKAGE_INDEX_TRUSTED_HOST: its host
                              when it is plain http
AICOE_BUILDER_APT_SOURCES     sources.list lines (newline or ';' separated) apt.txt installs
                              from, instead of the base image's own
AICOE_BUILDER_NOTEBOOK_USER, AICOE_BUILDER_NOTEBOOK_HOME  owner (uid:gid, default 1000:100)
                              and place (default /home/jovyan) of the repository's files
AICOE_BUILDER_LAYER_CACHE     "false": no environment images (default: environment builds keep
                              one in <registry>/<org>/<stream>-cache, reused while the
                              environment files are unchanged)
AICOE_BUILDER_BIND_IP         address to listen on (default: the host of the service URL;
                              "0.0.0.0" when the URL names a Service, e.g. in z2jh's hub pod)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
from dataclasses import dataclass

from jupyterhub.services.auth import HubOAuth
from kubernetes_asyncio import client, config
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer

from ..options import parse_memory
from ..watch import ImageStreamWatch
from . import imports
from .app import SERVER_OPTIONS, make_app
from .backends.kubernetes import JobConfig, KubernetesBackend
from .backends.openshift import OpenShiftBackend, choose_backend
from .catalog_view import ImagePolicies
from .importer import Importer
from .quota import QuotaLedger
from .registration import Registrar
from .registry import SkopeoResolver
from .requests import (
    DEFAULT_BASE_IMAGE,
    BuildDefaults,
    BuildRequestError,
    RepoPolicy,
    validate_image,
)
from .service import BuildService, Limits
from .store import BuildStore


def _list(value: str | None, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    if value is None:
        return default
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _quantity(value: str) -> str:
    """A storage quantity (``20Gi``), checked at start instead of at the first build."""
    try:
        parse_memory(value)
    except ValueError as e:
        raise SystemExit(f"AICOE_BUILDER_BUILD_STORAGE: {e}") from None
    return value


#: runtime.txt / .python-version versions offered by default (Jupyter Docker Stacks' tags)
DEFAULT_PYTHON_BASE_IMAGES = (
    ("3.11", "quay.io/jupyter/minimal-notebook:python-3.11"),
    ("3.12", "quay.io/jupyter/minimal-notebook:python-3.12"),
    ("3.13", "quay.io/jupyter/minimal-notebook:python-3.13"),
)


def _python_images(value: str | None) -> tuple[tuple[str, str], ...]:
    """``3.12=<image>,3.11=<image>`` -> pairs, checked at start."""
    if value is None:
        return DEFAULT_PYTHON_BASE_IMAGES
    out = []
    for item in _list(value):
        version, sep, image = item.partition("=")
        if not sep or not re.fullmatch(r"\d+\.\d+", version.strip()):
            raise SystemExit(
                f"AICOE_BUILDER_PYTHON_BASE_IMAGES: {item!r} is not <major.minor>=<image>"
            )
        try:
            out.append((version.strip(), validate_image(image.strip(), "image")))
        except BuildRequestError as e:
            raise SystemExit(f"AICOE_BUILDER_PYTHON_BASE_IMAGES: {e}") from None
    return tuple(out)


def _seconds(get, name: str, default: float) -> float:
    """A positive number of seconds, checked at start."""
    value = get(name)
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise SystemExit(f"{name}: {value!r} is not a positive number of seconds")
    return seconds


@dataclass
class Settings:
    namespace: str = "default"
    registry: str = "image-registry.local:5000"
    allowed_hosts: tuple[str, ...] = ("github.com", "gitlab.com")
    private_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    tls_verify: bool = True
    push_secret: str | None = None
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
    build_namespace: str | None = None
    build_storage: str = "20Gi"
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
    layer_cache: bool = False
    hub_version: str = ""  # "" = ask the hub's API at start
    check_image: bool = True
    import_enabled: bool = True
    import_namespaces: tuple[str, ...] = ()  # empty: (namespace,)
    import_interval: float = imports.DEFAULT_INTERVAL
    import_retry: float = imports.DEFAULT_RETRY
    import_poll: float = 30.0
    image_policy: str = ""

    @classmethod
    def from_env(cls, env=os.environ) -> Settings:
        g = env.get
        return cls(
            namespace=g("AICOE_BUILDER_NAMESPACE", "default"),
            registry=g("AICOE_BUILDER_REGISTRY", cls.registry),
            allowed_hosts=_list(g("AICOE_BUILDER_ALLOWED_HOSTS"), cls.allowed_hosts),
            private_hosts=_list(g("AICOE_BUILDER_PRIVATE_HOSTS")),
            allow_http=g("AICOE_BUILDER_ALLOW_HTTP", "") == "true",
            tls_verify=g("AICOE_BUILDER_TLS_VERIFY", "true") != "false",
            push_secret=g("AICOE_BUILDER_PUSH_SECRET") or None,
            builder_image=g("AICOE_BUILDER_IMAGE", cls.builder_image),
            backend=g("AICOE_BUILDER_BACKEND", "kubernetes"),
            max_per_user=int(g("AICOE_BUILDER_MAX_PER_USER", "2")),
            max_total=int(g("AICOE_BUILDER_MAX_TOTAL", "10")),
            timeout=int(g("AICOE_BUILDER_TIMEOUT", "3600")),
            webhook_secret=g("AICOE_BUILDER_WEBHOOK_SECRET", ""),
            kubeconfig=g("AICOE_BUILDER_KUBECONFIG") or g("KUBECONFIG"),
            interval=float(g("AICOE_BUILDER_INTERVAL", "1")),
            branch_ttl=int(g("AICOE_BUILDER_BRANCH_TTL", "0")),
            job_retention=int(g("AICOE_BUILDER_JOB_RETENTION", "600")),
            cleanup_interval=float(g("AICOE_BUILDER_CLEANUP_INTERVAL", "60")),
            build_namespace=g("AICOE_BUILDER_BUILD_NAMESPACE") or None,
            build_storage=_quantity(g("AICOE_BUILDER_BUILD_STORAGE") or cls.build_storage),
            record_retention=int(g("AICOE_BUILDER_RECORD_RETENTION", str(cls.record_retention))),
            cookie_secret=g("AICOE_BUILDER_COOKIE_SECRET", ""),
            max_streams=int(g("AICOE_BUILDER_MAX_STREAMS", "200")),
            max_streams_per_user=int(g("AICOE_BUILDER_MAX_STREAMS_PER_USER", "10")),
            max_image_streams_per_user=int(g("AICOE_BUILDER_MAX_IMAGE_STREAMS_PER_USER", "20")),
            base_image=g("AICOE_BUILDER_BASE_IMAGE") or DEFAULT_BASE_IMAGE,
            python_base_images=_python_images(g("AICOE_BUILDER_PYTHON_BASE_IMAGES")),
            package_index_url=g("AICOE_BUILDER_PACKAGE_INDEX_URL", ""),
            package_index_trusted_host=g("AICOE_BUILDER_PACKAGE_INDEX_TRUSTED_HOST", ""),
            apt_sources=tuple(
                line.strip()
                for line in re.split(r"[;\n]", g("AICOE_BUILDER_APT_SOURCES", ""))
                if line.strip()
            ),
            notebook_user=g("AICOE_BUILDER_NOTEBOOK_USER") or "1000:100",
            notebook_home=g("AICOE_BUILDER_NOTEBOOK_HOME") or "/home/jovyan",
            layer_cache=g("AICOE_BUILDER_LAYER_CACHE", "true") != "false",
            hub_version=g("AICOE_BUILDER_HUB_VERSION", ""),
            check_image=g("AICOE_BUILDER_CHECK_IMAGE", "true") != "false",
            import_enabled=g("AICOE_BUILDER_IMPORT", "true") != "false",
            import_namespaces=_list(g("AICOE_BUILDER_IMPORT_NAMESPACES")),
            import_interval=_seconds(g, "AICOE_BUILDER_IMPORT_INTERVAL", cls.import_interval),
            import_retry=_seconds(g, "AICOE_BUILDER_IMPORT_RETRY", cls.import_retry),
            import_poll=_seconds(g, "AICOE_BUILDER_IMPORT_POLL", cls.import_poll),
            image_policy=g("AICOE_BUILDER_IMAGE_POLICY", ""),
        )

    def image_policies(self) -> ImagePolicies:
        """The policies of ``image_policy``; SystemExit naming the variable if invalid."""
        try:
            return ImagePolicies.from_json(self.image_policy)
        except ValueError as e:
            raise SystemExit(f"AICOE_BUILDER_IMAGE_POLICY: {e}") from None


def build_service(
    api: client.ApiClient, s: Settings, log_reader=None, *, backend: str | None = None
) -> BuildService:
    """The service for ``backend`` (default ``s.backend``; ``auto`` must be resolved first
    with :func:`make_service` / ``choose_backend``)."""
    name = backend or s.backend
    if name == "kubernetes":
        impl = KubernetesBackend(
            api,
            JobConfig(
                builder_image=s.builder_image,
                push_secret=s.push_secret,
                tls_verify=s.tls_verify,
                timeout_seconds=s.timeout,
                namespace=s.build_namespace,
                storage_size=s.build_storage,
                check_image=s.check_image,
                hub_version=s.hub_version,
            ),
            log_reader=log_reader,
        )
    elif name == "openshift":
        impl = OpenShiftBackend(
            api,
            timeout_seconds=s.timeout,
            log_reader=log_reader,
            check_image=s.check_image,
            hub_version=s.hub_version,
        )
    elif name == "auto":
        raise ValueError("backend 'auto' is resolved by make_service (API discovery)")
    else:
        raise SystemExit(f"unknown backend {name!r} (kubernetes | openshift | auto)")
    return BuildService(
        BuildStore(api, s.namespace),
        impl,
        # On OpenShift the build's output and the image controller write the ImageStream tag
        Registrar(api, write_status=name == "kubernetes", branch_ttl_seconds=s.branch_ttl),
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
        ),
        limits=Limits(
            per_user=s.max_per_user,
            total=s.max_total,
            branch_ttl_seconds=s.branch_ttl,
            cleanup_after_seconds=s.job_retention,
            cleanup_interval_seconds=s.cleanup_interval,
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
    if backend != "kubernetes" or not s.import_enabled:
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


async def _main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = Settings.from_env()
    image_policies = s.image_policies()  # a mistake stops the builder before it serves
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not s.kubeconfig:
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(config_file=s.kubeconfig, client_configuration=configuration)
    api = client.ApiClient(configuration)
    service, importer = await make_service_and_importer(api, s)
    service.start(s.interval)
    api_url = os.environ.get("JUPYTERHUB_API_URL", "")
    if s.check_image and not s.hub_version and api_url:
        service.backend.hub_version_lookup = lambda: ask_hub_version(api_url)
    if importer is not None:
        importer.start()
    watch = ImageStreamWatch(
        client.CustomObjectsApi(api), (s.namespace,), "opendatahub.io/notebook-image=true"
    )
    watch.start()
    hub_auth = HubOAuth()
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/image-builder/")
    app = make_app(
        service,
        hub_auth,
        watch,
        prefix=prefix,
        webhook_secret=s.webhook_secret.encode(),
        cookie_secret=cookie_secret(s),
        max_streams=s.max_streams,
        max_streams_per_user=s.max_streams_per_user,
        image_policies=image_policies,
    )
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8890"))
    server = HTTPServer(app, **SERVER_OPTIONS)  # bodies: see app.CappedBody
    bind_ip = os.environ.get("AICOE_BUILDER_BIND_IP") or url.hostname or "127.0.0.1"
    server.listen(url.port or 8890, bind_ip)
    await asyncio.Event().wait()


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
