"""The puller DaemonSet's init containers: one per image to keep (pure).

Each kept image is an init container at its digest that runs a static binary copied into a
shared volume by the chart's own first init container, so images without a shell pull and
"run" as well as any. The controller owns only the init containers named ``pull-…``; the
chart's containers (the copier, the pause container) are left as they are. The chart may set
the shape of a pull container (command, resources, security context, mounts) as JSON in the
DaemonSet annotation :data:`TEMPLATE_ANNOTATION`; otherwise :data:`DEFAULT_TEMPLATE` is used.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

from .plan import PullImage

PREFIX = "pull-"
TEMPLATE_ANNOTATION = "aicoe-spawner.io/pull-container"
APPLIED_ANNOTATION = "aicoe-spawner.io/pull-container-applied"

DEFAULT_TEMPLATE: dict[str, Any] = {
    "command": ["/aicoe-puller/busybox", "true"],
    "imagePullPolicy": "IfNotPresent",
    "resources": {"requests": {"cpu": "0", "memory": "0"}},
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 65534,
        "runAsGroup": 65534,
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "volumeMounts": [{"name": "aicoe-puller", "mountPath": "/aicoe-puller", "readOnly": True}],
}

_SLUG = re.compile(r"[^a-z0-9]+")


def container_name(image: PullImage) -> str:
    """``pull-<stream>-<12 hex of the digest>``: readable, unique per digest, a DNS label."""
    stream = _SLUG.sub("-", image.stream.rpartition("/")[2].lower()).strip("-")[:40]
    hexpart = image.digest.partition(":")[2][:12]
    return f"{PREFIX}{stream + '-' if stream else ''}{hexpart}"


def template_of(daemonset: dict[str, Any]) -> dict[str, Any]:
    """The pull-container shape from the DaemonSet's annotation, else the default."""
    raw = (daemonset.get("metadata", {}).get("annotations") or {}).get(TEMPLATE_ANNOTATION)
    if raw:
        try:
            found = json.loads(raw)
        except ValueError:
            found = None
        if isinstance(found, dict):
            return found
    return DEFAULT_TEMPLATE


def init_containers(daemonset: dict[str, Any], images: list[PullImage]) -> list[dict[str, Any]]:
    """The DaemonSet's init containers for ``images``: its own (non-``pull-``) ones first, in
    their order, then one per image in pull order."""
    spec = daemonset.get("spec", {}).get("template", {}).get("spec", {})
    own = [c for c in spec.get("initContainers") or [] if not c["name"].startswith(PREFIX)]
    template = template_of(daemonset)
    pulls = []
    for image in images:
        c = copy.deepcopy(template)
        c["name"] = container_name(image)
        c["image"] = image.image_ref
        pulls.append(c)
    return own + pulls


def pulled_images(daemonset: dict[str, Any]) -> list[str]:
    """The image references of the DaemonSet's ``pull-`` init containers, in order."""
    return [image for _, image in _pulls(daemonset)]


def _pulls(daemonset: dict[str, Any]) -> list[tuple[str, str]]:
    spec = daemonset.get("spec", {}).get("template", {}).get("spec", {})
    return [
        (c["name"], c.get("image", ""))
        for c in spec.get("initContainers") or []
        if c["name"].startswith(PREFIX)
    ]


def _applied(template: dict[str, Any]) -> str:
    """What :data:`APPLIED_ANNOTATION` records: the template the pull containers were made
    from (the API server adds defaults to containers, so they cannot be compared as sent)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def patch_for(daemonset: dict[str, Any], images: list[PullImage]) -> dict[str, Any] | None:
    """A JSON merge patch that sets the init containers for ``images``, conditional on the
    DaemonSet's resourceVersion; None when the DaemonSet already has them."""
    template = template_of(daemonset)
    annotations = daemonset.get("metadata", {}).get("annotations") or {}
    wanted = [(container_name(i), i.image_ref) for i in images]
    if _pulls(daemonset) == wanted and annotations.get(APPLIED_ANNOTATION) == _applied(template):
        return None
    return {
        "metadata": {
            "resourceVersion": daemonset["metadata"]["resourceVersion"],
            "annotations": {APPLIED_ANNOTATION: _applied(template)},
        },
        "spec": {"template": {"spec": {"initContainers": init_containers(daemonset, images)}}},
    }
