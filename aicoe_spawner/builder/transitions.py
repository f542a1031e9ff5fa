"""Every phase rule of a build, as pure functions: (record, what the backend reports, clock)
-> the status changes to write (a dict of :class:`~.store.Build` fields, or None: nothing to
write) and the actions the service takes. No I/O: the service reads, calls these, and writes
with optimistic concurrency (on a conflict it reads again and calls them again).

The rules:

- **terminal never changes**: a ready, failed or cancelled record keeps its phase
  (:func:`admissible`; the CRD refuses it as well);
- **a missing Job for a running build fails it**: a record whose Job (Build) was created and
  is gone before its result was read (:func:`job_gone`);
- **a refused Job fails after N tries** (:func:`refused`); unavailability (5xx, 408, 409, 429)
  is not a refusal (:func:`is_refusal`);
- **a cancel is never undone**: cancelling writes the terminal phase first (:func:`cancel`),
  and nothing decided on an older version may overwrite it (the rule above);
- **retention**: finished records, finished build objects and the service's cache of
  finished builds go after their time (:func:`record_expired`, :func:`object_expired`,
  :func:`forget_cached`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from .backends.base import BackendState
from .store import TAIL_LIMIT, Build, tail
from .vocabulary import ACTIVE, TERMINAL, BuildPhase, now, seconds_since, utcnow

Changes = dict[str, Any]

JOB_GONE = (
    "the build job is gone before its result was read (deleted, or expired while the builder "
    "was down); submit the build again"
)
CACHE_SECONDS = 300.0  # a finished build stays in the service's memory (event streams) this long


@dataclass(frozen=True)
class Clock:
    """The time a decision is made at: the records' timestamp and a monotonic reading."""

    wall: str
    monotonic: float

    @classmethod
    def now(cls, monotonic: float) -> Clock:
        return cls(now(), monotonic)


@dataclass(frozen=True)
class CatalogUpdate:
    """What the ImageStream (the catalog) is told: ``mark`` a phase (with a message), or
    ``ready`` (serve the digest)."""

    kind: str  # "mark" | "ready"
    phase: str = ""
    message: str = ""


# -- the guard -------------------------------------------------------------------------------


def admissible(record: Build, changes: Changes | None) -> bool:
    """True when ``changes`` may be written to ``record``: there are some, and no phase
    change of a record that is terminal already (terminal never changes)."""
    return bool(changes) and not (not record.active and "phase" in changes)


# -- submitting ------------------------------------------------------------------------------


def is_refusal(status: int | None) -> bool:
    """An API server answer that refuses the Job (4xx), as opposed to one that says "not now"
    (5xx, 408 timeout, 409 conflict, 429 throttled: try again later)."""
    return 400 <= (status or 0) < 500 and status not in (408, 409, 429)


def refused(record: Build, attempts: int, limit: int, reason: str, clock: Clock) -> Changes | None:
    """The API server refused the record's Job for the ``attempts``-th time: counted, and the
    build fails at ``limit``. Nothing for a record that ended or was submitted meanwhile."""
    if not record.active or record.submitted:
        return None
    if attempts < limit:
        return {"submit_attempts": attempts}
    return {
        "phase": BuildPhase.FAILED.value,
        "message": f"the API server refused the build job {attempts} times: {reason}",
        "finished": clock.wall,
        "submit_attempts": attempts,
    }


def submitted(record: Build) -> Changes | None:
    """The Job was created (or found): from now on a missing one is a failure."""
    return {"submitted": True} if record.active and not record.submitted else None


# -- observing the backend -------------------------------------------------------------------


def must_exist(state: BackendState) -> bool:
    """True when ``state`` (of a submitted record) may mean the Job is gone: ask the backend
    whether it exists, and apply :func:`job_gone`."""
    return state.phase == BuildPhase.PENDING


def job_gone(state: BackendState, exists: bool) -> BackendState:
    """A missing Job for a running (submitted) build fails it."""
    if state.phase == BuildPhase.PENDING and not exists:
        return BackendState(BuildPhase.FAILED, JOB_GONE)
    return state


def lost_stream(why: str) -> BackendState:
    """The build's ImageStream was taken meanwhile: the build may not write it and fails."""
    return BackendState(BuildPhase.FAILED, why)


def is_terminal(state: BackendState) -> bool:
    return state.phase in TERMINAL


