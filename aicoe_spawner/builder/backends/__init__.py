"""Build backends behind one interface (:class:`~.base.Backend`, whose docstrings are the
contract): submit a :class:`BuildSpec`, report its state.

``kubernetes``: a Job running buildah (Dockerfile, or the s2i-equivalent Dockerfile for the
source strategy). ``openshift``: a BuildConfig + Build. Manifests and status interpretation are
pure functions; the classes are thin I/O shells. The ``backend`` setting names one of
:data:`BACKENDS` (``auto``: OpenShift where the API server serves ``build.openshift.io``).
Modules outside this package import only this package and :mod:`.base`.
"""

from __future__ import annotations

from .base import Backend, BackendState, LogReader
from .kubernetes import KubernetesBackend
from .openshift import OpenShiftBackend, choose_backend

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (KubernetesBackend, OpenShiftBackend)}

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendState",
    "LogReader",
    "backend_type",
    "choose_backend",
]


def backend_type(name: str) -> type[Backend]:
    """The backend class the setting ``name`` selects (``auto`` must be resolved first, with
    :func:`choose_backend`); ValueError for ``auto``, SystemExit for an unknown name."""
    if name == "auto":
        raise ValueError("backend 'auto' is resolved by make_service (API discovery)")
    try:
        return BACKENDS[name]
    except KeyError:
        known = " | ".join([*BACKENDS, "auto"])
        raise SystemExit(f"unknown backend {name!r} ({known})") from None
