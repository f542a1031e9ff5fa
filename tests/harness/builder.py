"""What the builder's end-to-end tests need on this machine: a Git server over HTTP on
loopback (git http-backend as CGI), Debian's docker-registry on loopback, a busybox base image,
and a job runner that plays the Job controller and kubelet for build Jobs: it runs the pod's
own init containers and containers here, one after the other (buildah with vfs storage and
chroot isolation), each seeing only the volumes it mounts (emptyDirs and Secrets as host
directories), and writes pod and Job status back to the API server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import TYPE_CHECKING

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aicoe_devcluster import gitserver
from aicoe_devcluster.controlplane import free_port, this_checkout_env
from aicoe_spawner.builder.__main__ import Settings

if TYPE_CHECKING:
    from playwright.async_api import Browser

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
    ImageStream watch and the tornado app on 127.0.0.1:port under ``prefix``. A second
    replica against the same namespace passes ``run_jobs=False`` (one job runner plays the
    Job controller). The cookie secret is derived from ``token`` as the service process does,
    so replicas with the same token share it."""

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
        run_jobs: bool = True,
        app_options: dict | None = None,
        **settings,
    ) -> None:
        from jupyterhub.services.auth import HubOAuth
        from tornado.httpserver import HTTPServer

        from aicoe_spawner.builder.__main__ import build_service, cookie_secret
        from aicoe_spawner.builder.app import SERVER_OPTIONS, make_app
        from aicoe_spawner.watch import ImageStreamWatch

        self.runner = JobRunner(kube, namespace, workdir) if run_jobs else None
        if self.runner is not None:
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


class GitServer(gitserver.GitServer):
    """The project's smart-HTTP git server on loopback, with repositories made from dicts."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "127.0.0.1", free_port())
        self.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def create_repo(
        self,
        name: str,
        files: dict[str, str],
        tag: str | None = None,
        symlinks: dict[str, str] | None = None,
    ) -> str:
        """A bare repo ``name`` with one commit of ``files`` and ``symlinks`` (path ->
        target) (and ``tag``); returns the SHA."""
        work = Path(tempfile.mkdtemp(prefix="git-work-"))
        subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
        sha = self._commit(work, files, symlinks or {}, tag)
        bare = self.root / f"{name}.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
        shutil.rmtree(work)
        return sha

    def update_repo(self, name: str, files: dict[str, str], tag: str | None = None) -> str:
        """A new commit of ``files`` on ``main`` of repo ``name`` (and ``tag``); the SHA."""
        work = Path(tempfile.mkdtemp(prefix="git-work-"))
        bare = self.root / f"{name}.git"
        subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True)
        sha = self._commit(work, files, {}, tag)
        g = ["git", "-C", str(work), "push", "-q", "origin", "main"]
        subprocess.run(g + ([f"refs/tags/{tag}"] if tag else []), check=True)
        shutil.rmtree(work)
        return sha

    @staticmethod
    def _commit(work: Path, files: dict[str, str], symlinks: dict[str, str], tag) -> str:
        for path, text in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
            if path.endswith((".sh", "assemble", "run")):
                (work / path).chmod(0o755)
        for path, target in symlinks.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).symlink_to(target)
        g = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.com"]
        subprocess.run([*g, "add", "-A"], check=True)
        subprocess.run([*g, "commit", "-q", "-m", "change"], check=True)
        if tag:
            subprocess.run([*g, "tag", "-a", tag, "-m", tag], check=True)
        return subprocess.run(
            [*g, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()


class Recorder:
    """An HTTP listener on loopback that records the paths that reach it and answers 404:
    a host the builder must never reach."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- registry and base image ----------------------------------------------------------------