def is_running(state: BackendState) -> bool:
    return state.phase in ACTIVE


def catalog_update(record: Build, state: BackendState) -> CatalogUpdate | None:
    """What the catalog is told about ``state``: building once the build runs (pending until
    then), ready with the digest, failed/cancelled (cancelled: on OpenShift, a Build cancelled
    outside the builder)."""
    if state.phase == BuildPhase.BUILDING and record.phase == BuildPhase.PENDING:
        return CatalogUpdate("mark", BuildPhase.BUILDING.value)
    if state.phase == BuildPhase.READY:
        return CatalogUpdate("ready")
    if state.phase in (BuildPhase.FAILED, BuildPhase.CANCELLED):
        return CatalogUpdate("mark", str(state.phase), state.message)
    return None


def final_log(text: str, state: BackendState) -> str:
    """The log kept for a build that ends in ``state``: what was read, else a failure's
    message."""
    return text or (state.message if state.phase == BuildPhase.FAILED else "")


def observe(
    record: Build,
    state: BackendState,
    *,
    text: str,
    kept: str,
    clock: Clock,
    tail_written: float,
    tail_interval: float,
) -> Changes | None:
    """The record's changes for what the backend reports: its phase (``started`` when it
    starts building, ``finished`` and the kept log ``kept`` when it ends), the digest when
    ready, and the log tail of ``text`` (with a phase change, else at most every
    ``tail_interval`` seconds since ``tail_written``, monotonic). Nothing for a record that
    ended (terminal never changes, a cancel is never undone)."""
    if not record.active:
        return None
    changes: Changes = {}
    if state.phase != record.phase:
        changes["phase"] = str(state.phase)
        changes["message"] = state.message
        if state.phase == BuildPhase.BUILDING and not record.started:
            changes["started"] = clock.wall
        if is_terminal(state):
            changes["finished"] = clock.wall
            changes["log_config_map"] = kept
            if not record.started:
                changes["started"] = changes["finished"]
    if state.phase == BuildPhase.READY and state.digest != record.digest:
        changes["digest"] = state.digest
    new_tail = tail(text, TAIL_LIMIT) if text else record.log_tail
    if new_tail != record.log_tail and (changes or clock.monotonic - tail_written >= tail_interval):
        changes["log_tail"] = new_tail
    return changes or None


# -- the user's actions ----------------------------------------------------------------------


def cancel(record: Build, clock: Clock, message: str = "cancelled") -> Changes | None:
    """Cancel an active record (written before the Job is stopped, so a reconcile that finds
    the Job gone meanwhile can no longer decide "failed")."""
    if not record.active:
        return None
    return {"phase": BuildPhase.CANCELLED.value, "message": message, "finished": clock.wall}


def reusable(existing: Build | None) -> bool:
    """True when a requester's existing record answers their request again (200): any but a
    failed or cancelled one, which a new request replaces."""
    return existing is not None and existing.phase not in (
        BuildPhase.FAILED,
        BuildPhase.CANCELLED,
    )


def follow_ready(record: Build, shared: Build, kept: str, clock: Clock) -> Changes | None:
    """A new record that follows the finished build ``shared`` (same content, another
    requester): ready with its digest, times and log; no Job of its own."""
    if not record.active:
        return None
    return {
        "phase": BuildPhase.READY.value,
        "message": shared.message,
        "started": shared.started,
        "finished": shared.finished or clock.wall,
        "digest": shared.digest,
        "submitted": True,
        "log_tail": shared.log_tail,
        "log_config_map": kept,
    }


# -- retention -------------------------------------------------------------------------------


def record_expired(
    finished: str, retention_seconds: float, at: datetime.datetime | None = None
) -> bool:
    """A finished record (finished at ``finished``) is deleted after its retention."""
    return bool(finished) and seconds_since(finished, at or utcnow()) > retention_seconds


def object_expired(
    finished: str, cleanup_after_seconds: float, at: datetime.datetime | None = None
) -> bool:
    """A finished Job (Build) is deleted ``cleanup_after_seconds`` after it finished."""
    return seconds_since(finished, at or utcnow()) > cleanup_after_seconds


def forget_cached(build: Build, at: datetime.datetime | None = None) -> bool:
    """A finished build leaves the service's memory :data:`CACHE_SECONDS` after it ended."""
    return not build.active and seconds_since(build.finished, at or utcnow()) > CACHE_SECONDS
