"""The release artifacts: `python -m build` (an sdist, and the wheel built from it) and
`helm package`, built into a temporary directory and their file lists checked. The wheel holds
the runtime package with its templates, static files and aicoe-env.sh, the LICENSE, and
nothing of the dev cluster, the demo or the tests; cryptography (the dev cluster's
certificates) is no direct runtime dependency (the GitHub App's JWT needs it through
pyjwt[crypto])."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
import yaml
from harness.helm_chart import CHART, helm
from packaging.requirements import Requirement

import aicoe_spawner
from aicoe_devcluster.controlplane import REPO_ROOT

pytestmark = pytest.mark.integration

VERSION = aicoe_spawner.__version__
PACKAGE = REPO_ROOT / "aicoe_spawner"
DIST_INFO = f"aicoe_spawner-{VERSION}.dist-info"


def package_files() -> set[str]:
    """The files of the source package (what the wheel must hold), as wheel paths."""
    return {
        path.relative_to(REPO_ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel of this checkout (the wheel built from the sdist, as pip would)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def metadata(text: str):
    return HeaderParser().parsestr(text)


def test_wheel_holds_the_runtime_package_and_nothing_else(dist):
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"aicoe_spawner-{VERSION}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {n for n in names if not n.startswith(f"{DIST_INFO}/")}
    assert package == package_files()
    for data in (
        "aicoe_spawner/templates/options_form.html",
        "aicoe_spawner/builder/templates/builder.html",
        "aicoe_spawner/builder/static/builder.js",
        "aicoe_spawner/builder/aicoe-env.sh",
        "aicoe_spawner/builder/backends/build-step.sh",
        "aicoe_spawner/builder/backends/push-step.sh",
        "aicoe_spawner/builder/backends/keep-step.sh",
    ):
        assert data in package, data
    assert not [n for n in names if "devcluster" in n or "demo" in n or n.startswith("tests/")]
    assert {n for n in names if n.startswith(f"{DIST_INFO}/")} == {
        f"{DIST_INFO}/{n}"
        for n in ("METADATA", "WHEEL", "RECORD", "entry_points.txt", "licenses/LICENSE")
    }
    license_text = zipfile.ZipFile(wheel).read(f"{DIST_INFO}/licenses/LICENSE")
    assert license_text == (REPO_ROOT / "LICENSE").read_bytes()
    assert b"BSD 3-Clause" in license_text


def test_wheel_metadata(dist):
    (wheel,) = dist.glob("*.whl")
    archive = zipfile.ZipFile(wheel)
    meta = metadata(archive.read(f"{DIST_INFO}/METADATA").decode())
    assert meta["Name"] == "aicoe-spawner"
    assert meta["Version"] == VERSION
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta["Author"] == "aicoe-spawner contributors"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    classifiers = set(meta.get_all("Classifier"))
    assert {"Framework :: Jupyter", "Programming Language :: Python :: 3.11"} <= classifiers
    requires = meta.get_all("Requires-Dist")
    runtime = [r for r in requires if "extra ==" not in r]
    assert not [r for r in runtime if r.lower().startswith("cryptography")], runtime
    assert {Requirement(r).name for r in runtime} >= {
        "jupyterhub",
        "jupyterhub-kubespawner",
        "kubernetes-asyncio",
    }
    assert "cryptography>=42; extra == 'test'" in requires
    entry_points = archive.read(f"{DIST_INFO}/entry_points.txt").decode()
    assert "aicoe-image-builder = aicoe_spawner.builder.__main__:main" in entry_points
    # the chart's image-puller Deployment runs this command
    assert "aicoe-image-puller = aicoe_spawner.prepuller.app:main" in entry_points
    assert "aicoe = aicoe_spawner.spawner:AICoESpawner" in entry_points


def test_sdist_holds_the_package_license_and_readme(dist):
    (sdist,) = dist.glob("*.tar.gz")
    root = f"aicoe_spawner-{VERSION}"
    assert sdist.name == f"{root}.tar.gz"
    with tarfile.open(sdist) as archive:
        names = {n.removeprefix(f"{root}/") for n in archive.getnames() if n != root}
        pkg_info = metadata(archive.extractfile(f"{root}/PKG-INFO").read().decode())
    assert {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO"} <= names
    assert package_files() <= names
    assert not [n for n in names if n.startswith(("aicoe_devcluster", "tests", "helm", ".cache"))]
    assert pkg_info["Version"] == VERSION


def helmignored(relative: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(Path(relative).name, p) or fnmatch.fnmatch(relative, p.rstrip("/") + "*")
        for p in patterns
    )


def test_helm_package_holds_the_chart(tmp_path):
    helm("package", str(CHART), "--destination", str(tmp_path))
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (archive,) = tmp_path.glob("*.tgz")
    assert archive.name == f"aicoe-spawner-{chart['version']}.tgz"
    with tarfile.open(archive) as tgz:
        names = tgz.getnames()
        packaged_chart = yaml.safe_load(tgz.extractfile("aicoe-spawner/Chart.yaml"))
    assert all(n.startswith("aicoe-spawner/") for n in names), names
    packaged = {n.removeprefix("aicoe-spawner/") for n in names}
    patterns = [
        p.strip()
        for p in (CHART / ".helmignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    on_disk = {
        p.relative_to(CHART).as_posix()
        for p in CHART.rglob("*")
        if p.is_file() and not helmignored(p.relative_to(CHART).as_posix(), patterns)
    }
    assert packaged == on_disk
    assert {
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "templates/NOTES.txt",
        "templates/hub-deployment.yaml",
        "files/jupyterhub_config.py",
        # the CRDs are the builder chart's (a dependency, packaged under charts/)
        "charts/aicoe-image-builder/files/crds/imagebuilds.aicoe-spawner.io.yaml",
        "charts/aicoe-image-builder/files/crds/imagestreams.image.openshift.io.yaml",
        "charts/aicoe-image-builder/templates/builder-deployment.yaml",
    } <= packaged
    # the chart's default image is the one holding this package's version
    assert packaged_chart["appVersion"] == VERSION
    assert packaged_chart["version"] == chart["version"]
