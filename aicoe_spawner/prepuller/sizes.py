"""Image sizes from the registry's manifests, for ``max_size``: the bytes a node downloads
(the config and the layers as the manifest lists them, compressed), of the platform's manifest
when the reference is an index. Digests are immutable, so each is asked once.

``skopeo inspect --raw`` fetches the manifests (the distribution API with the registries' auth
flows, as the builder's import does); an image whose size cannot be had counts as unknown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable

log = logging.getLogger("aicoe_spawner.prepuller")

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


class ManifestError(ValueError):
    """A manifest that gives no size."""


def manifest_size(raw: bytes, platform: str = "linux/amd64") -> int | str:
    """The download size a manifest states, or, for an index, the digest of the manifest of
    ``platform`` ("os/arch[/variant]") to read next."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ManifestError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("not a manifest")
    if doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
        wanted = platform.split("/")
        for entry in doc.get("manifests") or []:
            p = entry.get("platform") or {}
            have = [p.get("os"), p.get("architecture")] + (
                [p.get("variant")] if len(wanted) > 2 else []
            )
            if have == wanted and isinstance(entry.get("digest"), str):
                return entry["digest"]
        raise ManifestError(f"no manifest for {platform}")
    parts = [doc.get("config") or {}, *(doc.get("layers") or [])]
    sizes = [p.get("size") for p in parts if isinstance(p, dict)]
    if not doc.get("layers") or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise ManifestError("no layer sizes")
    return sum(sizes)


class ImageSizes:
    """Sizes by digest, fetched with skopeo; ``known`` is what :func:`plan.plan` reads."""

    def __init__(
        self,
        *,
        platform: str = "linux/amd64",
        authfile: str = "",
        insecure_registries: Iterable[str] = (),
        binary: str = "skopeo",
        timeout: float = 30.0,
        concurrency: int = 4,
    ) -> None:
        self.platform = platform
        self.authfile = authfile
        self.insecure = set(insecure_registries)
        self.binary = shutil.which(binary) or binary
        self.timeout = timeout
        self._limit = asyncio.Semaphore(concurrency)
        self.known: dict[str, int | None] = {}

    async def _raw(self, ref: str) -> bytes:
        cmd = [self.binary, "--command-timeout", f"{int(self.timeout)}s", "inspect", "--raw"]
        cmd += ["--authfile", self.authfile] if self.authfile else ["--no-creds"]
        if ref.split("/", 1)[0] in self.insecure:
            cmd.append("--tls-verify=false")
        with tempfile.TemporaryDirectory(prefix="aicoe-puller-") as home:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home}
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                f"docker://{ref}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            try:
                out, err = await asyncio.wait_for(proc.communicate(), self.timeout + 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise ManifestError("no answer from the registry") from None
        if proc.returncode != 0:
            raise ManifestError(err.decode(errors="replace").strip()[-300:] or "skopeo failed")
        return out

    async def size_of(self, image_ref: str) -> int:
        """The download size of ``registry/repo@sha256:…``."""
        repo = image_ref.rpartition("@")[0]
        found = manifest_size(await self._raw(image_ref), self.platform)
        if isinstance(found, str):  # an index: the platform's manifest
            found = manifest_size(await self._raw(f"{repo}@{found}"), self.platform)
            if isinstance(found, str):
                raise ManifestError("an index inside an index")
        return found

    async def update(self, refs: Iterable[str]) -> None:
        """Learn the sizes of the digests not yet known (a failure is remembered as None)."""

        async def one(ref: str) -> None:
            digest = ref.rpartition("@")[2]
            async with self._limit:
                try:
                    self.known[digest] = await self.size_of(ref)
                except (ManifestError, OSError) as e:
                    log.warning("size of %s unknown: %s", ref, e)
                    self.known[digest] = None

        todo = {r.rpartition("@")[2]: r for r in refs if r.rpartition("@")[2] not in self.known}
        await asyncio.gather(*(one(r) for r in todo.values()))
