"""Pod shaping: validated options (and the size's overrides) turned into KubeSpawner traits,
one spawn at a time.

A Spawner object lives across spawns, and JupyterHub's ``group_overrides`` and our sizes change
its traits in place. Every setting either can change is remembered as configured before it is
first changed, and every spawn starts again from those configured values.
"""

from __future__ import annotations

import copy
from typing import Any

from . import options as opts

ANNOTATION_PREFIX = "aicoe-spawner.io/"

#: Traits a spawn sets from the user's choice, besides the sizes' override keys.
APPLIED_TRAITS = (
    "image",
    "cpu_guarantee",
    "cpu_limit",
    "mem_guarantee",
    "mem_limit",
    "extra_resource_limits",
    "tolerations",
    "node_selector",
    "extra_annotations",
    "image_pull_secrets",
)

#: what an entry of ``registry_pull_secrets`` may hold: the builder's destination entries
#: (``ImageBuilder.destinations``) fit as they are, their other keys unused here
PULL_SECRET_KEYS = frozenset({"registry", "pullSecret", "repositories", "pushSecret", "allow"})


def literal(value: str) -> str:
    """Protect text from KubeSpawner's ``str.format`` expansion of annotations and labels."""
    return value.replace("{", "{{").replace("}", "}}")


def _copy(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:  # an object config cannot copy (a client, a lock): keep it as is
        return value


def check_pull_secret_entries(entries: Any) -> None:
    """ValueError naming the entry and the field of a bad ``registry_pull_secrets`` value."""
    if not isinstance(entries, list):
        raise ValueError("must be a list of {registry, pullSecret} entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"entry {i}: must be a mapping with registry and pullSecret")
        unknown = sorted(set(entry) - PULL_SECRET_KEYS)
        if unknown:
            raise ValueError(f"entry {i}: unknown field {unknown[0]!r}")
        registry = entry.get("registry")
        if not isinstance(registry, str) or not registry.strip("/") or " " in registry:
            raise ValueError(f"entry {i}.registry: must be a registry host[/path]")
        secret = entry.get("pullSecret", "")
        if not isinstance(secret, str):
            raise ValueError(f"entry {i}.pullSecret: must be a Secret name")


def registry_pull_secret(image: str, entries: list[dict]) -> str:
    """The ``pullSecret`` of the first entry whose ``registry`` path holds ``image`` (a
    reference ``host/path/name[:tag][@digest]``), else ""."""
    image = image.lower()
    for entry in entries:
        prefix = entry["registry"].lower().rstrip("/") + "/"
        if entry.get("pullSecret") and image.startswith(prefix):
            return entry["pullSecret"]
    return ""


def _secret_names(secrets: Any) -> list[str]:
    """KubeSpawner's image_pull_secrets (a list of names or {name} objects, or one name)."""
    if isinstance(secrets, str):
        return [secrets] if secrets else []
    return [s if isinstance(s, str) else (s or {}).get("name", "") for s in secrets or []]


def image_annotations(chosen: opts.SpawnOptions) -> dict[str, str]:
    """What the pod records of its image: the catalog stream, tag and digest, and for a size's
    own image also where it came from, what was asked for and how it was pinned (or why not)."""
    own = chosen.own_image
    image, tag = (own.image, own.tag) if own is not None else (chosen.image, chosen.tag)
    digest = own.digest if own is not None else (tag.digest if tag is not None else None)
    out = {f"{ANNOTATION_PREFIX}image-digest": literal(digest or "")}
    if image is not None and tag is not None:
        out[f"{ANNOTATION_PREFIX}image-stream"] = literal(image.key)
        out[f"{ANNOTATION_PREFIX}image-tag"] = literal(tag.name)
    if own is not None:
        out[f"{ANNOTATION_PREFIX}image-source"] = own.source
        out[f"{ANNOTATION_PREFIX}image-requested"] = literal(own.requested)
        out[f"{ANNOTATION_PREFIX}image-resolution"] = literal(f"{own.resolution}: {own.reason}")
    return out


class PodShaping:
    """Mixin for AICoESpawner: configured values kept, restored and shaped per spawn."""

    _configured: dict[str, Any]
    _user_env: dict[str, str]

    def _remember_configured(self, names) -> None:
        """Remember the value of each trait in ``names`` the first time it is about to change."""
        for name in names:
            if name not in self._configured and self.has_trait(name):
                self._configured[name] = _copy(getattr(self, name))

    def _restore_configured(self) -> None:
        for name, value in self._configured.items():
            setattr(self, name, _copy(value))

    def _apply_overrides(self, spawner_override: dict) -> None:
        # JupyterHub's group_overrides and our sizes both land here; dict values are merged
        # into the current value in place, so remember the configured value first.
        self._remember_configured(spawner_override)
        super()._apply_overrides(spawner_override)

    async def apply_group_overrides(self) -> None:
        """Start from the configured values, then apply the groups' overrides of this spawn."""
        self._restore_configured()
        await super().apply_group_overrides()

    def shape_pod(self, chosen: opts.SpawnOptions) -> None:
        """Set this spawn's traits from ``chosen``, on top of the configured values and the
        group overrides of this spawn."""
        size = chosen.size
        self.image = chosen.image_ref
        # As under KubeSpawner, a resource the size does not set keeps its configured value.
        for name in ("cpu_guarantee", "cpu_limit", "mem_guarantee", "mem_limit"):
            if getattr(size, name) is not None:
                setattr(self, name, getattr(size, name))
        if size.overrides:
            self._apply_overrides(size.overrides)
        for choice in chosen.choices.values():
            if choice.overrides:
                self._apply_overrides(choice.overrides)
        if chosen.cpu is not None:
            self.cpu_guarantee = self.cpu_limit = chosen.cpu
        if chosen.memory is not None:
            self.mem_guarantee = self.mem_limit = chosen.memory
        if chosen.gpus:
            self.extra_resource_limits = {
                **self.extra_resource_limits,
                self.gpu_resource_name: str(chosen.gpus),
            }
            self.tolerations = [*self.tolerations, *self.gpu_tolerations]
            self.node_selector = {**self.node_selector, **self.gpu_node_selector}
        self._user_env = dict(chosen.env)
        annotations = {
            f"{ANNOTATION_PREFIX}size": literal(size.name),
            f"{ANNOTATION_PREFIX}gpus": str(chosen.gpus),
            **image_annotations(chosen),
        }
        if chosen.choices:
            annotations[f"{ANNOTATION_PREFIX}size-options"] = literal(
                ",".join(f"{name}={value}" for name, value in chosen.size_choices().items())
            )
        self.extra_annotations = {**self.extra_annotations, **annotations}
        # the admin's registry pull secret of the image this spawn starts (a size's own image
        # included), beside KubeSpawner's image_pull_secrets
        secret = registry_pull_secret(self.image, self.registry_pull_secrets)
        if secret and secret not in _secret_names(self.image_pull_secrets):
            configured = self.image_pull_secrets
            if isinstance(configured, str):
                configured = [configured] if configured else []
            self.image_pull_secrets = [*configured, secret]

    def get_env(self) -> dict[str, Any]:
        """KubeSpawner's env plus the user's variables, set literally (never expanded), and
        the user's secret variables as references to their Secret (never their values)."""
        env = super().get_env()
        # Kubernetes expands $(VAR) in env values and turns $$ into $: doubling every $ makes
        # the container see exactly what the user typed.
        env.update({name: value.replace("$", "$$") for name, value in self._user_env.items()})
        env.update(self.secret_env_refs())
        return env
