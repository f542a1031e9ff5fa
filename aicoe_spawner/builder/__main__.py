"""``aicoe-image-builder``: run the builder service (configured by environment variables;
JupyterHub passes JUPYTERHUB_* to a managed service).

AICOE_BUILDER_NAMESPACE       namespace for builds and ImageStreams (default: default)
AICOE_BUILDER_REGISTRY        registry host[:port] images are pushed to
AICOE_BUILDER_ALLOWED_HOSTS   comma-separated Git host globs (default github.com,gitlab.com)
AICOE_BUILDER_PRIVATE_HOSTS   hosts allowed to resolve to private/loopback addresses
AICOE_BUILDER_ALLOW_HTTP      "true": plain http for the private hosts
AICOE_BUILDER_TLS_VERIFY      "false": push/pull without TLS verification
AICOE_BUILDER_PUSH_SECRET     dockerconfigjson Secret mounted into build pods
AICOE_BUILDER_IMAGE           the buildah image of build pods
AICOE_BUILDER_BACKEND         kubernetes (default) | openshift | auto
AICOE_BUILDER_MAX_PER_USER, AICOE_BUILDER_MAX_TOTAL, AICOE_BUILDER_TIMEOUT (seconds)
AICOE_BUILDER_WEBHOOK_SECRET  GitHub webhook secret
AICOE_BUILDER_KUBECONFIG      kubeconfig (default: in-cluster, else $KUBECONFIG)
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from jupyterhub.services.auth import HubOAuth
from kubernetes_asyncio import client, config
from tornado.httpserver import HTTPServer

from ..watch import ImageStreamWatch
from .app import make_app
from .backends.kubernetes import JobConfig, KubernetesBackend
from .registration import Registrar
from .requests import BuildDefaults, RepoPolicy
from .service import BuildService, Limits
from .store import BuildStore


def _list(value: str | None, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    if value is None:
        return default
    return tuple(v.strip() for v in value.split(",") if v.strip())


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
        )


def build_service(api: client.ApiClient, s: Settings, log_reader=None) -> BuildService:
    if s.backend not in ("kubernetes", "auto"):
        raise SystemExit(f"backend {s.backend!r} is not available in this version")
    backend = KubernetesBackend(
        api,
        JobConfig(
            builder_image=s.builder_image,
            push_secret=s.push_secret,
            tls_verify=s.tls_verify,
            timeout_seconds=s.timeout,
        ),
        log_reader=log_reader,
    )
    return BuildService(
        BuildStore(api, s.namespace),
        backend,
        Registrar(api),
        policy=RepoPolicy(s.allowed_hosts, s.private_hosts, s.allow_http),
        defaults=BuildDefaults(namespace=s.namespace, registry=s.registry),
        limits=Limits(per_user=s.max_per_user, total=s.max_total),
    )


async def _main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = Settings.from_env()
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not s.kubeconfig:
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(config_file=s.kubeconfig, client_configuration=configuration)
    api = client.ApiClient(configuration)
    service = build_service(api, s)
    service.start(s.interval)
    watch = ImageStreamWatch(
        client.CustomObjectsApi(api), (s.namespace,), "opendatahub.io/notebook-image=true"
    )
    watch.start()
    hub_auth = HubOAuth()
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/image-builder/")
    app = make_app(
        service, hub_auth, watch, prefix=prefix, webhook_secret=s.webhook_secret.encode()
    )
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8890"))
    server = HTTPServer(app, max_body_size=16 * 1024 * 1024)
    server.listen(url.port or 8890, url.hostname or "127.0.0.1")
    await asyncio.Event().wait()


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
