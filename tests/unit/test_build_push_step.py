"""The push step's program (PUSH_SCRIPT) run with this machine's sh: which images of the build
step's OCI layout go where. ``skopeo`` is a recording stand-in on PATH (it writes the digest
file as skopeo does); the real skopeo pushes on the real node (tests/node)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from aicoe_spawner.builder.backends.kubernetes_job import PUSH_SCRIPT

CACHE = "registry.test/org/stream-cache"
KEY = "0123456789abcdef0123456789abcdef01234567"
FAKE_SKOPEO = """#!/bin/sh
printf '%s\\n' "$*" >> "$CALLS"
while [ $# -gt 0 ]; do
  case "$1" in --digestfile) printf 'sha256:%064d' 7 > "$2"; shift ;; esac
  shift
done
"""


def push(tmp_path: Path, env_image: str | None, **env: str) -> tuple[list[str], dict]:
    workspace = tmp_path / "workspace"
    (workspace / "layout").mkdir(parents=True)
    if env_image is not None:
        (workspace / "env-image").write_text(env_image)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "skopeo").write_text(FAKE_SKOPEO)
    (bin_dir / "skopeo").chmod(0o755)
    storage = tmp_path / "push-storage"
    storage.mkdir()
    calls = tmp_path / "calls"
    base = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "WORKSPACE": str(workspace),
        "PUSH_STORAGE": str(storage),
        "OUTPUT_IMAGE": "registry.test/org/stream:v1",
        "EXTRA_IMAGES": "",
        "TLS_VERIFY": "false",
        "TERMINATION_LOG": str(tmp_path / "termination"),
    }
    done = subprocess.run(
        ["sh", "-c", PUSH_SCRIPT], env={**base, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines() if calls.exists() else []
    return lines, json.loads((tmp_path / "termination").read_text())


def test_the_image_goes_from_the_layout_to_the_registry_with_its_digest(tmp_path):
    calls, term = push(tmp_path, None, EXTRA_IMAGES="registry.test/org/stream:1.2.3")
    workspace = tmp_path / "workspace"
    assert calls[0].endswith(f"oci:{workspace}/layout:image docker://registry.test/org/stream:v1")
    assert "--dest-tls-verify=false" in calls[0] and "--digestfile" in calls[0]
    assert calls[1].endswith("docker://registry.test/org/stream:1.2.3")
    assert len(calls) == 2
    assert term == {"digest": "sha256:" + "0" * 63 + "7"}


def test_a_new_environment_image_is_kept_in_the_cache_repository(tmp_path):
    calls, _ = push(tmp_path, f"{CACHE}:env-{KEY}\n", CACHE_REPO=CACHE)
    assert calls[-1].endswith(f"layout:env docker://{CACHE}:env-{KEY}")
    assert len(calls) == 2


@pytest.mark.parametrize(
    "written",
    [
        f"registry.test/other/stream:env-{KEY}",  # another repository
        f"{CACHE}:latest",
        f"{CACHE}:env-{KEY[:-1]}Z",  # not a key
        f"{CACHE}:env-",
        f"{CACHE}:env-{KEY} docker://evil/x",
    ],
)
def test_an_environment_image_name_the_cache_did_not_give_is_not_pushed(tmp_path, written):
    """The build step ran the repository's content: the name it leaves is checked."""
    calls, _ = push(tmp_path, written, CACHE_REPO=CACHE)
    assert len(calls) == 1 and calls[0].endswith("docker://registry.test/org/stream:v1")


def test_without_a_cache_repository_no_environment_image_is_pushed(tmp_path):
    calls, _ = push(tmp_path, f"{CACHE}:env-{KEY}")
    assert len(calls) == 1


def test_the_destinations_authfile_is_passed_to_every_push(tmp_path):
    """The mapped destination's push Secret (REGISTRY_AUTH_FILE, mounted in this step only)
    reaches skopeo for the image, its extra tags and the environment image."""
    auth = "/var/run/secrets/push/.dockerconfigjson"
    calls, _ = push(
        tmp_path,
        f"{CACHE}:env-{KEY}",
        CACHE_REPO=CACHE,
        EXTRA_IMAGES="registry.test/org/stream:latest",
        REGISTRY_AUTH_FILE=auth,
    )
    assert len(calls) == 3
    assert all(f"--dest-authfile {auth} " in call for call in calls), calls


def test_without_a_push_secret_no_authfile_is_passed(tmp_path):
    calls, _ = push(tmp_path, None)
    assert calls and not [c for c in calls if "authfile" in c]
