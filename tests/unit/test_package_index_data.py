"""What the test cluster's package index must serve for the real repositories in
tests/data/repos (their lock pins and requirement lines), and the check that every locked
package has a file with a locked hash (pure functions of aicoe_devcluster.packages)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aicoe_devcluster.packages import (
    distribution_name,
    locked_hashes,
    locked_pins,
    missing_locked_files,
    repo_packages,
    requirement_lines,
)

REPOS = Path(__file__).resolve().parents[1] / "data" / "repos"


def test_pins_and_requirements_of_the_real_repositories():
    assert locked_pins(REPOS / "pipfile-lock") == {
        "daiquiri": "2.0.0",
        "python-json-logger": "0.1.11",
    }
    uv = locked_pins(REPOS / "uv-lock")
    assert uv["fastapi"] == "0.118.0" and uv["pydantic-core"] == "2.33.2"
    assert "uv-docker-example" not in uv  # the project itself is built, not downloaded
    assert requirement_lines(REPOS / "requirements-only") == [
        "requests==2.32.3",
        "xmltodict==0.13.0",
        "diskcache==5.6.3",
    ]
    requirements, pins, apt = repo_packages(sorted(REPOS.iterdir()))
    assert "requests==2.32.3" in requirements and "daiquiri==2.0.0" in pins
    assert apt == ["cowsay", "lolcat"]
    # the refused runtime.txt repository (python-2.7) adds nothing: its pins are never served
    python2 = requirement_lines(REPOS / "runtime-python2")
    assert python2 and not set(python2) & set(requirements)
    # runtime.txt python-3.11 (es-ude/Python-Tutorial): its uv.lock as uv export gives it on
    # Linux and Python 3.11 (41 of the lock's 118 packages: no dev group, no Windows pins)
    tutorial = locked_pins(REPOS / "runtime-uv-lock")
    assert len(tutorial) == 41 and tutorial["numpy"] == "2.2.6"
    assert not {"pywin32", "jupyter", "appnope", "colorama"} & set(tutorial)
    assert "numpy==2.2.6" in pins


def test_every_repository_file_is_byte_for_byte_with_a_provenance():
    for repo in sorted(REPOS.iterdir()):
        text = (repo / "PROVENANCE").read_text()
        assert text.startswith("Source: https://github.com/"), repo.name
        assert "Commit: " in text and "Changed: nothing." in text, repo.name
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and len(parts[1]) == 40 and (repo / parts[0]).is_file():
                data = (repo / parts[0]).read_bytes()
                blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                assert blob == parts[1], f"{repo.name}/{parts[0]} differs from its source"


def test_a_locked_package_without_a_file_of_a_locked_hash_is_reported(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    good = served / "six-1.17.0-py2.py3-none-any.whl"
    good.write_bytes(b"six")
    other = served / "attrs-25.1.0.tar.gz"
    other.write_bytes(b"attrs, another build")
    lock = {
        "_meta": {"sources": []},
        "default": {
            "six": {
                "version": "==1.17.0",
                "hashes": [f"sha256:{hashlib.sha256(b'six').hexdigest()}"],
            },
            "attrs": {"version": "==25.1.0", "hashes": ["sha256:" + "0" * 64]},
            "Missing_Pkg": {"version": "==1.0", "hashes": ["sha256:" + "1" * 64]},
        },
    }
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Pipfile.lock").write_text(json.dumps(lock))
    assert set(locked_hashes(repo)) == {"six", "attrs", "missing-pkg"}
    problems = missing_locked_files(repo, served)
    assert [p.split()[0] for p in problems] == ["attrs", "missing-pkg"]


def test_distribution_names_of_wheels_and_sdists():
    assert distribution_name("python_json_logger-2.0.7-py3-none-any.whl") == "python-json-logger"
    assert distribution_name("python-json-logger-0.1.11.tar.gz") == "python-json-logger"
    assert distribution_name("Zope.Interface-5.4.0.zip") == "zope-interface"
