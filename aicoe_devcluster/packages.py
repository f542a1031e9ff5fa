"""Package sources for build pods on the real test node: a PEP 503 Python index and a Debian
repository, both served from this machine on the node IP, so that builds install packages
without reaching anything outside the test cluster.

- ``PackageIndex``: pypiserver (a real index server, fallback to pypi.org disabled) over
  wheels (and the sdists a lock pins) downloaded on the host for the notebook image's Python
  3.11 on x86_64 Linux. Downloads are cached under ``cache_dir()/pypi/<hash of the list>``.
- ``DebianRepo``: ``.deb`` files fetched with ``apt-get download`` (the machine's apt sources,
  the same Debian release as the images) with the dependencies the notebook image lacks,
  indexed with ``dpkg-scanpackages`` and served over HTTP. ``apt_line`` is the sources.list
  line for it (``trusted=yes``: the repository is unsigned).

Both have ``start()``/``stop()`` like ``GitServer``. Test and demo use only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterable, Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .controlplane import ControlPlaneError, free_port
from .images import SUITE, ImageBuilder, cache_dir, image_specs, run

log = logging.getLogger("aicoe.devcluster.packages")

# The installers a build uses, and the build backends an sdist or a project needs.
BUILD_TOOLS = ("micropipenv", "toml", "uv", "pip", "setuptools", "wheel", "hatchling", "editables")
PLATFORM_ARGS = (
    "--only-binary=:all:",
    "--python-version=3.11",
    "--implementation=cp",
    "--abi=cp311",
    "--abi=abi3",
    "--abi=none",
    "--platform=manylinux2014_x86_64",
    "--platform=manylinux_2_28_x86_64",
    "--platform=linux_x86_64",
    "--platform=any",
)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


# -- what a repository pins (to fill the test index; installs use the ecosystem's tools) -------


def locked_pins(repo: Path) -> dict[str, str]:
    """``{name: version}`` pinned by the lock files of ``repo``: ``Pipfile.lock`` (default and
    develop), ``poetry.lock`` (its index packages) and ``uv.lock`` (its registry packages)."""
    pins: dict[str, str] = {}
    lock = repo / "Pipfile.lock"
    if lock.is_file():
        data = json.loads(lock.read_text())
        for section in ("default", "develop"):
            for name, entry in (data.get(section) or {}).items():
                version = str(entry.get("version", ""))
                if version.startswith("=="):
                    pins[normalize(name)] = version[2:]
    poetry_lock = repo / "poetry.lock"
    if poetry_lock.is_file():  # every locked package (dev groups too): the index may have more
        for package in tomllib.loads(poetry_lock.read_text()).get("package", []):
            if (package.get("source") or {}).get("type") in (None, "legacy"):
                pins[normalize(package["name"])] = package["version"]
    uv_lock = repo / "uv.lock"
    if uv_lock.is_file():
        for package in uv_installed(tomllib.loads(uv_lock.read_text())):
            if "registry" in (package.get("source") or {}):
                pins[normalize(package["name"])] = package["version"]
    return pins


#: The notebook image's platform, for the markers of a lock's dependencies.
MARKER_ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def uv_installed(lock: dict) -> list[dict]:
    """The packages of a ``uv.lock`` that ``uv export --no-dev`` gives on the notebook image's
    platform: from the project (a ``virtual``/``editable`` source) along its dependencies and
    the extras they name, whose markers hold for Linux and Python 3.11 (so a Windows-only
    pin such as pywin32 is not fetched)."""
    from packaging.markers import Marker

    packages = {normalize(p["name"]): p for p in lock.get("package", [])}
    todo = [
        (name, ())
        for name, p in packages.items()
        if {"virtual", "editable"} & set(p.get("source") or {})
    ]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in packages:
            continue
        seen.add((name, extras))
        package = packages[name]
        deps = list(package.get("dependencies", []))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        for dep in deps:
            marker = dep.get("marker")
            if marker and not Marker(marker).evaluate({**MARKER_ENVIRONMENT, "extra": ""}):
                continue
            todo.append((normalize(dep["name"]), tuple(sorted(dep.get("extra", [])))))
    names = {name for name, _ in seen}
    return [packages[n] for n in sorted(names)]


def requirement_lines(repo: Path) -> list[str]:
    """The requirement lines of ``repo``'s ``requirements.txt`` (comments, options, ``-r``
    includes left out)."""
    path = repo / "requirements.txt"
    if not path.is_file():
        return []
    lines = (line.split(" #", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def locked_hashes(repo: Path) -> dict[str, set[str]]:
    """``{name: {sha256, ...}}`` of the files each package of the repository's locks may be."""
    hashes: dict[str, set[str]] = {}
    lock = repo / "Pipfile.lock"
    if lock.is_file():
        data = json.loads(lock.read_text())
        for section in ("default", "develop"):
            for name, entry in (data.get(section) or {}).items():
                found = {h.removeprefix("sha256:") for h in entry.get("hashes", [])}
                hashes.setdefault(normalize(name), set()).update(found)
    uv_lock = repo / "uv.lock"
    if uv_lock.is_file():
        for package in uv_installed(tomllib.loads(uv_lock.read_text())):
            files = [package.get("sdist") or {}, *(package.get("wheels") or [])]
            found = {f["hash"].removeprefix("sha256:") for f in files if "hash" in f}
            if found:
                hashes.setdefault(normalize(package["name"]), set()).update(found)
    return hashes


