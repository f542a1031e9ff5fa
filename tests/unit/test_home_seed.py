"""The home-folder rule: the pod-shaping function (which pods get the ``seed-home`` init
container, and with what) and its script, run on this machine as the notebook user against an
image home and a volume folder: first start copies, a second start keeps the user's edits
and deletions, a new image brings back only what the user does not have."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from aicoe_spawner.home_seed import (
    SEED_CONTAINER,
    SEED_MOUNT,
    SEED_SCRIPT,
    marker_name,
    seed_init_container,
)

D = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
IMAGE = f"registry.local/ns/nb@{D}"
SECURITY = {"runAsUser": 1000, "runAsGroup": 100, "allowPrivilegeEscalation": False}
RESOURCES = {"limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"cpu": "500m"}}


def pod_spec(*mounts: dict, init: list | None = None) -> dict:
    notebook = {
        "name": "notebook",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "securityContext": SECURITY,
        "resources": RESOURCES,
        "env": [{"name": "JUPYTERHUB_API_TOKEN", "value": "secret"}],
        "volumeMounts": list(mounts),
    }
    return {"containers": [notebook], "initContainers": init or []}


def test_a_volume_at_the_home_gets_the_seed_container_with_the_notebooks_bounds():
    spec = pod_spec(
        {"name": "home", "mountPath": "/home/jovyan/", "subPath": "alice"},
        {"name": "data", "mountPath": "/data"},
    )
    init = seed_init_container(spec, "/home/jovyan")
    assert init["name"] == SEED_CONTAINER
    assert init["image"] == IMAGE  # the same digest
    assert init["securityContext"] == SECURITY and init["resources"] == RESOURCES
    assert init["imagePullPolicy"] == "IfNotPresent"
    assert init["volumeMounts"] == [{"name": "home", "subPath": "alice", "mountPath": SEED_MOUNT}]
    assert init["command"][:3] == ["/bin/sh", "-c", SEED_SCRIPT]
    assert init["command"][4:] == ["/home/jovyan", SEED_MOUNT, "sha256-" + "1" * 64]
    assert "env" not in init  # no token, no user variables: it only copies files


def test_no_seed_without_a_writable_volume_at_the_home():
    assert seed_init_container(pod_spec(), "/home/jovyan") is None
    assert (
        seed_init_container(pod_spec({"name": "d", "mountPath": "/data"}), "/home/jovyan") is None
    )
    ro = {"name": "home", "mountPath": "/home/jovyan", "readOnly": True}
    assert seed_init_container(pod_spec(ro), "/home/jovyan") is None
    mount = {"name": "home", "mountPath": "/home/jovyan"}
    assert seed_init_container(pod_spec(mount), "/opt/app-root/src") is None
    assert seed_init_container(pod_spec(mount), "") is None
    already = pod_spec(mount, init=[{"name": SEED_CONTAINER}])
    assert seed_init_container(already, "/home/jovyan") is None


def test_the_marker_is_per_image_digest():
    assert marker_name(IMAGE) == "sha256-" + "1" * 64
    assert marker_name("nb:latest").startswith("ref-")
    assert marker_name("nb:latest") != marker_name("nb:v2")


def seed(image_home: Path, volume: Path, image: str) -> str:
    proc = subprocess.run(
        [
            *("setpriv", "--reuid=1000", "--regid=100", "--clear-groups", "--", "/bin/sh", "-c"),
            *(SEED_SCRIPT, SEED_CONTAINER, str(image_home), str(volume), marker_name(image)),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_the_seed_copies_once_per_image_and_never_overwrites(open_tmp):
    image_home = open_tmp / "image-home"
    (image_home / "notebooks").mkdir(parents=True)
    (image_home / "hello.ipynb").write_text("from the image")
    (image_home / "notebooks" / "analysis.ipynb").write_text("analysis v1")
    (image_home / ".bashrc").write_text("# skel")
    (image_home / "link").symlink_to("hello.ipynb")
    (image_home / "hello.ipynb").chmod(0o640)
    volume = open_tmp / "volume"
    volume.mkdir()
    (volume / "mine.txt").write_text("the user's")
    (volume / ".bashrc").write_text("# the user's own")
    for path in (image_home, *image_home.rglob("*"), volume, *volume.rglob("*")):
        os.chown(path, 1000, 100, follow_symlinks=False)

    out = seed(image_home, volume, IMAGE)  # first start
    assert "copied" in out
    assert (volume / "hello.ipynb").read_text() == "from the image"
    assert (volume / "hello.ipynb").stat().st_mode & 0o777 == 0o640
    assert (volume / "notebooks" / "analysis.ipynb").read_text() == "analysis v1"
    assert os.readlink(volume / "link") == "hello.ipynb"
    assert (volume / "mine.txt").read_text() == "the user's"
    assert (volume / ".bashrc").read_text() == "# the user's own"  # existing: kept
    assert (volume / ".aicoe-spawner" / "seeded" / marker_name(IMAGE)).exists()

    (volume / "hello.ipynb").write_text("edited by the user")  # the user works
    (volume / "notebooks" / "analysis.ipynb").unlink()
    assert "nothing copied" in seed(image_home, volume, IMAGE)  # second start
    assert (volume / "hello.ipynb").read_text() == "edited by the user"
    assert not (volume / "notebooks" / "analysis.ipynb").exists()

    (image_home / "new.ipynb").write_text("added by the rebuild")  # a rebuilt image
    seed(image_home, volume, f"registry.local/ns/nb@{D2}")
    assert (volume / "new.ipynb").read_text() == "added by the rebuild"
    assert (volume / "hello.ipynb").read_text() == "edited by the user"
    assert (volume / "notebooks" / "analysis.ipynb").read_text() == "analysis v1"


def test_a_file_that_cannot_be_copied_does_not_stop_the_server(open_tmp):
    image_home = open_tmp / "image-home"
    image_home.mkdir()
    (image_home / "secret").write_text("root's")
    (image_home / "secret").chmod(0o600)  # unreadable for the notebook user
    (image_home / "ok.txt").write_text("ok")
    volume = open_tmp / "volume"
    volume.mkdir()
    os.chown(volume, 1000, 100)
    out = seed(image_home, volume, IMAGE)
    assert "not copied: secret" in out
    assert (volume / "ok.txt").read_text() == "ok"