class TokenServer:
    """A registry token endpoint as Docker Hub's (``auth.docker.io/token``): HTTP basic
    credentials of ``users`` in, a JWT out (RS256, its certificate in ``x5c``) granting the
    requested ``scope``, which docker-registry's ``auth: token`` verifies against
    :attr:`cert_path`. Runs in a thread on 127.0.0.1."""

    SERVICE, ISSUER = "test-registry", "test-token-issuer"

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        import datetime
        import http.server
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = workdir / "token.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                server.requests += 1
                query = parse_qs(urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                user = None
                if auth.startswith("Basic "):
                    name, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    user = name if server.users.get(name) == pw else None
                if user is None or query.get("service") != [server.SERVICE]:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": server.issue(user, query.get("scope", []))})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_port}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def issue(self, subject: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64url(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": self.ISSUER,
            "sub": subject,
            "aud": self.SERVICE,
            "exp": now + 300,
            "nbf": now - 60,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{b64url(signature)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Registry:
    """Debian's docker-registry (distribution) on 127.0.0.1; with ``users`` (name -> password)
    it asks for HTTP basic authentication (htpasswd, bcrypt entries), or with ``token=True``
    for bearer tokens from a :class:`TokenServer` that takes those users' basic credentials
    (the flow of Docker Hub, quay.io and ghcr.io). :meth:`stop` and :meth:`start` take it
    down and bring it back on the same port and storage."""

    def __init__(
        self, workdir: Path, users: dict[str, str] | None = None, *, token: bool = False
    ) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.workdir = workdir
        self.users = dict(users or {})
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "config.yml"
        auth = ""
        self.token_server = TokenServer(workdir, self.users) if token else None
        if self.token_server is not None:
            t = self.token_server
            auth = (
                f"auth: {{token: {{realm: {t.realm!r}, service: {t.SERVICE}, "
                f"issuer: {t.ISSUER}, rootcertbundle: {t.cert_path}}}}}\n"
            )
        elif self.users:
            import bcrypt

            htpasswd = workdir / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{name}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
                    for name, pw in self.users.items()
                )
            )
            auth = f"auth: {{htpasswd: {{realm: test-registry, path: {htpasswd}}}}}\n"
        conf.write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {workdir / 'data'}}}}}\n"
            f"http: {{addr: {self.host}}}\n{auth}"
        )
        self.start()

    def start(self) -> None:
        import urllib.error
        import urllib.request

        self.log = (self.workdir / "registry.log").open("ab")
        self.proc = subprocess.Popen(
            ["/usr/bin/docker-registry", "serve", str(self.workdir / "config.yml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                break
            except urllib.error.HTTPError as e:
                if e.code == 401 and self.users:
                    break
                raise
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("docker-registry did not start") from None
                time.sleep(0.1)

    def _request(self, method: str, path: str, body: bytes | None = None, **headers):
        import urllib.request

        if self.token_server is not None:
            repo = re.match(r"/v2/(.+?)/(?:blobs|manifests)/", path)[1]
            user = next(iter(self.users))
            bearer = self.token_server.issue(user, [f"repository:{repo}:pull,push"])
            headers["Authorization"] = f"Bearer {bearer}"
        elif self.users:
            name, pw = next(iter(self.users.items()))
            token = base64.b64encode(f"{name}:{pw}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        req = urllib.request.Request(
            f"http://{self.host}{path}", data=body, method=method, headers=headers
        )
        return urllib.request.urlopen(req, timeout=10)

    def manifest_digest(self, repo: str, tag: str) -> str:
        with self._request(
            "HEAD",
            f"/v2/{repo}/manifests/{tag}",
            Accept="application/vnd.oci.image.manifest.v1+json,"
            "application/vnd.docker.distribution.manifest.v2+json",
        ) as r:
            return r.headers["Docker-Content-Digest"]

    def push_tiny_image(self, repo: str, tag: str, content: str) -> str:
        """Upload a one-file image (OCI manifest, a config and one layer) as ``repo:tag``
        through the distribution API; returns the registry's Docker-Content-Digest."""
        import gzip
        import io
        import tarfile
        from urllib.parse import urlsplit

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = content.encode()
            info = tarfile.TarInfo("hello.txt")
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
        diff_id = "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()
        layer = gzip.compress(buf.getvalue(), mtime=0)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/hello.txt"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        ).encode()
        descriptors = []
        for blob, media_type in (
            (config, "application/vnd.oci.image.config.v1+json"),
            (layer, "application/vnd.oci.image.layer.v1.tar+gzip"),
        ):
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            with self._request("POST", f"/v2/{repo}/blobs/uploads/", b"") as r:
                location = urlsplit(r.headers["Location"])
            sep = "&" if location.query else "?"
            self._request(
                "PUT",
                f"{location.path}?{location.query}{sep}digest={digest}",
                blob,
                **{"Content-Type": "application/octet-stream"},
            ).close()
            descriptors.append({"mediaType": media_type, "digest": digest, "size": len(blob)})
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptors[0],
            "layers": descriptors[1:],
        }
        with self._request(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            json.dumps(manifest).encode(),
            **{"Content-Type": manifest["mediaType"]},
        ) as r:
            return r.headers["Docker-Content-Digest"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()

    def close(self) -> None:
        """Stop the registry (if running) and its token server."""
        if self.proc.poll() is None:
            self.stop()
        if self.token_server is not None:
            self.token_server.stop()


def buildah_args(root: Path) -> list[str]:
    return [
        "buildah",
        "--storage-driver",
        "vfs",
        "--root",
        f"{root}/root",
        "--runroot",
        f"{root}/run",
    ]


def push_base_image(
    registry: Registry,
    workdir: Path,
    scripts_url: str = "image:///usr/libexec/s2i",
    name: str = "base/busybox:1",
) -> str:
    """A busybox image with /etc/passwd and an s2i scripts label (``scripts_url``), pushed to
    the registry as ``name``."""
    ctx = workdir / f"base-ctx-{name.replace('/', '-').replace(':', '-')}"
    (ctx / "bin").mkdir(parents=True, exist_ok=True)
    (ctx / "etc").mkdir(exist_ok=True)
    (ctx / "tmp").mkdir(exist_ok=True)
    (ctx / "usr/libexec/s2i").mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", ctx / "bin/busybox")
    for cmd in ("sh", "ls", "cat", "echo", "id", "chown", "mkdir", "cp", "env", "test", "["):
        (ctx / "bin" / cmd).symlink_to("busybox")
    (ctx / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (ctx / "etc/group").write_text("root:x:0:\n")
    assemble = ctx / "usr/libexec/s2i/assemble"
    assemble.write_text(
        "#!/bin/sh\nset -e\necho '---> s2i assemble: installing sources'\n"
        "mkdir -p /opt/app && cp -r /tmp/src/. /opt/app/\n"
    )
    run = ctx / "usr/libexec/s2i/run"
    run.write_text("#!/bin/sh\nexec cat /opt/app/hello.txt\n")
    assemble.chmod(0o755)
    run.chmod(0o755)
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY . /\nRUN mkdir -p /opt/app && chown 1001:0 /opt/app\n"
        f"LABEL io.openshift.s2i.scripts-url={json.dumps(scripts_url)}\n"
        'CMD ["/bin/sh"]\n'
    )
    image = f"{registry.host}/{name}"
    store = workdir / "base-storage"
    b = buildah_args(store)
    subprocess.run(
        [*b, "bud", "--isolation", "chroot", "-q", "-t", image, str(ctx)],
        check=True,
        capture_output=True,
    )
    subprocess.run([*b, "push", "--tls-verify=false", image], check=True, capture_output=True)
    shutil.rmtree(store, ignore_errors=True)
    return image


# -- the job runner -----------------------------------------------------------------------


def unmount_below(folder: Path) -> None:
    """Unmount whatever is mounted below ``folder`` (buildah's overlay storage mounts its
    layers and itself), deepest first, so that the folder can be removed."""
    prefix = str(folder.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


class JobRunner:
    """Plays the Job controller and kubelet for build Jobs in ``namespace``."""

    instances: list[JobRunner] = []

    def __init__(self, kube: client.ApiClient, namespace: str, workdir: Path) -> None:
        self.batch = client.BatchV1Api(kube)
        self.core = client.CoreV1Api(kube)
        self.namespace = namespace
        self.workdir = workdir
        self.seen: set[str] = set()
        self.logs: dict[str, dict[str, Path]] = {}
        self.durations: dict[str, float] = {}
        self.paused = False
        # job name -> container name -> the environment it ran with (what a test inspects)
        self.environments: dict[str, dict[str, dict[str, str]]] = {}
        self.tasks: list[asyncio.Task] = []
        self._loop_task: asyncio.Task | None = None
        JobRunner.instances.append(self)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self in JobRunner.instances:
            JobRunner.instances.remove(self)
        for t in [self._loop_task, *self.tasks]:
            if t:
                t.cancel()
        await asyncio.gather(
            *[t for t in [self._loop_task, *self.tasks] if t], return_exceptions=True
        )

    async def read_log(self, namespace: str, pod: str, container: str | None = None) -> str | None:
        """The log of ``container`` of ``pod`` (all containers' when None), None if none."""
        paths = self.logs.get(pod) or {}
        chosen = list(paths.values()) if container is None else [paths.get(container)]
        chosen = [p for p in chosen if p is not None]
        texts = [p.read_text(errors="replace") for p in chosen if p.exists()]
        return "".join(texts) if texts else None

    @staticmethod
    async def read_any(namespace: str, pod: str, container: str | None = None) -> str | None:
        """What a replica without the runner reads: the log file the runner wrote on this
        machine (where a real kubelet would serve it to every replica)."""
        for runner in JobRunner.instances:
            text = await runner.read_log(namespace, pod, container)
            if text is not None:
                return text
        return None

    async def _loop(self) -> None:
        while True:
            if not self.paused:
                jobs = await self.batch.list_namespaced_job(
                    self.namespace,
                    label_selector="app.kubernetes.io/managed-by=aicoe-image-builder",
                    _preload_content=False,
                )
                for job in (await jobs.json())["items"]:
                    name = job["metadata"]["name"]
                    if name not in self.seen:
                        self.seen.add(name)
                        self.tasks.append(asyncio.create_task(self._run(job)))
            await asyncio.sleep(0.2)

    async def _volumes(self, pod_spec: dict, tmp: Path) -> dict[str, Path]:
        """Each pod volume as a host directory: emptyDirs empty, Secrets with their keys."""
        out = {}
        for volume in pod_spec.get("volumes") or []:
            path = tmp / "volumes" / volume["name"]
            path.mkdir(parents=True)
            if "secret" in volume:
                secret = await self.core.read_namespaced_secret(
                    volume["secret"]["secretName"], self.namespace
                )
                for key, value in (secret.data or {}).items():
                    (path / key).write_bytes(base64.b64decode(value))
            out[volume["name"]] = path
        return out

    async def _run_container(
        self, pod: str, job: str, container: dict, volumes: dict[str, Path], tmp: Path
    ) -> tuple[int, str]:
        """Run one container's command with its env; paths under its mounts are mapped to
        the volumes' host directories. (exit code, termination message)."""
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts") or []}

        def host(value: str) -> str:
            for mount, path in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    return str(path) + value[len(mount) :]
            return value

        env = {e["name"]: host(e.get("value", "")) for e in container.get("env", [])}
        own = tmp / container["name"]
        own.mkdir()
        env.update(
            PATH=os.environ["PATH"],
            HOME=str(own),
            TERMINATION_LOG=str(own / "termination-log"),
            BUILD_TERMINATION_LOG=str(own / "termination-log"),
            TMPDIR=str(own),
        )
        self.environments[job][container["name"]] = env
        log_path = own / "log"
        self.logs[pod][container["name"]] = log_path
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *container["command"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=own
            )
            code = await proc.wait()
        term = own / "termination-log"
        message = term.read_text() if term.exists() else ""
        if (
            not message
            and code != 0
            and container.get("terminationMessagePolicy") == ("FallbackToLogsOnError")
        ):
            message = "\n".join(log_path.read_text(errors="replace").splitlines()[-80:])[-2048:]
        return code, message

    async def _run(self, job: dict) -> None:
        name = job["metadata"]["name"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pod_name = f"{name}-run"
        template = job["spec"]["template"]
        labels = {**template["metadata"].get("labels", {}), "job-name": name}
        await self.core.create_namespaced_pod(
            self.namespace,
            {"metadata": {"name": pod_name, "labels": labels}, "spec": template["spec"]},
        )
        await self.batch.patch_namespaced_job_status(
            name,
            self.namespace,
            {"status": {"startTime": stamp, "active": 1}},
            _content_type=MERGE,
        )
        pod_spec = template["spec"]
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=self.workdir))
        volumes = await self._volumes(pod_spec, tmp)
        self.logs[pod_name] = {}
        self.environments[name] = {}
        start = time.monotonic()
        statuses: dict[str, list] = {"initContainerStatuses": [], "containerStatuses": []}
        code, message = 0, ""
        steps = [("initContainerStatuses", c) for c in pod_spec.get("initContainers") or []]
        steps += [("containerStatuses", c) for c in pod_spec["containers"]]
        for key, container in steps:
            if code != 0:
                break
            try:
                code, message = await self._run_container(pod_name, name, container, volumes, tmp)
            finally:  # as a kubelet tears a container down: nothing it mounted stays
                unmount_below(tmp)
            statuses[key].append(
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "message": message,
                            "startedAt": stamp,
                            "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "reason": "Completed" if code == 0 else "Error",
                        }
                    },
                }
            )
        self.durations[name] = time.monotonic() - start
        end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await self.core.patch_namespaced_pod_status(
            pod_name,
            self.namespace,
            {"status": {"phase": "Succeeded" if code == 0 else "Failed", **statuses}},
            _content_type=MERGE,
        )
        if code == 0:
            conditions = [
                {
                    "type": "SuccessCriteriaMet",
                    "status": "True",
                    "lastProbeTime": end,
                    "lastTransitionTime": end,
                },
                {
                    "type": "Complete",
                    "status": "True",
                    "lastProbeTime": end,
                    "lastTransitionTime": end,
                },
            ]
            status = {"active": 0, "succeeded": 1, "completionTime": end, "conditions": conditions}
        else:
            conditions = [
                {
                    "type": "FailureTarget",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "lastProbeTime": end,
                    "lastTransitionTime": end,
                },
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                    "lastProbeTime": end,
                    "lastTransitionTime": end,
                },
            ]
            status = {"active": 0, "failed": 1, "conditions": conditions}
        try:
            await self.batch.patch_namespaced_job_status(
                name, self.namespace, {"status": status}, _content_type=MERGE
            )
        except ApiException as e:
            if e.status != 404:  # cancelled meanwhile
                raise


