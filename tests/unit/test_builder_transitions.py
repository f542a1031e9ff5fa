"""The build phase rules (builder/transitions.py) as tables: record + observed backend state +
clock -> the status changes the service writes."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest
from test_builder_backends import spec

from aicoe_spawner.builder import transitions as rules
from aicoe_spawner.builder.backends.base import BackendState
from aicoe_spawner.builder.store import Build
from aicoe_spawner.builder.transitions import CatalogUpdate, Clock
from aicoe_spawner.builder.vocabulary import BuildPhase

D = "sha256:" + "d" * 64
T0 = "2026-01-01T00:00:00.000000Z"
CLOCK = Clock("2026-01-01T00:10:00.000000Z", 1000.0)


def record(phase: str = "pending", **kw) -> Build:
    return Build(**{"spec": spec(), "phase": phase, "created": T0, "submitted": True, **kw})


def observe(b: Build, state: BackendState, text: str = "", written: float = 0.0, **kw):
    return rules.observe(
        b,
        state,
        text=text,
        kept=kw.pop("kept", "imgbuild-b1-log"),
        clock=kw.pop("clock", CLOCK),
        tail_written=written,
        tail_interval=kw.pop("interval", 30.0),
    )


ENDED = [BuildPhase.READY, BuildPhase.FAILED, BuildPhase.CANCELLED]


# -- terminal never changes, a cancel is never undone --------------------------------------


@pytest.mark.parametrize("phase", ENDED)
@pytest.mark.parametrize(
    "state",
    [
        BackendState("pending"),
        BackendState("building"),
        BackendState("ready", digest=D),
        BackendState("failed", "boom"),
        BackendState("cancelled"),
    ],
)
def test_a_terminal_record_takes_no_observation(phase, state):
    b = record(phase, finished=T0)
    assert observe(b, state, text="more log") is None
    assert rules.cancel(b, CLOCK) is None
    assert rules.refused(b, 9, 3, "400 bad", CLOCK) is None
    assert rules.submitted(b) is None
    assert rules.follow_ready(b, record("ready"), "x", CLOCK) is None


@pytest.mark.parametrize(
    ("phase", "changes", "ok"),
    [
        ("pending", {"phase": "building"}, True),
        ("building", {"log_tail": "x"}, True),
        ("pending", {}, False),
        ("pending", None, False),
        ("ready", {"phase": "failed"}, False),  # terminal never changes
        ("cancelled", {"phase": "failed"}, False),  # a cancel is never undone
        ("cancelled", {"phase": "ready", "digest": D}, False),
        ("failed", {"log_config_map": "imgbuild-b1-log"}, True),  # finishing steps
    ],
)
def test_admissible(phase, changes, ok):
    assert rules.admissible(record(phase), changes) is ok


def test_cancel_of_an_active_record():
    assert rules.cancel(record("building"), CLOCK) == {
        "phase": "cancelled",
        "message": "cancelled",
        "finished": CLOCK.wall,
    }
    why = "cancelled by bob, who publishes nb:main"
    assert rules.cancel(record("pending"), CLOCK, why)["message"] == why


# -- observing the backend -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "started", "state", "expected"),
    [
        ("pending", "", BackendState("pending", "waiting"), None),
        (
            "pending",
            "",
            BackendState("building"),
            {"phase": "building", "message": "", "started": CLOCK.wall},
        ),
        ("building", T0, BackendState("building"), None),
        (
            "building",
            T0,
            BackendState("ready", digest=D),
            {
                "phase": "ready",
                "message": "",
                "finished": CLOCK.wall,
                "log_config_map": "imgbuild-b1-log",
                "digest": D,
            },
        ),
        (  # a build that ends before it was seen running starts when it ends
            "pending",
            "",
            BackendState("failed", "boom"),
            {
                "phase": "failed",
                "message": "boom",
                "finished": CLOCK.wall,
                "started": CLOCK.wall,
                "log_config_map": "imgbuild-b1-log",
            },
        ),
        (  # OpenShift: a Build cancelled outside the builder
            "building",
            T0,
            BackendState("cancelled", "cancelled"),
            {
                "phase": "cancelled",
                "message": "cancelled",
                "finished": CLOCK.wall,
                "log_config_map": "imgbuild-b1-log",
            },
        ),
    ],
)
def test_observe_phase_table(phase, started, state, expected):
    assert observe(record(phase, started=started), state) == expected


def test_observed_phases_are_plain_strings():
    changes = observe(record("pending"), BackendState(BuildPhase.BUILDING))
    assert type(changes["phase"]) is str and changes["phase"] == "building"


@pytest.mark.parametrize(
    ("text", "old_tail", "written", "with_phase", "tail_written"),
    [
        ("line\n", "", 0.0, False, True),  # first tail: the interval has passed since 0
        ("line\n", "", 990.0, False, False),  # written 10 s ago: not yet
        ("line\n", "", 990.0, True, True),  # with a phase change: at once
        ("line\n", "line\n", 0.0, False, False),  # unchanged
        ("", "old\n", 0.0, False, False),  # nothing read: the record keeps its tail
    ],
)
def test_log_tail_is_written_at_most_every_interval(
    text, old_tail, written, with_phase, tail_written
):
    b = record("building" if not with_phase else "pending", started=T0, log_tail=old_tail)
    changes = observe(b, BackendState("building"), text=text, written=written) or {}
    assert ("log_tail" in changes) is tail_written
    if tail_written:
        assert changes["log_tail"] == text


def test_the_tail_is_bounded():
    text = "".join(f"line {i}\n" for i in range(5000))
    tail = observe(record("building", started=T0), BackendState("building"), text=text)
    assert len(tail["log_tail"].encode()) <= 4096 and text.endswith(tail["log_tail"])


def test_a_ready_build_with_a_new_digest():
    b = record("ready", digest="sha256:" + "0" * 64)
    assert observe(b, BackendState("ready", digest=D)) is None  # terminal: not even the digest


# -- a missing Job fails a running build ---------------------------------------------------


@pytest.mark.parametrize(
    ("state", "exists", "phase"),
    [
        (BackendState("pending", "build job not created yet"), False, "failed"),
        (BackendState("pending", "waiting for the build pod"), True, "pending"),
        (BackendState("building"), True, "building"),
        (BackendState("ready", digest=D), False, "ready"),  # the result was read
    ],
)
def test_job_gone(state, exists, phase):
    assert rules.must_exist(state) is (state.phase == "pending")
    after = rules.job_gone(state, exists)
    assert after.phase == phase
    if phase == "failed":
        assert "gone before its result was read" in after.message
        changes = observe(record("building", started=T0), after)
        assert changes["phase"] == "failed" and changes["finished"] == CLOCK.wall


# -- a refused Job fails after N tries -----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "refusal"),
    [
        (400, True),
        (403, True),
        (404, True),
        (422, True),
        (408, False),
        (409, False),
        (429, False),
        (500, False),
        (503, False),
        (None, False),
    ],
)
def test_is_refusal(status, refusal):
    assert rules.is_refusal(status) is refusal


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        (1, {"submit_attempts": 1}),
        (2, {"submit_attempts": 2}),
        (
            3,
            {
                "phase": "failed",
                "message": "the API server refused the build job 3 times: 422 invalid",
                "finished": CLOCK.wall,
                "submit_attempts": 3,
            },
        ),
    ],
)
def test_refused_fails_after_the_limit(attempts, expected):
    b = record("pending", submitted=False)
    assert rules.refused(b, attempts, 3, "422 invalid", CLOCK) == expected


def test_refused_after_it_was_submitted_changes_nothing():
    assert rules.refused(record("pending", submitted=True), 3, 3, "x", CLOCK) is None
    assert rules.submitted(record("pending", submitted=False)) == {"submitted": True}
    assert rules.submitted(record("pending", submitted=True)) is None


# -- the catalog ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "state", "update"),
    [
        ("pending", BackendState("pending"), None),
        ("pending", BackendState("building"), CatalogUpdate("mark", "building")),
        ("building", BackendState("building"), None),  # told once
        ("building", BackendState("ready", digest=D), CatalogUpdate("ready")),
        ("building", BackendState("failed", "boom"), CatalogUpdate("mark", "failed", "boom")),
        ("pending", BackendState("cancelled", "x"), CatalogUpdate("mark", "cancelled", "x")),
    ],
)
def test_catalog_update(phase, state, update):
    assert rules.catalog_update(record(phase), state) == update


@pytest.mark.parametrize(
    ("text", "state", "kept"),
    [
        ("log\n", BackendState("failed", "boom"), "log\n"),
        ("", BackendState("failed", "boom"), "boom"),
        ("", BackendState("ready", digest=D), ""),
        ("", BackendState("cancelled", "stop"), ""),
    ],
)
def test_final_log(text, state, kept):
    assert rules.final_log(text, state) == kept


def test_lost_stream_fails_and_stops_a_running_job():
    assert rules.lost_stream("taken by another repo") == BackendState(
        "failed", "taken by another repo"
    )
    assert rules.is_running(BackendState("building")) and rules.is_running(BackendState("pending"))
    assert not rules.is_running(BackendState("ready"))


# -- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "reused"),
    [
        ("pending", True),
        ("building", True),
        ("ready", True),
        ("failed", False),
        ("cancelled", False),
    ],
)
def test_reusable(phase, reused):
    assert rules.reusable(record(phase)) is reused
    assert rules.reusable(None) is False


def test_follow_ready_copies_the_shared_build():
    shared = record("ready", started=T0, finished=T0, digest=D, log_tail="done\n", message="ok")
    changes = rules.follow_ready(replace(record("pending"), submitted=False), shared, "cm", CLOCK)
    assert changes == {
        "phase": "ready",
        "message": "ok",
        "started": T0,
        "finished": T0,
        "digest": D,
        "submitted": True,
        "log_tail": "done\n",
        "log_config_map": "cm",
    }
    unfinished = replace(shared, finished="")
    assert rules.follow_ready(record(), unfinished, "cm", CLOCK)["finished"] == CLOCK.wall


# -- retention -----------------------------------------------------------------------------

AT = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("finished", "seconds", "expired"),
    [
        ("2026-01-01T00:00:00.000000Z", 3600, True),
        ("2026-01-01T23:30:00.000000Z", 3600, False),
        ("2026-01-01T23:00:00Z", 3599, True),  # the API server's spelling
        ("", 0, False),  # not finished
        ("not a time", 0, False),
    ],
)
def test_record_retention(finished, seconds, expired):
    assert rules.record_expired(finished, seconds, AT) is expired


@pytest.mark.parametrize(
    ("finished", "seconds", "expired"),
    [
        ("2026-01-01T23:59:00Z", 30, True),
        ("2026-01-01T23:59:00Z", 600, False),
        ("2026-01-01T23:59:59.500000Z", 0, True),
    ],
)
def test_object_retention(finished, seconds, expired):
    assert rules.object_expired(finished, seconds, AT) is expired


@pytest.mark.parametrize(
    ("phase", "finished", "forgotten"),
    [
        ("ready", "2026-01-01T23:54:00.000000Z", True),  # 6 minutes ago
        ("ready", "2026-01-01T23:56:00.000000Z", False),  # 4 minutes ago
        ("building", "", False),
    ],
)
def test_forget_cached(phase, finished, forgotten):
    assert rules.forget_cached(record(phase, finished=finished), AT) is forgotten
