"""Container images for the real test node, built on this machine with buildah.

Sources live in ``images/<name>/Containerfile``. A Debian root filesystem comes from
``mmdebstrap`` (the machine's own apt sources), Python packages from wheels downloaded on the
host, so nothing needs a container registry on the internet. Every image is tagged with a hash
of its inputs and stored in a local registry whose storage lives in the cache directory
(outside the work tree): the next run finds it there and builds nothing.

The hub image is the project's own ``Dockerfile`` (its ``BASE_IMAGE`` build argument set to
the local ``hub-base`` image, the project's Python dependencies from host-downloaded wheels);
the proxy image holds the host's Node.js and configurable-http-proxy from npm.

    python -m aicoe_devcluster.images notebook builder      # build into the cache
    python -m aicoe_devcluster.images builder --push REGISTRY/REPO   # for admins
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
import tomllib
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
    files: tuple[tuple[str, Path], ...] = ()  # (name in the build context, host file or folder)
    # An image built from a Dockerfile of this repository instead of images/<name>: the
    # Dockerfile, the repository paths of its build context, and the image (by spec name)
    # passed as its BASE_IMAGE argument. ``python`` wheels are then mounted at /wheels for
    # pip (PIP_NO_INDEX, PIP_FIND_LINKS build arguments).
    dockerfile: str = ""
    context: tuple[str, ...] = ()
    base: str = ""

    @property
    def source(self) -> Path:
        return IMAGES_DIR / self.name

    def inputs(self) -> list[tuple[str, Path]]:
        """(name, host file) of every file that goes into the build context."""
        found = []
        roots = (
            [(p, REPO_ROOT / p) for p in (self.dockerfile, *self.context)]
            if self.dockerfile
            else [("", self.source)]
        )
        roots += list(self.files)
        for name, root in roots:
            paths = [root] if root.is_file() else sorted(root.rglob("*"))
            for path in paths:
                if path.is_file() and "__pycache__" not in path.parts:
                    relative = path.relative_to(root).as_posix() if path != root else ""
                    found.append(("/".join(p for p in (name, relative) if p), path))
        return found

    def key(self) -> str:
        """A hash of every input; the image's tag."""
        h = hashlib.sha256()
        base = [image_specs()[self.base].key()] if self.base else []
        h.update(json.dumps([SUITE, self.packages, self.python, *base]).encode())
        for name, path in self.inputs():
            h.update(name.encode())
            h.update(path.read_bytes())
        return h.hexdigest()[:16]


def _hub_versions() -> tuple[str, ...]:
    """The notebook image runs the hub's own jupyterhub (and the demo's jupyterlab) version."""
    pins = [f"jupyterhub=={metadata.version('jupyterhub')}"]
    try:
        pins.append(f"jupyterlab=={metadata.version('jupyterlab')}")
    except metadata.PackageNotFoundError:
        pins.append("jupyterlab")
    return tuple(pins)


HUB_REQUIREMENTS = "images/hub/requirements.txt"


def _project_dependencies() -> tuple[str, ...]:
    """The hub image's Python packages: the project's dependencies, its build backend and the
    pins of ``images/hub/requirements.txt`` (authenticators, idle culler, database drivers)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    lines = (REPO_ROOT / HUB_REQUIREMENTS).read_text().splitlines()
    extra = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return (*project["build-system"]["requires"], *project["project"]["dependencies"], *extra)


def _configurable_http_proxy() -> Path:
    """node_modules holding configurable-http-proxy, as scripts/setup.sh installs it."""
    return REPO_ROOT / ".cache" / "node" / "node_modules"


def image_specs() -> dict[str, ImageSpec]:
    return {
        "pause": ImageSpec("pause", files=(("busybox", Path("/bin/busybox")),)),
        "notebook": ImageSpec(
            "notebook",
            packages=("python3", "python3-venv", "ca-certificates", "git"),
            python=_hub_versions(),
        ),
        "builder": ImageSpec("builder", packages=("buildah", "skopeo", "git", "ca-certificates")),
        "hub-base": ImageSpec(
            "hub-base",
            packages=(
                "python3",
                "python3-venv",
                "python-is-python3",
                "git",
                "tini",
                "skopeo",
                "ca-certificates",
            ),
        ),
        "hub": ImageSpec(
            "hub",
            python=_project_dependencies(),
            dockerfile="Dockerfile",
            context=("pyproject.toml", "README.md", "LICENSE", "aicoe_spawner", HUB_REQUIREMENTS),
            base="hub-base",
        ),
        "proxy": ImageSpec(
            "proxy",
            packages=("ca-certificates", "libstdc++6"),
            files=(
                ("node", Path(shutil.which("node") or "/usr/bin/node")),
                ("node_modules", _configurable_http_proxy()),
            ),
        ),
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
        base = self.build(image_specs()[spec.base]) if spec.base else ""
        try:
            with tempfile.TemporaryDirectory(prefix=f"ctx-{spec.name}-", dir=self.cache) as tmp:
                context = Path(tmp) / "context"
                for name, path in spec.inputs():
                    (context / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, context / name)
                if spec.packages:
                    os.link(self.rootfs(spec), context / "rootfs.tar")
                args = ["-f", str(context / (spec.dockerfile or "Containerfile"))]
                if spec.python and spec.dockerfile:
                    self.wheels(spec, Path(tmp) / "wheels")
                    args += [
                        f"--volume={Path(tmp) / 'wheels'}:/wheels:ro",
                        "--build-arg=PIP_NO_INDEX=1",
                        "--build-arg=PIP_FIND_LINKS=/wheels",
                    ]
                elif spec.python:
                    self.wheels(spec, context / "wheels")
                if base:
                    args.append(f"--build-arg=BASE_IMAGE={base}")
                self.buildah(
                    "bud",
                    "--isolation=chroot",
                    "--layers=false",
                    "--quiet",
                    *args,
                    "-t",
                    local,
                    str(context),
                )
        finally:
            if base:
                self.buildah("rmi", "--force", base)
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
            if ":" not in dest.rsplit("/", 1)[-1]:
                dest += f":{image_specs()[name].key()}"  # tagged with its input hash
            try:
                digest = builder.push(local, dest, tls_verify=args.tls_verify == "true")
            finally:
                builder.buildah("rmi", "--force", local)
            repository, _, last = dest.rpartition("/")
            print(f"{dest} {repository}/{last.split(':')[0]}@{digest}")
        else:
            print(local)


if __name__ == "__main__":
    main()