def distribution_name(filename: str) -> str:
    """The normalized project name of a wheel or sdist file name."""
    if filename.endswith(".whl"):
        return normalize(filename.split("-", 1)[0])
    stem = re.sub(r"\.(tar\.gz|zip|tar\.bz2)$", "", filename)
    return normalize(stem.rsplit("-", 1)[0])


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def missing_locked_files(repo: Path, packages: Path) -> list[str]:
    """Packages of ``repo``'s locks for which ``packages`` holds no file with a locked hash
    (empty when the index serves every pinned file the lock allows)."""
    have: dict[str, set[str]] = {}
    for path in packages.iterdir():
        if path.is_file() and not path.name.startswith("."):
            have.setdefault(distribution_name(path.name), set()).add(sha256_of(path))
    return sorted(
        f"{name} (locked hashes {', '.join(sorted(wanted)[:2])}...)"
        for name, wanted in locked_hashes(repo).items()
        if not wanted & have.get(name, set())
    )


def repo_packages(repos: Iterable[Path]) -> tuple[list[str], list[str], list[str]]:
    """(requirements, pins, Debian packages) that builds of ``repos`` install: the lines of
    their requirements.txt, the pins of their locks (``name==version``) and their apt.txt
    lines. A repository whose ``runtime.txt`` asks for another Python than the notebook
    image's 3.11 (refused by the builder) adds nothing."""
    requirements: set[str] = set()
    pins: set[str] = set()
    apt: set[str] = set()
    for repo in repos:
        runtime = repo / "runtime.txt"
        if runtime.exists() and not re.fullmatch(
            r"python-3\.11(\.\d+)?", runtime.read_text().strip()
        ):
            continue
        requirements.update(requirement_lines(repo))
        pins.update(f"{name}=={version}" for name, version in locked_pins(repo).items())
        if (repo / "apt.txt").is_file():
            for line in (repo / "apt.txt").read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    apt.add(line.strip())
    return sorted(requirements), sorted(pins), sorted(apt)


# -- the Python index ----------------------------------------------------------------------------


def download_packages(
    requirements: Sequence[str], pins: Sequence[str] = (), cache: Path | None = None
) -> Path:
    """A folder of wheels for ``requirements`` (with their dependencies) and for ``pins``
    (``name==version`` of a lock, without dependencies: a lock lists them all; a pin without
    a wheel for Python 3.11 on x86_64 Linux comes as its source archive), downloaded once
    per list, then reused from the cache."""
    cache = cache or cache_dir()
    folder = cache / "pypi" / _key(sorted(requirements), sorted(pins))
    if (folder / ".complete").exists():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="pypi-", dir=cache))
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-input", "--dest", str(tmp)]
    if requirements:
        run([*pip, *PLATFORM_ARGS, *requirements])
    if pins:
        try:
            run([*pip, "--no-deps", *PLATFORM_ARGS, *pins])
        except RuntimeError:  # some pin has no such wheel: one by one, else its sdist
            for pin in pins:
                try:
                    run([*pip, "--no-deps", *PLATFORM_ARGS, pin])
                except RuntimeError:
                    run([*pip, "--no-deps", "--no-binary=:all:", pin])
    (tmp / ".requirements.json").write_text(json.dumps([list(requirements), list(pins)]))
    (tmp / ".complete").touch()
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(folder)
    count = sum(1 for p in folder.iterdir() if not p.name.startswith("."))
    log.info("downloaded %d packages in %.0f s", count, time.monotonic() - started)
    return folder


