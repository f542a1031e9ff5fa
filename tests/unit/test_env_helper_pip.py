"""The environment build's helper (aicoe-env.sh) when pip fails, run with this machine's sh
and the real pip: the build's message names the package and the cause, and says what to do.
The packages are real source distributions made here (an in-tree PEP 517 backend: no network)
and pip installs into a throwaway --target."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from aicoe_spawner.builder import env_dockerfile as generated

BACKEND = """
import os, sys
META = {meta!r}
def get_requires_for_build_wheel(config_settings=None):
    return []
def prepare_metadata_for_build_wheel(d, config_settings=None):
    if {meta_error!r}:
        print({meta_error!r}, file=sys.stderr)
        sys.exit(1)
    info = os.path.join(d, "{base}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(META)
    return "{base}.dist-info"
def build_wheel(d, config_settings=None, metadata_directory=None):
    print({build_error!r}, file=sys.stderr)
    sys.exit(1)
"""


def sdist(
    links: Path,
    name: str,
    version: str,
    requires=(),
    meta_error="",
    build_error="failed",
    requires_python="",
) -> None:
    """A source distribution whose metadata (or build) fails as a real one would."""
    base = f"{name.replace('-', '_')}-{version}"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    if requires_python:
        meta += f"Requires-Python: {requires_python}\n"
    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
        'backend-path = ["."]\n',
        "backend.py": textwrap.dedent(
            BACKEND.format(meta=meta, base=base, meta_error=meta_error, build_error=build_error)
        ),
        "PKG-INFO": meta,
    }
    with tarfile.open(links / f"{base}.tar.gz", "w:gz") as tar:
        for fname, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{fname}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def links(tmp_path: Path) -> Path:
    links = tmp_path / "links"
    links.mkdir()
    sdist(links, "needs-gcc", "1.0", build_error="error: command 'gcc' failed: No such file")
    sdist(links, "odd-build", "1.0", build_error="ValueError: the data file is missing")
    sdist(links, "old-meta", "1.0", meta_error="RuntimeError: Python 3.10+ is not supported")
    sdist(links, "pin-a", "1.0", requires=["pin-c==1.0"])
    sdist(links, "pin-b", "1.0", requires=["pin-c==2.0"])
    sdist(links, "pin-c", "1.0")
    sdist(links, "pin-c", "2.0")
    return links


def install(
    tmp_path: Path, links: Path, requirements: str, **env: str
) -> subprocess.CompletedProcess:
    (tmp_path / "requirements.txt").write_text(requirements)
    script = tmp_path / "aicoe-env"
    script.write_text(generated.HELPER_SCRIPT)
    pip_env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AICOE_HOME": str(tmp_path),
        "AICOE_BASE_IMAGE": "b:1",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(links),
        "PIP_TARGET": str(tmp_path / "target"),  # never this machine's environment
        **env,
    }
    return subprocess.run(
        ["sh", str(script), "requirements", str(tmp_path / "requirements.txt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **pip_env},
        timeout=120,
    )


def reason(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("aicoe-build-error: ")]
    return line.removeprefix("aicoe-build-error: ")


PYV = f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_a_package_that_needs_a_compiler_says_so_and_what_to_do(tmp_path, links):
    why = reason(install(tmp_path, links, "needs-gcc==1.0\n"))
    assert why == (
        f"requirements.txt: needs-gcc has no wheel for Python {PYV} and building it from its "
        "source failed (error: command 'gcc' failed: No such file): pin a version of needs-gcc "
        f"that has a wheel for Python {PYV}, or add a compiler and the headers it needs to "
        "apt.txt (e.g. build-essential)"
    )


def test_a_package_whose_build_fails_otherwise_names_its_error(tmp_path, links):
    why = reason(install(tmp_path, links, "odd-build==1.0\n"))
    assert why.startswith("requirements.txt: odd-build has no wheel for Python")
    assert "(ValueError: the data file is missing)" in why
    assert "build-essential" not in why


def test_a_package_that_cannot_be_prepared_names_it_and_the_python(tmp_path, links):
    why = reason(install(tmp_path, links, "old-meta==1.0\n"))
    assert why == (
        "requirements.txt: old-meta could not be prepared from its source (RuntimeError: "
        f"Python 3.10+ is not supported); it may not support Python {PYV}: pin a version that "
        "does"
    )


def test_pins_that_conflict_name_both_sides(tmp_path, links):
    why = reason(install(tmp_path, links, "pin-a==1.0\npin-b==1.0\n"))
    assert why == (
        "requirements.txt: the pinned versions cannot be installed together (pin-a 1.0 "
        "depends on pin-c==1.0; pin-b 1.0 depends on pin-c==2.0): change the pins so that "
        "they agree"
    )


def test_a_package_the_index_does_not_have_is_named(tmp_path, links):
    why = reason(install(tmp_path, links, "no-such-thing==9.9\n"))
    assert why.startswith("requirements.txt: No matching distribution found for no-such-thing")


def test_a_pin_whose_requires_python_excludes_the_images_python_names_both(tmp_path, links):
    """A package index that says Requires-Python (PyPI's data-requires-python): pip passes
    over the pinned version and says only "no matching distribution"; the build's message
    names the version's Requires-Python and the image's Python instead."""
    sdist(links, "new-python", "2.0")
    page = tmp_path / "simple" / "new-python"
    page.mkdir(parents=True)
    (page / "index.html").write_text(
        f'<a href="{(links / "new_python-2.0.tar.gz").as_uri()}" '
        'data-requires-python="&gt;=3.99">new_python-2.0.tar.gz</a>\n'
    )
    index = {"PIP_NO_INDEX": "", "PIP_FIND_LINKS": "", "PIP_INDEX_URL": (page.parent).as_uri()}
    why = reason(install(tmp_path, links, "new-python==2.0\n", **index))
    assert why == (
        f"requirements.txt: new-python==2.0 needs Python >=3.99 (its Requires-Python) and the "
        f"image has Python {PYV}: name a Python it supports in runtime.txt or .python-version, "
        f"or pin a version that supports Python {PYV}"
    )


def test_a_distribution_whose_metadata_excludes_the_python_names_both(tmp_path, links):
    """Found by a link without Requires-Python, pip reads it from the metadata and stops."""
    sdist(links, "meta-python", "1.0", requires_python=">=3.99")
    why = reason(install(tmp_path, links, "meta-python==1.0\n"))
    assert why == (
        f"requirements.txt: meta-python needs Python >=3.99 (its Requires-Python) and the "
        f"image has Python {PYV}: name a Python it supports in runtime.txt or .python-version, "
        f"or pin a version that supports Python {PYV}"
    )


# -- what a lock names that pip cannot hash-check ------------------------------------------

WORKING_BACKEND = """
import base64, hashlib, os, zipfile
NAME, VERSION = {name!r}, {version!r}
def _files():
    base = NAME.replace("-", "_")
    info = f"{{base}}-{{VERSION}}.dist-info"
    return base, info, {{
        f"{{base}}.py": "WHO = 'local'\\n",
        f"{{info}}/METADATA": f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n",
        f"{{info}}/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\n"
        "Tag: py3-none-any\\n",
    }}
def get_requires_for_build_wheel(config_settings=None):
    return []
def build_wheel(d, config_settings=None, metadata_directory=None):
    base, info, files = _files()
    name = f"{{base}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(d, name), "w") as z:
        record = []
        for path, text in files.items():
            z.writestr(path, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
            record.append(f"{{path}},sha256={{digest.decode()}},{{len(text.encode())}}")
        record.append(f"{{info}}/RECORD,,")
        z.writestr(f"{{info}}/RECORD", "\\n".join(record) + "\\n")
    return name
build_editable = build_wheel  # PEP 660: here the same wheel
get_requires_for_build_editable = get_requires_for_build_wheel
"""


def project(folder: Path, name: str, version: str = "1.0") -> Path:
    """A source tree pip builds and installs (an in-tree backend, no network)."""
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    (folder / "backend.py").write_text(WORKING_BACKEND.format(name=name, version=version))
    return folder


def wheel_of(folder: Path, out: Path) -> Path:
    sys.path.insert(0, str(folder))
    try:
        import backend

        name = backend.build_wheel(str(out))
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("backend", None)
    return out / name


def helper(tmp_path: Path, links: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "aicoe-env"
    script.write_text(generated.HELPER_SCRIPT)
    run_env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AICOE_HOME": str(tmp_path / "home"),
        "AICOE_BASE_IMAGE": "b:1",
        "AICOE_DEFERRED": str(tmp_path / "deferred.txt"),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(links),
        "PIP_TARGET": str(tmp_path / "target"),
        "PIP_NO_BUILD_ISOLATION": "1",
    }
    return subprocess.run(
        ["sh", str(script), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **run_env},
        timeout=180,
    )


def test_a_locks_hashed_vcs_and_local_entries_each_install_their_way(tmp_path):
    """As micropipenv exports a Pipfile.lock with an editable project (``--editable .``), a
    local path and a git dependency: the hashed pins with --require-hashes, the git one
    without a hash (said), the local ones after the repository is copied (the deferred step)."""
    links = tmp_path / "links"
    links.mkdir()
    pinned = wheel_of(project(tmp_path / "src-pinned", "pinned-pkg"), links)
    digest = hashlib.sha256(pinned.read_bytes()).hexdigest()
    vcs = project(tmp_path / "vcs", "vcs-pkg")
    subprocess.run(["git", "init", "-q", str(vcs)], check=True)
    subprocess.run(["git", "-C", str(vcs), "add", "."], check=True)
    subprocess.run(
        ["git", "-C", str(vcs), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
        check=True,
    )
    home = tmp_path / "home"
    project(home, "the-project")
    project(home / "libs" / "other", "other-local")
    exported = tmp_path / "exported.txt"
    exported.write_text(
        "#\n# Default dependencies\n#\n"
        f"pinned-pkg==1.0 \\\n    --hash=sha256:{digest}\n"
        "--editable .\n./libs/other\n"
        f"git+file://{vcs}#egg=vcs-pkg\n"
    )
    done = helper(tmp_path, links, "locked", str(exported), "Pipfile.lock")
    assert done.returncode == 0, done.stdout + done.stderr
    target = tmp_path / "target"
    assert (target / "pinned_pkg.py").exists() and (target / "vcs_pkg.py").exists()
    assert not (target / "the_project.py").exists()  # not before the repository is there
    assert f"Pipfile.lock: without a hash check (the lock has none for them): git+file://{vcs}" in (
        done.stderr
    )
    assert "Pipfile.lock: after the repository is copied: --editable . ./libs/other" in done.stderr
    assert (tmp_path / "deferred.txt").read_text() == "--editable .\n./libs/other\n"

    done = helper(tmp_path, links, "deferred", str(home / "Pipfile.lock"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "other_local.py").exists()
    assert any(p.name.startswith("the_project") for p in target.iterdir())
    assert not (tmp_path / "deferred.txt").exists()


def test_a_tampered_hash_still_fails_beside_unhashed_entries(tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    wheel_of(project(tmp_path / "src-pinned", "pinned-pkg"), links)
    (tmp_path / "home").mkdir()
    exported = tmp_path / "exported.txt"
    exported.write_text(f"pinned-pkg==1.0 --hash=sha256:{'0' * 64}\n./libs/other\n")
    why = reason(helper(tmp_path, links, "locked", str(exported), "uv.lock"))
    assert why.startswith("uv.lock: the downloaded pinned-pkg==1.0 does not match the hash")
