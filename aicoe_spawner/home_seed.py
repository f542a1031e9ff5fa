"""The home-folder rule: a persistent home volume gets the image's home files, never
overwriting the user's.

Built images keep the repository's files in the notebook user's home (``/home/jovyan``). A
volume mounted there (the chart's per-user claim) hides them. So when the pod mounts a volume
at :attr:`home_path`, an init container ``seed-home`` runs the SAME image (same digest, same
securityContext and resources as the notebook container) with that volume mounted at
:data:`SEED_MOUNT`, and copies the image's home into it: every file or folder that does not
exist in the volume is copied (symlinks as links, modes and times kept); anything that exists
is left as it is, also when it differs. This happens once per image digest: a marker
``.aicoe-spawner/seeded/<digest>`` in the home records it, so a file the user deleted comes
back only with a new image (a rebuild), never on every start. A seed that cannot copy a file
says so in the init container's log and the server starts anyway.

:func:`seed_init_container` is pure (plain pod dicts, as the API server reads them); the
mixin applies it to KubeSpawner's pod manifest."""

from __future__ import annotations

import hashlib
import posixpath
from typing import Any

SEED_MOUNT = "/var/run/aicoe-spawner/home"
SEED_CONTAINER = "seed-home"

# $1 the image's home (the image's own files), $2 the volume, $3 the marker's name.
SEED_SCRIPT = r"""set -u
src=$1 dst=$2 mark="$2/.aicoe-spawner/seeded/$3"
if [ -e "$mark" ]; then
  echo "the home folder has this image's files already ($3): nothing copied"; exit 0
fi
if [ -d "$src" ]; then
  cd "$src" || exit 0
  if command -v find >/dev/null 2>&1; then
    # pre-order: a folder missing in the volume is copied whole, its entries then exist
    find . -mindepth 1 -exec sh -c '
      dst=$1; shift
      for p do
        if [ ! -e "$dst/$p" ] && [ ! -L "$dst/$p" ]; then
          cp -pPR "$p" "$dst/$p" 2>/dev/null || echo "not copied: ${p#./}" >&2
        fi
      done' seed-home "$dst" {} + || true
  else
    cp -pPRn "$src/." "$dst/" || true
  fi
fi
mkdir -p "$dst/.aicoe-spawner/seeded" && : > "$mark" || echo "cannot write $mark" >&2
echo "copied the image's $src into the home volume; files already there were kept"
"""


def marker_name(image: str) -> str:
    """The marker file's name for ``image``: ``sha256-<hex>`` of a digest reference, else a
    hash of the reference."""
    _, _, digest = image.rpartition("@")
    if digest.startswith("sha256:") and len(digest) == 71:
        return digest.replace(":", "-")
    return "ref-" + hashlib.sha256(image.encode()).hexdigest()[:32]


def _norm(path: str) -> str:
    return posixpath.normpath(path) if path else ""


def seed_init_container(pod_spec: dict[str, Any], home_path: str) -> dict[str, Any] | None:
    """The ``seed-home`` init container for ``pod_spec`` (camelCase, as sent to the API
    server), or None when no writable volume is mounted at ``home_path`` in the notebook
    container (or the pod has one already)."""
    containers = pod_spec.get("containers") or []
    notebook = next((c for c in containers if c.get("name") == "notebook"), None)
    if notebook is None or not home_path:
        return None
    if any(c.get("name") == SEED_CONTAINER for c in pod_spec.get("initContainers") or []):
        return None
    home = _norm(home_path)
    mount = next(
        (m for m in notebook.get("volumeMounts") or [] if _norm(m.get("mountPath", "")) == home),
        None,
    )
    if mount is None or mount.get("readOnly"):
        return None
    image = notebook.get("image") or ""
    seed_mount = {k: v for k, v in mount.items() if k in ("name", "subPath", "subPathExpr")}
    container: dict[str, Any] = {
        "name": SEED_CONTAINER,
        "image": image,
        "command": [
            "/bin/sh",
            "-c",
            SEED_SCRIPT,
            SEED_CONTAINER,
            home,
            SEED_MOUNT,
            marker_name(image),
        ],
        "volumeMounts": [{**seed_mount, "mountPath": SEED_MOUNT}],
    }
    for key in ("imagePullPolicy", "securityContext", "resources"):
        if notebook.get(key):
            container[key] = notebook[key]
    return container


class HomeSeed:
    """Mixin for AICoESpawner: adds :func:`seed_init_container` to the pod (``seed_home``)."""

    seed_home: bool
    home_path: str

    async def get_pod_manifest(self):
        pod = await super().get_pod_manifest()
        if not self.seed_home:
            return pod
        from kubernetes_asyncio.client.models import V1Container
        from kubespawner.utils import get_k8s_model

        plain = self.api.api_client.sanitize_for_serialization(pod)
        init = seed_init_container(plain.get("spec") or {}, self.home_path)
        if init is not None:
            self.log.info(
                "%s: a volume is mounted at %s; the image's home files are copied into it "
                "first (existing files kept)",
                self._log_name,
                self.home_path,
            )
            pod.spec.init_containers = [
                get_k8s_model(V1Container, init),
                *(pod.spec.init_containers or []),
            ]
        return pod
