"""Build backends behind one interface: submit a :class:`BuildSpec`, report its state.

``kubernetes``: a Job running buildah (Dockerfile, or the s2i-equivalent Dockerfile for the
source strategy). ``openshift``: a BuildConfig + Build. Manifests and status interpretation are
pure functions; the classes are thin I/O shells.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendState:
    phase: str  # pending | building | ready | failed | cancelled
    message: str = ""
    digest: str | None = None  # sha256:... when ready
    image_ref: str | None = None  # pinned reference when ready
    log: str | None = None  # the log so far, when the backend can read it
    # from the image check when ready: (name, version) pairs; None = no report (keep the tag's)
    software: tuple[tuple[str, str], ...] | None = None  # Python, JupyterLab, JupyterHub
    dependencies: tuple[tuple[str, str], ...] | None = None  # top-level Python packages
