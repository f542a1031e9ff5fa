"""Container images for the real test node, built on this machine with buildah.

Sources live in ``images/<name>/Containerfile``. A Debian root filesystem comes from
``mmdebstrap`` (the machine's own apt sources), Python packages from wheels downloaded on the
host, so nothing needs a container registry on the internet. Every image is tagged with a hash
of its inputs and stored in a local registry whose storage lives in the cache directory
(outside the work tree): the next run finds it there and builds nothing.

    python -m aicoe_spawner.devcluster.images notebook builder      # build into the cache
    python -m aicoe_spawner.devcluster.images builder --push REGISTRY/REPO   # for admins
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .controlplane import REPO_ROOT

log = logging.getLogger("aicoe.devcluster.images")

IMAGES_DIR = REPO_ROOT / "images"
SUITE = "bookworm"  # the Debian release of the images (Python 3.11, like the hub's machines)
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def cache_dir() -> Path:
    """Where built images (as registry storage) and their inputs are kept between runs."""
    default = Path.home() / ".cache" / "aicoe-spawner"
    return Path(os.environ.get("AICOE_CACHE", default))


@dataclass(frozen=True)
class ImageSpec:
    """What an image is made of: its Containerfile folder, Debian packages, Python packages."""

    name: str
    packages: tuple[str, ...] = ()
    python: tuple[str, ...] = ()
    files: tuple[tuple[str, Path], ...] = ()  # (name in the build context, host file)

    @property
    def source(self) -> Path:
        return IMAGES_DIR / self.name

    def key(self) -> str:
        """A hash of every input; the image's tag."""
        h = hashlib.sha256()
        h.update(json.dumps([SUITE, self.packages, self.python]).encode())
        for path in sorted(self.source.rglob("*")):
            if path.is_file():
                h.update(path.relative_to(self.source).as_posix().encode())
                h.update(path.read_bytes())
        for name, host_file in self.files:
            h.update(name.encode())
            h.update(host_file.read_bytes())
        return h.hexdigest()[:16]


def _hub_versions() -> tuple[str, ...]:
    """The notebook image runs the hub's own jupyterhub (and the demo's jupyterlab) version."""
    pins = [f"jupyterhub=={metadata.version('jupyterhub')}"]
    try:
        pins.append(f"jupyterlab=={metadata.version('jupyterlab')}")
    except metadata.PackageNotFoundError:
        pins.append("jupyterlab")
    return tuple(pins)


def image_specs() -> dict[str, ImageSpec]:
    return {
        "pause": ImageSpec("pause", files=(("busybox", Path("/bin/busybox")),)),
        "notebook": ImageSpec(
            "notebook",
            packages=("python3", "python3-venv", "ca-certificates", "git"),
            python=_hub_versions(),
        ),
        "builder": ImageSpec("builder", packages=("buildah", "git", "ca-certificates")),
    }


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command (never through a shell); raise with its output when it fails."""
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{args[0]} failed ({proc.returncode}): {' '.join(args)}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def registry_digest(registry: str, repository: str, tag: str) -> str | None:
    """The manifest digest of ``repository:tag`` in a plain-HTTP registry, or None."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": MANIFEST_TYPES},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