# -- one build's Job, finished by hand ----------------------------------------------------


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def start_pod(kube, namespace: str, build_id: str) -> None:
    """The build Job's pod (``imgbuild-<id>-run``), once."""
    name = f"imgbuild-{build_id}"
    try:
        await client.CoreV1Api(kube).create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": f"{name}-run", "labels": {"job-name": name}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": "b"}]},
            },
        )
    except ApiException as e:
        if e.status != 409:
            raise


async def complete_job(kube, namespace: str, build_id: str, digest: str) -> None:
    """The Job controller and kubelet for one successful build: a finished pod whose
    termination message is the digest, and the Job's Complete status."""
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    name = f"imgbuild-{build_id}"
    pod = f"{name}-run"
    await start_pod(kube, namespace, build_id)
    start = _stamp()
    await core.patch_namespaced_pod_status(
        pod,
        namespace,
        {
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": "build",
                        "image": "b",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": 0,
                                "message": digest,
                                "reason": "Completed",
                                "startedAt": start,
                                "finishedAt": start,
                            }
                        },
                    }
                ],
            }
        },
        _content_type=MERGE,
    )
    end = _stamp()
    conditions = [
        {"type": t, "status": "True", "lastProbeTime": end, "lastTransitionTime": end}
        for t in ("SuccessCriteriaMet", "Complete")
    ]
    await batch.patch_namespaced_job_status(
        name,
        namespace,
        {
            "status": {
                "startTime": start,
                "completionTime": end,
                "succeeded": 1,
                "active": 0,
                "conditions": conditions,
            }
        },
        _content_type=MERGE,
    )


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


# -- refs a repository does not publish ----------------------------------------------------


def push_unpublished_ref(git: GitServer, name: str, ref: str, files: dict[str, str]) -> str:
    """A commit of ``files`` on top of ``main`` of repo ``name``, pushed only to ``ref`` (e.g.
    ``refs/pull/1/head``, what a forge advertises for a pull request): the server advertises
    it, no branch or tag holds it. Returns the SHA."""
    work = Path(tempfile.mkdtemp(prefix="git-work-"))
    bare = git.root / f"{name}.git"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True)
    sha = git._commit(work, files, {}, None)
    subprocess.run(["git", "-C", str(work), "push", "-q", "origin", f"HEAD:{ref}"], check=True)
    shutil.rmtree(work)
    return sha


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
