"""The environment build's Poetry step (aicoe-env.sh ``poetry-export``: what ``poetry``
installs), run with this machine's sh, Python and the real micropipenv on real projects'
pyproject.toml + poetry.lock: Poetry 1's [tool.poetry] tables (micropipenv's own test
project) and Poetry 2's PEP 621 [project] table (Poetry's own repository). The export is
what ``locked_install`` then installs with pip's hash checking."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from aicoe_spawner.builder import env_dockerfile as generated

DATA = Path(__file__).resolve().parents[1] / "data"
POETRY_1 = DATA / "repos" / "poetry-lock"
POETRY_2 = DATA / "poetry-2-project"


def _wheel_of_installed(dist: str, links: Path) -> None:
    """A wheel of the installed ``dist`` (the tool the step installs from the index), so the
    test needs no network."""
    d = importlib.metadata.distribution(dist)
    name = f"{dist}-{d.version}-py3-none-any.whl"
    with zipfile.ZipFile(links / name, "w") as whl:
        for f in d.files or []:
            if f.parts[0].endswith(".dist-info") and f.name in ("INSTALLER", "REQUESTED"):
                continue
            if f.suffix == ".pyc" or "__pycache__" in f.parts or f.parts[0] == "..":
                continue
            whl.write(f.locate(), str(f))


@pytest.fixture(scope="module")
def links(tmp_path_factory) -> Path:
    links = tmp_path_factory.mktemp("links")
    for dist in ("micropipenv", "pip"):  # micropipenv requires pip
        _wheel_of_installed(dist, links)
    return links


def export(tmp_path: Path, links: Path, project: Path) -> tuple[subprocess.CompletedProcess, str]:
    home = tmp_path / "home"
    shutil.copytree(project, home)
    script = tmp_path / "aicoe-env"
    script.write_text(generated.HELPER_SCRIPT)
    out = tmp_path / "exported.txt"
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AICOE_HOME": str(home),
        "AICOE_BASE_IMAGE": "b:1",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(links),
    }
    done = subprocess.run(
        ["sh", str(script), "poetry-export", str(home / "poetry.lock"), str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env},
        timeout=120,
    )
    return done, out.read_text() if out.exists() else ""


def requirements(text: str) -> dict[str, str]:
    """name -> the whole (joined) requirement line of an exported requirements file."""
    out, line = {}, ""
    for raw in text.splitlines():
        line += raw.rstrip("\\").strip() + " "
        if raw.endswith("\\"):
            continue
        entry, line = line.strip(), ""
        if not entry or entry.startswith(("#", "-")):
            continue
        name = entry.split("==")[0].split(" @ ")[0].split("[")[0].split(";")[0].strip()
        if entry.startswith("git+"):
            name = entry.rsplit("#egg=", 1)[-1]
        out[name.lower().replace("_", "-")] = entry
    return out


def test_a_poetry_1_lock_exports_its_main_pins_with_their_hashes(tmp_path, links):
    done, text = export(tmp_path, links, POETRY_1)
    assert done.returncode == 0, done.stdout + done.stderr
    got = requirements(text)
    assert set(got) == {"daiquiri", "python-json-logger"}
    lock = tomllib.loads((POETRY_1 / "poetry.lock").read_text())
    for name, files in lock["metadata"]["files"].items():  # lock 1.0: the files in [metadata]
        assert got[name].startswith(f"{name}=={_version(lock, name)}")
        assert files
        for f in files:
            assert f"--hash={f['hash']}" in got[name]


def _version(lock: dict, name: str) -> str:
    return next(p["version"] for p in lock["package"] if p["name"] == name)


def test_a_poetry_2_project_exports_exactly_its_main_group(tmp_path, links):
    """Poetry's own pyproject.toml names its dependencies in [project] (PEP 621), which
    micropipenv alone does not read: the step names them for it. The export is every locked
    package of the main group (the lock's own ``groups``), none of dev/test/typing, the git
    dependency as its URL, the rest at their locked versions with every locked file's hash."""
    done, text = export(tmp_path, links, POETRY_2)
    assert done.returncode == 0, done.stdout + done.stderr
    got = requirements(text)
    lock = tomllib.loads((POETRY_2 / "poetry.lock").read_text())
    main = {p["name"]: p for p in lock["package"] if "main" in p.get("groups", [])}
    assert set(got) == set(main)
    assert "pytest" not in got and "mypy" not in got and "pre-commit" not in got
    assert got["poetry-core"].startswith("git+https://github.com/python-poetry/poetry-core.git")
    for name, package in main.items():
        if package.get("source", {}).get("type") == "git":
            continue
        pin = re.sub(r"\[[^]]*\]", "", got[name])  # cachecontrol[filecache]==…: the extra
        assert pin.startswith(f"{name}=={package['version']}"), got[name]
        for f in package["files"]:
            assert f"--hash={f['hash']}" in got[name], (name, f["file"])


def test_a_poetry_lock_out_of_date_with_pyproject_is_refused_saying_what_to_run(tmp_path, links):
    stale = tmp_path / "stale"
    shutil.copytree(POETRY_2, stale)
    pyproject = stale / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace("dependencies = [\n", 'dependencies = [\n    "rich",\n', 1)
    )
    done, _ = export(tmp_path, links, stale)
    assert done.returncode == 1
    assert (
        "aicoe-build-error: poetry.lock is out of date with pyproject.toml (its content-hash "
        "differs): run `poetry lock` and commit poetry.lock"
    ) in done.stderr


@pytest.mark.parametrize("project", [POETRY_1, POETRY_2], ids=["poetry-1", "poetry-2"])
def test_the_poetry_projects_are_byte_for_byte_their_sources(project):
    text = (project / "PROVENANCE").read_text()
    assert text.startswith("Source: https://github.com/") and "Changed: nothing." in text
    listed = dict(line.split() for line in text.splitlines() if line.startswith("  "))
    for name in ("pyproject.toml", "poetry.lock"):
        data = (project / name).read_bytes()
        assert listed[name] == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
