"""Debian's docker-registry on loopback (optionally behind a Docker Hub style token
endpoint) and the busybox base image pushed to it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aicoe_devcluster.controlplane import free_port

if TYPE_CHECKING:
    pass


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
