"""The node's image store (``build_node_image_store``) with this machine's buildah: the keep
step (KEEP_SCRIPT, run by /bin/sh as in the build pod) puts the new environment image of the
build step's OCI layout into the store under its name; a build step that mounts the store
read-only as an additional image store finds it there by that name without pulling; a name
the cache repository did not give is not kept. The build pod's own use of it runs on the
real node (tests/node/test_build_and_launch.py, benchmarks/bench_build.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from aicoe_spawner.builder.backends.kubernetes_job import KEEP_SCRIPT

pytestmark = pytest.mark.integration

CACHE = "registry.test/org/stream-cache"
KEY = "0123456789abcdef0123456789abcdef01234567"


def buildah(storage: Path, *args: str, extra: tuple[str, ...] = ()) -> str:
    done = subprocess.run(
        [
            "buildah",
            "--storage-driver",
            "overlay",
            "--root",
            str(storage / "root"),
            "--runroot",
            str(storage / "run"),
            *extra,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A build step's workspace: an OCI layout whose ``env`` image is one small layer."""
    storage = tmp_path / "build-storage"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "env.txt").write_text("the environment\n")
    ctr = buildah(storage, "from", "scratch")
    buildah(storage, "copy", ctr, str(tmp_path / "ctx" / "env.txt"), "/env.txt")
    buildah(storage, "commit", "-q", ctr, "aicoe-build/env")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    buildah(storage, "push", "-q", "aicoe-build/env", f"oci:{workspace}/layout:env")
    return workspace


def keep(tmp_path: Path, workspace: Path, env_image: str | None) -> tuple[Path, str]:
    if env_image is not None:
        (workspace / "env-image").write_text(env_image + "\n")
    store = tmp_path / "node-images"
    push_storage = tmp_path / "push-storage"
    push_storage.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "WORKSPACE": str(workspace),
        "PUSH_STORAGE": str(push_storage),
        "CACHE_REPO": CACHE,
        "NODE_IMAGES": str(store),
    }
    done = subprocess.run(
        ["sh", "-c", KEEP_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr  # never fails the pod
    return store, done.stdout


def test_a_new_environment_image_is_kept_and_found_read_only_by_name(tmp_path, workspace):
    image = f"{CACHE}:env-{KEY}"
    store, out = keep(tmp_path, workspace, image)
    assert f"==> the node's image store keeps {image}" in out
    assert not (store / "aicoe-keeping" / f"env-{KEY}").exists()  # the import's mark is gone
    # a build step: its own empty storage, the store read-only beside it (a bind mount)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    subprocess.run(["mount", "--bind", str(store), str(readonly)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(readonly)], check=True)
        reader = tmp_path / "reader"
        found = buildah(
            reader,
            "inspect",
            "--type",
            "image",
            "--format",
            "{{.FromImageID}}",
            image,
            extra=("--storage-opt", f"overlay.imagestore={readonly}"),
        )
        assert len(found) == 64
        assert not (reader / "root" / "overlay-images" / found).exists()  # not copied
        # and without the store, the same storage has no such image
        with pytest.raises(AssertionError):
            buildah(reader, "inspect", "--type", "image", image)
    finally:
        subprocess.run(["umount", str(readonly)], check=False)


@pytest.mark.parametrize(
    "name",
    [
        "evil.example/other:env-" + KEY,  # not the cache repository
        f"{CACHE}:env-../../x",
        f"{CACHE}:latest",
    ],
)
def test_a_name_the_cache_did_not_give_is_not_kept(tmp_path, workspace, name):
    store, out = keep(tmp_path, workspace, name)
    assert "==> ignoring an environment image name" in out
    assert not (store / "overlay-images").exists()


def test_without_a_new_environment_image_nothing_is_kept(tmp_path, workspace):
    store, out = keep(tmp_path, workspace, None)
    assert out == "" and not store.exists()
