"""Resolve ``registry/repository:tag`` to the digest of its manifest (or index) with
``skopeo inspect --raw``: containers/image (the library of podman, buildah and CRI-O) speaks
the distribution API, asks for OCI index/manifest and Docker manifest (list) media types,
and does anonymous, basic and bearer-token auth (the ``WWW-Authenticate`` challenge, the token
endpoint, Docker Hub's ``registry-1.docker.io`` and ``library/``) as Docker Hub, quay.io and
ghcr.io want. The digest is the sha256 of the top-level manifest bytes, exactly as served
(the registry's ``Docker-Content-Digest``).

Credentials go to skopeo in a private auth file holding only the one registry's entry (never
a credential helper); skopeo runs with an empty ``HOME`` so that no other auth file or
configuration of the host is read. Errors become an OpenShift reason and skopeo's message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .imports import Failed, ImageReference, Resolved, Result

_MSG_RE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
_PREFIX_RE = re.compile(r'^"docker://[^"]*": ')
_MAX_MANIFEST = 4 * 1024 * 1024


def classify(stderr: str) -> Failed:
    """skopeo's error output -> :class:`Failed` (reason as OpenShift names it, a message
    without skopeo's log decoration)."""
    found = _MSG_RE.findall(stderr)
    if found:
        message = found[-1].encode().decode("unicode_escape", errors="replace")
    else:
        message = stderr.strip().splitlines()[-1] if stderr.strip() else "skopeo failed"
    message = message.removeprefix("Error parsing image name ").strip()
    message = _PREFIX_RE.sub("", message)  # the '"docker://…": ' that skopeo puts first
    head, sep, tail = message.rpartition(": ")
    if sep and head.endswith(f": {tail}"):  # the registry's code and message alike, said once
        message = head
    low = message.lower()
    if any(s in low for s in ("dial tcp", "no such host", "i/o timeout", "tls:", "x509:")):
        reason = "InternalError"  # the registry could not be reached (or trusted)
    elif any(
        s in low for s in ("unauthorized", "authentication required", "denied", "invalid username")
    ):
        reason = "Unauthorized"
    elif any(s in low for s in ("manifest unknown", "not found", "name unknown")):
        reason = "NotFound"
    else:
        reason = "InternalError"
    return Failed(reason, message)


class SkopeoResolver:
    """Resolves references by running ``skopeo`` (one process per reference)."""

    def __init__(self, binary: str = "skopeo", timeout: float = 30.0) -> None:
        self.binary = shutil.which(binary) or binary
        self.timeout = timeout
        self.runs = 0  # skopeo processes started (measurements count them)

    def command(self, ref: ImageReference, *, authfile: Path | None, insecure: bool) -> list[str]:
        cmd = [self.binary, "--command-timeout", f"{int(self.timeout)}s", "inspect", "--raw"]
        cmd += ["--authfile", str(authfile)] if authfile else ["--no-creds"]
        if insecure:
            cmd.append("--tls-verify=false")
        return [*cmd, f"docker://{ref}"]

    async def resolve(
        self,
        ref: ImageReference,
        credentials: tuple[str, str] | None = None,
        *,
        insecure: bool = False,
    ) -> Result:
        """The digest of ``ref``'s top-level manifest, or why it could not be had."""
        with tempfile.TemporaryDirectory(prefix="aicoe-import-") as home:
            authfile = None
            if credentials:
                authfile = Path(home) / "auth.json"
                token = base64.b64encode(":".join(credentials).encode()).decode()
                fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump({"auths": {ref.registry: {"auth": token}}}, f)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home}
            self.runs += 1
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.command(ref, authfile=authfile, insecure=insecure),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                )
            except OSError as e:
                return Failed("InternalError", f"cannot run skopeo: {e}")
            try:
                out, err = await asyncio.wait_for(proc.communicate(), self.timeout + 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return Failed("InternalError", f"{ref}: no answer within {self.timeout:.0f} s")
        if proc.returncode != 0:
            return classify(err.decode(errors="replace"))
        if not out or len(out) > _MAX_MANIFEST:
            return Failed("InternalError", f"{ref}: the registry sent no usable manifest")
        digest = "sha256:" + hashlib.sha256(out).hexdigest()
        if ref.digest and ref.digest != digest:
            return Failed("InternalError", f"{ref}: the registry served another digest")
        return Resolved(ref.name, digest)
