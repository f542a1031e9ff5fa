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
)


def literal(value: str) -> str:
    """Protect text from KubeSpawner's ``str.format`` expansion of annotations and labels."""
    return value.replace("{", "{{").replace("}", "}}")


def _copy(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:  # an object config cannot copy (a client, a lock): keep it as is
        return value


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

    def get_env(self) -> dict[str, Any]:
        """KubeSpawner's env plus the user's variables, set literally (never expanded), and
        the user's secret variables as references to their Secret (never their values)."""
        env = super().get_env()
        # Kubernetes expands $(VAR) in env values and turns $$ into $: doubling every $ makes
        # the container see exactly what the user typed.
        env.update({name: value.replace("$", "$$") for name, value in self._user_env.items()})
        env.update(self.secret_env_refs())
        return env
