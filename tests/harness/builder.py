"""The builder environment of the end-to-end tests: ``BuilderEnv`` (what a test module's
fixture gives), the builder's settings and hub roles, the builder in this process
(``BuilderStack``) or as its own process (``BuilderProcess``), and what a request could change.
The git server, registry and job runner it uses are harness.git, harness.registry and
harness.jobs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kubernetes_asyncio import client

from aicoe_devcluster.controlplane import free_port, this_checkout_env
from aicoe_spawner.builder.__main__ import Settings
from harness.git import GitServer
from harness.jobs import JobRunner
from harness.registry import Registry

if TYPE_CHECKING:
    from playwright.async_api import Browser

    from aicoe_devcluster import FakeKubelet
    from aicoe_spawner.builder.service import BuildService
    from aicoe_spawner.watch import ImageStreamWatch
    from harness.hub import Hub

MERGE = "application/merge-patch+json"


@dataclass(kw_only=True)
class BuilderEnv:
    """What a builder integration module's ``env`` fixture gives its tests: the namespace and
    its API client, and those of the rest a module sets up (None where it has none)."""

    kube: client.ApiClient
    namespace: str
    #: the builder's base URL, straight to its port (``http://127.0.0.1:<port><prefix>``)
    url: str | None = None
    #: ``http://127.0.0.1:<port>``, the builder's origin without its prefix
    origin: str | None = None
    #: the builder page through the hub's proxy, as users reach it
    page_url: str | None = None
    #: user name -> hub API token
    tokens: dict[str, str] | None = None
    hub: Hub | None = None
    git: GitServer | None = None
    registry: Registry | None = None
    #: a second registry with basic auth (a mapped destination's)
    team: Registry | None = None
    #: the base image pushed to ``registry`` (``push_base_image``)
    base: str | None = None
    #: the in-process builder (``BuilderStack``): its service, job runner and ImageStream watch
    service: BuildService | None = None
    runner: JobRunner | None = None
    watch: ImageStreamWatch | None = None
    #: builder replicas as processes (``BuilderProcess``)
    replicas: list[BuilderProcess] | None = None
    browser: Browser | None = None
    tmp: Path | None = None


# -- git over http -------------------------------------------------------------------------


def local_settings(namespace: str, registry: str, **overrides) -> Settings:
    """Builder settings for this machine: the loopback Git server and registry allowed
    explicitly (the defaults refuse them), plain HTTP, no TLS verification, and no image
    check (the busybox base image has no jupyterhub; ``check_image=True`` turns it on)."""
    return Settings(
        **{
            "namespace": namespace,
            "registry": registry,
            "allowed_hosts": (),
            "private_hosts": ("127.0.0.1",),
            "allow_http": True,
            "tls_verify": False,
            "check_image": False,
            **overrides,
        }
    )


def builder_service_config(
    token: str,
    port: int,
    allowed_scopes: tuple[str, ...] = ("custom:image-builder:build", "custom:image-builder:admin"),
) -> str:
    """jupyterhub_config.py lines registering the builder as the external service
    ``image-builder`` on 127.0.0.1:port, with its two custom scopes. The hub waits 2 s (not
    30) for a builder that is not listening yet: tests start it after the hub."""
    return f"""
c.JupyterHub.custom_scopes = {{
    "custom:image-builder:build": {{"description": "submit image builds"}},
    "custom:image-builder:admin": {{"description": "see and cancel all image builds"}},
}}
c.JupyterHub.services.append({{"name": "image-builder", "api_token": {token!r},
    "url": "http://127.0.0.1:{port}", "oauth_no_confirm": True, "timeout": 2,
    "oauth_client_allowed_scopes": {list(allowed_scopes)!r}}})