class PackageIndex:
    """pypiserver serving ``packages`` (a folder of wheels/sdists) at ``http://address:port/``:
    ``pip_url`` is its PEP 503 simple index (``PIP_INDEX_URL`` / ``UV_INDEX_URL``)."""

    def __init__(self, packages: Path, address: str = "127.0.0.1", port: int = 0) -> None:
        self.packages = Path(packages)
        self.address = address
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="pypiserver-", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def pip_url(self) -> str:
        return f"{self.base_url}/simple/"

    @property
    def trusted_host(self) -> str:
        """For pip's ``--trusted-host`` (plain HTTP)."""
        return self.address

    def start(self, timeout: float = 30) -> PackageIndex:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pypiserver",
                    "run",
                    f"--host={self.address}",
                    f"--port={self.port}",
                    "--disable-fallback",  # never redirect a missing package to pypi.org
                    "--hash-algo=sha256",  # links carry #sha256= for hash-checking installers
                    "--backend=simple-dir",
                    "--server=wsgiref",
                    str(self.packages),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ControlPlaneError(
                    f"pypiserver exited with {self.proc.returncode}:\n{self.log.read_text()}"
                )
            if _http_ok(self.pip_url):
                return self
            time.sleep(0.2)
        self.stop()
        raise ControlPlaneError(f"pypiserver not answering at {self.pip_url} in {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


# -- the Debian repository -------------------------------------------------------------------


def image_packages(image: str = "notebook") -> set[str]:
    """Debian packages installed in one of the project's images (from its root filesystem)."""
    tar_path = ImageBuilder().rootfs(image_specs()[image])
    with tarfile.open(tar_path) as tar:
        for name in ("./var/lib/dpkg/status", "var/lib/dpkg/status"):
            try:
                member = tar.extractfile(name)
            except KeyError:
                continue
            if member is not None:
                text = member.read().decode(errors="replace")
                return set(re.findall(r"^Package: (\S+)$", text, re.M))
    raise ControlPlaneError(f"no dpkg status in {tar_path}")


def dependency_closure(packages: Iterable[str]) -> set[str]:
    """``packages`` and everything they depend on (Depends and Pre-Depends, recursively, as
    the machine's apt knows them), virtual packages left out."""
    proc = run(
        [
            "apt-cache",
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            *packages,
        ]
    )
    found = set()
    for line in proc.stdout.splitlines():
        # "name", "  Depends: name", "  |Depends: <virtual>", "    provider"
        match = re.fullmatch(r"\s*(?:\|?(?:Pre)?Depends:\s*)?(\S+)", line)
        if match and not match[1].startswith("<"):
            found.add(match[1].split(":", 1)[0])
    return found


class DebianRepo:
    """A flat Debian repository of ``packages`` (and their dependencies that ``base_image``
    does not have) at ``http://address:port/``, indexed by dpkg-scanpackages."""

    def __init__(
        self,
        packages: Sequence[str],
        address: str = "127.0.0.1",
        port: int = 0,
        base_image: str = "notebook",
        cache: Path | None = None,
    ) -> None:
        self.packages = tuple(packages)
        self.address = address
        self.base_image = base_image
        self.cache = cache or cache_dir()
        self.folder: Path | None = None
        self.server: ThreadingHTTPServer | None = None
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    @property
    def apt_line(self) -> str:
        """The sources.list line for this repository (unsigned, hence ``trusted=yes``)."""
        return f"deb [trusted=yes] {self.base_url} ./"

    def prepare(self) -> Path:
        """The repository folder (``*.deb`` + ``Packages``, ``Packages.gz``), built once."""
        folder = self.cache / "apt" / _key(SUITE, self.base_image, sorted(self.packages))
        if not (folder / "Packages.gz").exists():
            started = time.monotonic()
            installed = image_packages(self.base_image)
            wanted = sorted(dependency_closure(self.packages) - installed)
            tmp = Path(tempfile.mkdtemp(prefix="apt-", dir=self.cache))
            run(["apt-get", "download", "-q", *wanted], cwd=tmp)
            index = run(["dpkg-scanpackages", "--multiversion", ".", "/dev/null"], cwd=tmp)
            (tmp / "Packages").write_text(index.stdout)
            run(["gzip", "-9kn", "Packages"], cwd=tmp)
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(folder)
            log.info("Debian repository of %s in %.0f s", wanted, time.monotonic() - started)
        self.folder = folder
        return folder

    def start(self) -> DebianRepo:
        folder = self.prepare()

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((self.address, self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class PackageSources:
    """The test cluster's ``PackageIndex`` and ``DebianRepo`` on ``address`` (the node IP),
    with what builds of ``repos`` install (``repo_packages``) plus ``BUILD_TOOLS`` and
    ``extra_apt`` packages.

    - ``pip_url``: the builder's ``package_index_url`` (PIP_INDEX_URL / UV_INDEX_URL);
    - ``trusted_host``: pip's ``--trusted-host`` (plain HTTP);
    - ``apt_line``: one line of the builder's ``apt_sources``.
    """

    def __init__(self, repos: Iterable[Path], address: str, extra_apt: Sequence[str] = ()) -> None:
        self.repos = [Path(r) for r in repos]
        requirements, pins, apt = repo_packages(self.repos)
        self.requirements = [*BUILD_TOOLS, *requirements]
        self.pins = pins
        self.apt_packages = sorted({*apt, *extra_apt})
        self.address = address
        self.index: PackageIndex | None = None
        self.apt = DebianRepo(self.apt_packages, address)

    def start(self) -> PackageSources:
        folder = download_packages(self.requirements, self.pins)
        try:
            self.index = PackageIndex(folder, self.address).start()
            self.apt.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.index is not None:
            self.index.stop()
        self.apt.stop()

    @property
    def packages_dir(self) -> Path:
        assert self.index is not None, "start() first"
        return self.index.packages

    @property
    def pip_url(self) -> str:
        assert self.index is not None, "start() first"
        return self.index.pip_url

    @property
    def trusted_host(self) -> str:
        return self.address

    @property
    def apt_line(self) -> str:
        return self.apt.apt_line
