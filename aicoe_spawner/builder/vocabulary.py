"""The builder's Kubernetes vocabulary, in one place: who manages an object (label), the label
and annotation prefix, the build phases, object names, and the timestamps written to and read
from the API server. Every part of the builder (store, quota, registration, backends) imports
these; none defines its own."""

from __future__ import annotations

import datetime
import enum
from typing import Any

from .naming import repo_hash, user_label
from .requests import BuildSpec

MANAGED_BY = "aicoe-image-builder"  # app.kubernetes.io/managed-by of every object we create
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
PREFIX = "aicoe-spawner.io/"  # the builder's labels and annotations (``L`` in older modules)
L = PREFIX
OBJECT_PREFIX = "imgbuild-"  # records, Jobs, Builds, BuildConfigs and their ConfigMaps


class BuildPhase(enum.StrEnum):
    """A build's phase (``status.phase`` of its ImageBuild record). A ``str``: compares equal
    to the spelling the API and the records use."""

    PENDING = "pending"  # admitted; the Job (Build) is not running yet
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in ACTIVE

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


PHASES = tuple(p.value for p in BuildPhase)
ACTIVE = (BuildPhase.PENDING.value, BuildPhase.BUILDING.value)
TERMINAL = (BuildPhase.READY.value, BuildPhase.FAILED.value, BuildPhase.CANCELLED.value)


# -- names -----------------------------------------------------------------------------------


def object_name(build_id: str) -> str:
    """The name of a build's objects (record, Job, Build, BuildConfig): deterministic, so
    replicas creating the same one collide on 409."""
    return f"{OBJECT_PREFIX}{build_id}"


def log_name(build_id: str) -> str:
    """The ConfigMap keeping a finished build's log."""
    return f"{object_name(build_id)}-log"


def job_id_of(name: str) -> str:
    """The job id in a build object's name (inverse of :func:`object_name`)."""
    return name.removeprefix(OBJECT_PREFIX)


def build_labels(spec: BuildSpec) -> dict[str, str]:
    """The labels of the objects that run a build (``build-id`` is the Job's: ``job_id``)."""
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        f"{L}build-id": spec.job_id,
        f"{L}repo-hash": repo_hash(spec.repo),
        f"{L}commit": spec.commit[:63],
        f"{L}requester": user_label(spec.requester),
    }


def build_annotations(spec: BuildSpec) -> dict[str, str]:
    """What a build object says about its build, unabridged (labels are bounded)."""
    return {
        f"{L}repo": spec.repo,
        f"{L}ref": spec.ref,
        f"{L}commit": spec.commit,
        f"{L}requester": spec.requester,
        f"{L}image": spec.image,
        f"{L}output-image": spec.output_image,
    }


# -- timestamps ------------------------------------------------------------------------------

_PRECISE = "%Y-%m-%dT%H:%M:%S.%fZ"  # what the builder writes in records
_SECONDS = "%Y-%m-%dT%H:%M:%SZ"  # what the API server writes (and the catalog's annotations)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def now() -> str:
    """Now, as the records' timestamps (microseconds)."""
    return utcnow().strftime(_PRECISE)


def stamp(t: datetime.datetime | None = None) -> str:
    """``t`` (default now) as the API server spells times (whole seconds, UTC)."""
    return (t or utcnow()).astimezone(datetime.UTC).strftime(_SECONDS)


def parse_stamp(value: Any) -> datetime.datetime | None:
    """A timestamp of either spelling, or None."""
    for fmt in (_SECONDS, _PRECISE):
        try:
            return datetime.datetime.strptime(str(value), fmt).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
    return None


def seconds_since(value: Any, at: datetime.datetime | None = None) -> float:
    """Seconds from a timestamp to ``at`` (default now); 0.0 when it is not a timestamp."""
    t = parse_stamp(value)
    if t is None:
        return 0.0
    return ((at or utcnow()) - t).total_seconds()