"""


#: Where the builder service is mounted (JupyterHub's ``/services/<name>/``).
SERVICE_PREFIX = "/services/image-builder/"


def builder_roles(
    builders: tuple[str, ...] = (), admins: tuple[str, ...] = (), viewers: tuple[str, ...] = ()
) -> str:
    """jupyterhub_config.py lines granting ``builders`` the build scope, ``admins`` the admin
    scope (both with access to the service) and ``viewers`` only access to it."""
    access = "access:services!service=image-builder"
    grants = (
        ("builders", builders, ["custom:image-builder:build", access]),
        ("builder-admins", admins, ["custom:image-builder:admin", access]),
        ("viewers", viewers, [access]),
    )
    roles = [
        {"name": name, "users": list(users), "scopes": scopes}
        for name, users, scopes in grants
        if users
    ]
    return f"\nc.JupyterHub.load_roles.extend({roles!r})\n"


def builder_hub(control_plane, namespace: str, workdir: Path, token: str, port: int, **roles):
    """A hub (not started; its ``url`` is known) with the builder registered on
    127.0.0.1:port and ``roles`` (see :func:`builder_roles`)."""
    from harness.hub import Hub

    return Hub(
        workdir / "hub",
        control_plane.kubeconfig,
        namespace,
        free_port(),
        builder_service_config(token, port) + builder_roles(**roles),
    )


async def start_builder_hub(
    control_plane, namespace: str, workdir: Path, token: str, port: int, **roles
):
    """:func:`builder_hub`, started."""
    hub = builder_hub(control_plane, namespace, workdir, token, port, **roles)
    await hub.start()
    return hub


async def user_tokens(hub, users) -> dict[str, str]:
    """A new API token of each user in ``users``."""
    tokens = {}
    for user in users:
        status, body = await hub.api("POST", f"/users/{user}/tokens", json={})
        assert status == 201, body
        tokens[user] = body["token"]
    return tokens


async def api_call(
    url: str,
    method: str,
    path: str,
    token: str | None = None,
    json_body=None,
    data=None,
    headers=None,
):
    """(status, JSON or text) of one request to the builder at ``url`` (its prefix)."""
    import aiohttp

    h = dict(headers or {})
    if token:
        h["Authorization"] = f"token {token}"
    async with aiohttp.ClientSession() as s:
        async with s.request(
            method, url + path, json=json_body, data=data, headers=h, allow_redirects=False
        ) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


def github_signature(body: bytes, secret: bytes) -> str:
    """GitHub's ``X-Hub-Signature-256`` header value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class BuilderStack:
    """The builder service in-process, as a JupyterHub service: job runner, build service,
    ImageStream watch and the tornado app on 127.0.0.1:port under ``prefix``. With a
    ``kubelet`` its build Jobs run (a ``JobRunner``); without one none does: a second replica
    against the same namespace (one job runner plays the Job controller), or a test that
    finishes Jobs by hand (``complete_job``). The cookie secret is derived from ``token`` as
    the service process does, so replicas with the same token share it."""

    def __init__(
        self,
        kube,
        namespace: str,
        registry: str,
        workdir: Path,
        *,
        token: str,
        hub_url: str,
        port: int,
        prefix: str = SERVICE_PREFIX,
        oauth_redirect_uri: str | None = None,
        webhook_secret: bytes | None = None,
        kubelet: FakeKubelet | None = None,
        app_options: dict | None = None,
        **settings,
    ) -> None:
        from jupyterhub.services.auth import HubOAuth
        from tornado.httpserver import HTTPServer

        from aicoe_spawner.builder.__main__ import build_service, cookie_secret
        from aicoe_spawner.builder.app import SERVER_OPTIONS, make_app
        from aicoe_spawner.watch import ImageStreamWatch

        self.runner = None
        if kubelet is not None:
            self.runner = JobRunner(kube, namespace, workdir, kubelet=kubelet)
            self.runner.start()
        config = local_settings(namespace, registry, **settings)
        self.service = build_service(
            kube, config, log_reader=self.runner.read_log if self.runner else JobRunner.read_any
        )
        self.service.start(0.2)
        self.watch = ImageStreamWatch(
            client.CustomObjectsApi(kube), (namespace,), "opendatahub.io/notebook-image=true"
        )
        self.watch.start()
        auth = HubOAuth(
            api_token=token,
            api_url=f"{hub_url}/hub/api",
            hub_prefix="/hub/",
            base_url=prefix,
            oauth_client_id="service-image-builder",
            oauth_redirect_uri=oauth_redirect_uri
            or f"http://127.0.0.1:{port}{prefix}oauth_callback",
            access_scopes={"access:services!service=image-builder"},
        )
        extra = {"webhook_secret": webhook_secret} if webhook_secret is not None else {}
        self.server = HTTPServer(
            make_app(
                self.service,
                auth,
                self.watch,
                prefix=prefix,
                cookie_secret=cookie_secret(config, {"JUPYTERHUB_API_TOKEN": token}),
                **extra,
                **(app_options or {}),
            ),
            **SERVER_OPTIONS,
        )
        self.server.listen(port, "127.0.0.1")

    async def stop(self) -> None:
        self.server.stop()
        await self.watch.stop()
        await self.service.stop()
        if self.runner is not None:
            await self.runner.stop()


# -- the service as its own process -------------------------------------------------------


class BuilderProcess:
    """``python -m aicoe_spawner.builder`` configured by environment variables, as JupyterHub
    (or the chart) runs it; several against one namespace are several replicas."""

    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path,
        namespace: str,
        *,
        token: str,
        hub_url: str,
        port: int,
        prefix: str = "/services/image-builder/",
        **env: str,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}{prefix}"
        self.log_path = workdir / f"builder-{port}.log"
        self.env = this_checkout_env(os.environ) | dict(
            AICOE_BUILDER_NAMESPACE=namespace,
            AICOE_BUILDER_REGISTRY="registry.local:5000",
            AICOE_BUILDER_ALLOWED_HOSTS="",
            AICOE_BUILDER_PRIVATE_HOSTS="127.0.0.1",
            AICOE_BUILDER_ALLOW_HTTP="true",
            AICOE_BUILDER_KUBECONFIG=str(kubeconfig),
            JUPYTERHUB_API_TOKEN=token,
            JUPYTERHUB_API_URL=f"{hub_url}/hub/api",
            JUPYTERHUB_BASE_URL="/",
            JUPYTERHUB_SERVICE_PREFIX=prefix,
            JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
            JUPYTERHUB_CLIENT_ID="service-image-builder",
            JUPYTERHUB_OAUTH_CALLBACK_URL=f"{prefix}oauth_callback",
            JUPYTERHUB_OAUTH_ACCESS_SCOPES='["access:services!service=image-builder"]',
            **env,
        )
        self.proc: subprocess.Popen | None = None

    async def start(self, timeout: float = 30) -> BuilderProcess:
        import aiohttp

        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, "-m", "aicoe_spawner.builder"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(self.url + "health") as r:
                        if r.status == 200 and (await r.json())["synced"]:
                            return self
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(self.log_tail())
                await asyncio.sleep(0.1)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
            self._log.close()


async def builder_state(service, kube: client.ApiClient, namespace: str) -> tuple:
    """What a request could change: build records, Jobs, and every ImageStream's version."""
    records = sorted(b.id for b in await service.store.list())
    jobs = await client.BatchV1Api(kube).list_namespaced_job(namespace)
    streams = await client.CustomObjectsApi(kube).list_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams"
    )
    return (
        records,
        sorted(j.metadata.name for j in jobs.items),
        {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in streams["items"]},
    )