class ImageBuilder:
    """Builds images with buildah under the cache directory and pushes them to a registry."""

    def __init__(self, cache: Path | None = None) -> None:
        self.cache = cache or cache_dir()
        self.buildah_root = self.cache / "buildah"

    def buildah(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run(
            [
                "buildah",
                "--storage-driver=vfs",
                f"--root={self.buildah_root / 'root'}",
                f"--runroot={self.buildah_root / 'run'}",
                *args,
            ],
            **kwargs,
        )

    def rootfs(self, spec: ImageSpec) -> Path:
        """A Debian root filesystem tarball with ``spec.packages`` (cached)."""
        key = hashlib.sha256(json.dumps([SUITE, spec.packages]).encode()).hexdigest()[:16]
        path = self.cache / "rootfs" / f"{spec.name}-{key}.tar"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            tmp = path.with_suffix(".tmp.tar")
            run(
                [
                    "mmdebstrap",
                    "--variant=apt",
                    "--quiet",
                    "--aptopt=Acquire::Retries 3",
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    f"--include={','.join(spec.packages)}",
                    SUITE,
                    str(tmp),
                ]
            )
            tmp.rename(path)
            log.info("root filesystem %s in %.0f s", path.name, time.monotonic() - started)
        return path

    def wheels(self, spec: ImageSpec, dest: Path) -> None:
        """Download wheels for ``spec.python`` (for the image's Python 3.11) into ``dest``."""
        key = hashlib.sha256(json.dumps(spec.python).encode()).hexdigest()[:16]
        cached = self.cache / "wheels" / key
        if not (cached / "requirements.txt").exists():
            tmp = Path(tempfile.mkdtemp(prefix="wheels-", dir=self.cache))
            run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--only-binary=:all:",
                    "--python-version=3.11",
                    "--platform=manylinux2014_x86_64",
                    "--platform=manylinux_2_28_x86_64",
                    "--platform=linux_x86_64",
                    "--dest",
                    str(tmp),
                    *spec.python,
                ]
            )
            (tmp / "requirements.txt").write_text("\n".join(spec.python) + "\n")
            shutil.rmtree(cached, ignore_errors=True)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(cached)
        shutil.copytree(cached, dest)

    def build(self, spec: ImageSpec) -> str:
        """Build ``spec`` into buildah's storage; returns the local image name."""
        local = f"localhost/aicoe/{spec.name}:{spec.key()}"
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"ctx-{spec.name}-", dir=self.cache) as tmp:
            context = Path(tmp)
            shutil.copytree(spec.source, context, dirs_exist_ok=True)
            if spec.packages:
                os.link(self.rootfs(spec), context / "rootfs.tar")
            if spec.python:
                self.wheels(spec, context / "wheels")
            for name, host_file in spec.files:
                shutil.copy2(host_file, context / name)
            self.buildah(
                "bud",
                "--isolation=chroot",
                "--layers=false",
                "--quiet",
                "-f",
                str(context / "Containerfile"),
                "-t",
                local,
                str(context),
            )
        log.info("built %s in %.0f s", local, time.monotonic() - started)
        return local

    def push(self, local: str, dest: str, *, tls_verify: bool = True) -> str:
        """Push a local image to ``dest`` (registry/repo:tag); returns its digest."""
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            digestfile = Path(tmp) / "digest"
            self.buildah(
                "push",
                f"--tls-verify={'true' if tls_verify else 'false'}",
                "--quiet",
                f"--digestfile={digestfile}",
                local,
                f"docker://{dest}",
            )
            return digestfile.read_text().strip()

    def ensure(self, name: str, registry: str) -> str:
        """``registry/aicoe/<name>@sha256:…`` of image ``name``, built and pushed only when
        the registry does not hold the tag of its current inputs."""
        spec = image_specs()[name]
        repository, tag = f"aicoe/{name}", spec.key()
        digest = registry_digest(registry, repository, tag)
        if digest is None:
            self.cache.mkdir(parents=True, exist_ok=True)
            local = self.build(spec)
            try:
                digest = self.push(local, f"{registry}/{repository}:{tag}", tls_verify=False)
            finally:
                self.buildah("rmi", "--force", local)
        return f"{registry}/{repository}@{digest}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the project's images with buildah.")
    parser.add_argument("names", nargs="+", choices=sorted(image_specs()))
    parser.add_argument("--push", metavar="REGISTRY/REPO", help="push to this repository")
    parser.add_argument("--tls-verify", default="true", choices=["true", "false"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    builder = ImageBuilder()
    for name in args.names:
        local = builder.build(image_specs()[name])
        if args.push:
            dest = args.push if len(args.names) == 1 else f"{args.push}/{name}"
            try:
                digest = builder.push(local, dest, tls_verify=args.tls_verify == "true")
            finally:
                builder.buildah("rmi", "--force", local)
            repository, _, last = dest.rpartition("/")
            print(f"{repository}/{last.split(':')[0]}@{digest}")
        else:
            print(local)


if __name__ == "__main__":
    main()
