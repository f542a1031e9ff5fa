"""Image import decisions and status writing (pure): aicoe_spawner.builder.imports."""

from __future__ import annotations

import base64
import json

import pytest

from aicoe_spawner.builder import imports
from aicoe_spawner.builder.imports import (
    Failed,
    ImageReference,
    ReferenceError,
    Resolved,
    due,
    parse_reference,
    with_results,
)
from aicoe_spawner.builder.registry import classify
from aicoe_spawner.catalog import TagPhase, parse_imagestream

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
T0 = 1_800_000_000.0  # "now" in these tests


def stream(*tags: dict, status: list | None = None, generation: int = 1, **meta) -> dict:
    obj = {
        "metadata": {"name": "s", "namespace": "ns", "generation": generation, **meta},
        "spec": {"tags": list(tags)},
    }
    if status is not None:
        obj["status"] = {"tags": status}
    return obj


def tag(name="v1", ref="quay.io/org/img:v1", **extra) -> dict:
    return {"name": name, "from": {"kind": "DockerImage", "name": ref}, **extra}


def item(digest=D1, created=T0 - 10, generation=1, name="quay.io/org/img") -> dict:
    return {
        "created": imports.stamp(created),
        "dockerImageReference": f"{name}@{digest}",
        "image": digest,
        "generation": generation,
    }


def failure(at=T0 - 10, generation=1, message="no") -> dict:
    return {
        "type": "ImportSuccess",
        "status": "False",
        "reason": "NotFound",
        "message": message,
        "lastTransitionTime": imports.stamp(at),
        "generation": generation,
    }


def whys(obj, now=T0, attempts=None, **kw) -> dict[str, str]:
    return {t.tag: t.why for t in due(obj, now, attempts, **kw)}


# -- references ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python", ImageReference("docker.io", "library/python", "latest")),
        ("python:3.12", ImageReference("docker.io", "library/python", "3.12")),
        ("jupyter/base-notebook:x", ImageReference("docker.io", "jupyter/base-notebook", "x")),
        ("docker.io/python:3", ImageReference("docker.io", "library/python", "3")),
        ("index.docker.io/org/a:1", ImageReference("docker.io", "org/a", "1")),
        ("quay.io/org/img:v1", ImageReference("quay.io", "org/img", "v1")),
        ("ghcr.io/o/r/deep/name:t", ImageReference("ghcr.io", "o/r/deep/name", "t")),
        ("127.0.0.1:5000/a/b:c", ImageReference("127.0.0.1:5000", "a/b", "c")),
        ("localhost/a", ImageReference("localhost", "a", "latest")),
        ("localhost:5000/a", ImageReference("localhost:5000", "a", "latest")),
        (f"quay.io/o/i@{D1}", ImageReference("quay.io", "o/i", None, D1)),
        (f"quay.io/o/i:v@{D1}", ImageReference("quay.io", "o/i", "v", D1)),
    ],
)
def test_parse_reference(text, expected):
    assert parse_reference(text) == expected


def test_reference_names():
    hub = parse_reference("python:3.12")
    assert (hub.name, hub.api_host, str(hub)) == (
        "docker.io/library/python",
        "registry-1.docker.io",
        "docker.io/library/python:3.12",
    )
    assert parse_reference("quay.io/o/i:v").api_host == "quay.io"
    assert str(parse_reference(f"quay.io/o/i@{D1}")) == f"quay.io/o/i@{D1}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  ",
        None,
        42,
        "Quay.io/Org/Img:v1x/UPPER",
        "quay.io/org/img:bad tag",
        "quay.io/org/img@sha256:short",
        "quay.io/",
        "odh-workbench-jupyter-minimal-cpu-py312-ubi9-n_PLACEHOLDER",  # the ODH fixture's
        "quay.io/org//img",
        "quay.io/org/img:" + "t" * 200,
    ],
)
def test_parse_reference_rejects(text):
    with pytest.raises(ReferenceError, match="image reference"):
        parse_reference(text)


# -- which tags are due ----------------------------------------------------------------------


def test_new_tags_are_due_and_others_not():
    obj = stream(
        tag("new"),
        tag("done"),
        {"name": "built", "from": {"kind": "ImageStreamTag", "name": "x:y"}},
        {"name": "nofrom"},
        status=[{"tag": "done", "items": [item()]}],
    )
    assert whys(obj) == {"new": "new"}


def test_builder_streams_are_skipped():
    obj = stream(tag(), labels={"app.kubernetes.io/managed-by": "aicoe-image-builder"})
    assert whys(obj) == {}


def test_spec_change_reimports():
    obj = stream(tag(), status=[{"tag": "v1", "items": [item(generation=1)]}], generation=2)
    assert whys(obj) == {"v1": "changed"}
    # an item written by hand, without generation, is verified once
    hand = stream(tag(), status=[{"tag": "v1", "items": [{"dockerImageReference": "x@" + D1}]}])
    assert whys(hand) == {"v1": "changed"}


def test_scheduled_after_interval_only():
    obj = stream(
        tag(importPolicy={"scheduled": True}),
        status=[{"tag": "v1", "items": [item(created=T0 - 100)]}],
    )
    assert whys(obj, interval=900) == {}
    assert whys(obj, now=T0 + 800, interval=900) == {"v1": "scheduled"}
    # this process's last attempt counts too (an unchanged digest writes nothing)
    assert whys(obj, now=T0 + 800, attempts={"v1": T0 + 500}, interval=900) == {}
    assert whys(obj, now=T0 + 1400, attempts={"v1": T0 + 500}, interval=900) == {"v1": "scheduled"}
    # not scheduled: never again without a change
    plain = stream(tag(), status=[{"tag": "v1", "items": [item(created=T0 - 10**6)]}])
    assert whys(plain) == {}


def test_failures_are_retried_after_the_retry_interval():
    obj = stream(tag(), status=[{"tag": "v1", "items": [], "conditions": [failure(T0 - 10)]}])
    assert whys(obj, retry=60) == {}
    assert whys(obj, now=T0 + 50, retry=60) == {"v1": "retry"}
    assert whys(obj, now=T0 + 50, attempts={"v1": T0 + 40}, retry=60) == {}
    # a spec edit since the failure (the reference fixed) is tried at once
    edited = stream(tag(), status=[{"tag": "v1", "conditions": [failure(T0)]}], generation=2)
    assert whys(edited, retry=60) == {"v1": "changed"}
    # a scheduled tag retries no later than its interval
    sched = stream(
        tag(importPolicy={"scheduled": True}),
        status=[{"tag": "v1", "items": [item(created=T0 - 10)], "conditions": [failure(T0)]}],
    )
    assert whys(sched, now=T0 + 30, retry=120, interval=20) == {"v1": "retry"}


def test_new_tag_attempted_moments_ago_waits():
    assert whys(stream(tag()), attempts={"v1": T0 - 1}, retry=60) == {}
    assert whys(stream(tag()), attempts={"v1": T0 - 61}, retry=60) == {"v1": "new"}


def test_insecure_and_reference_are_passed_on():
    [target] = due(stream(tag(ref="127.0.0.1:5000/a:b", importPolicy={"insecure": True})), T0)
    assert (target.reference, target.insecure) == ("127.0.0.1:5000/a:b", True)
    [target] = due(stream(tag(importPolicy={"insecure": "yes"})), T0)
    assert target.insecure is False


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"spec": None},
        {"spec": {"tags": "x"}},
        {"spec": {"tags": [None, 1, {"name": 3}, {"name": "a", "from": "x"}]}},
        {"spec": {"tags": [tag()]}, "status": {"tags": [None, {"tag": "v1", "items": "x"}]}},
        {"spec": {"tags": [tag()]}, "status": "broken", "metadata": {"generation": "2"}},
    ],
)
def test_malformed_streams_never_raise(obj):
    due(obj, T0)
    with_results(obj, {"v1": Resolved("quay.io/org/img", D1)}, T0)


def test_the_odh_fixture_shape_is_due():
    """A real ODH stream (spec only) has every tag due."""
    obj = stream(
        tag("2025.2", "quay.io/opendatahub/workbench-images:jupyter-minimal-2025.2"),
        tag("2025.1", "odh-workbench-jupyter-minimal-cpu-py311-ubi9-n-1_PLACEHOLDER"),
    )
    assert whys(obj) == {"2025.2": "new", "2025.1": "new"}


# -- status written --------------------------------------------------------------------------


def test_first_import_writes_openshift_shape():
    obj = stream(tag(), generation=3)
    out = with_results(obj, {"v1": Resolved("quay.io/org/img", D1)}, T0)
    assert out["status"]["tags"] == [
        {
            "tag": "v1",
            "items": [
                {
                    "created": imports.stamp(T0),
                    "dockerImageReference": f"quay.io/org/img@{D1}",
                    "image": D1,
                    "generation": 3,
                }
            ],
        }
    ]
    assert obj.get("status") is None  # input untouched
    image = parse_imagestream(out)
    assert image.tag("v1").phase is TagPhase.READY
    assert image.tag("v1").image_ref == f"quay.io/org/img@{D1}"


def test_moved_tag_puts_new_digest_first_and_keeps_history():
    items = [item(D2, T0 - 20), item(D1, T0 - 30)]
    obj = stream(tag(), status=[{"tag": "v1", "items": items}])
    out = with_results(obj, {"v1": Resolved("quay.io/org/img", D3)}, T0)
    got = out["status"]["tags"][0]["items"]
    assert [i["image"] for i in got] == [D3, D2, D1]
    # moving back to an older digest makes it first, without a duplicate
    back = with_results(out, {"v1": Resolved("quay.io/org/img", D1)}, T0 + 5)
    assert [i["image"] for i in back["status"]["tags"][0]["items"]] == [D1, D3, D2]


def test_history_is_capped():
    digests = ["sha256:" + f"{n:x}" * 64 for n in range(10)]
    obj = stream(tag())
    for n, d in enumerate(digests):
        obj = with_results(obj, {"v1": Resolved("quay.io/org/img", d)}, T0 + n)
    got = [i["image"] for i in obj["status"]["tags"][0]["items"]]
    assert got == list(reversed(digests))[: imports.MAX_ITEMS]


def test_same_digest_changes_nothing_but_generation():
    obj = stream(tag(), status=[{"tag": "v1", "items": [item(D1, T0 - 100)]}])
    out = with_results(obj, {"v1": Resolved("quay.io/org/img", D1)}, T0)
    assert out["status"] == obj["status"]
    obj["metadata"]["generation"] = 4
    out = with_results(obj, {"v1": Resolved("quay.io/org/img", D1)}, T0)
    [only] = out["status"]["tags"][0]["items"]
    assert (only["generation"], only["created"]) == (4, imports.stamp(T0 - 100))


def test_failure_without_item_is_failed_with_message():
    obj = stream(tag(), generation=2)
    out = with_results(obj, {"v1": Failed("NotFound", "manifest  unknown\n here")}, T0)
    entry = out["status"]["tags"][0]
    assert entry["items"] == []
    assert entry["conditions"] == [
        {
            "type": "ImportSuccess",
            "status": "False",
            "reason": "NotFound",
            "message": "manifest unknown here",
            "lastTransitionTime": imports.stamp(T0),
            "generation": 2,
        }
    ]
    parsed = parse_imagestream(out).tag("v1")
    assert (parsed.phase, parsed.message, parsed.image_ref) == (
        TagPhase.FAILED,
        "manifest unknown here",
        None,
    )


def test_failure_keeps_serving_the_old_item():
    obj = stream(tag(), status=[{"tag": "v1", "items": [item(D1)]}])
    out = with_results(obj, {"v1": Failed("Unauthorized", "denied")}, T0)
    entry = out["status"]["tags"][0]
    assert entry["items"] == [item(D1)]
    assert entry["conditions"][0]["reason"] == "Unauthorized"
    parsed = parse_imagestream(out).tag("v1")
    assert (parsed.phase, parsed.digest) == (TagPhase.READY, D1)


def test_repeated_failure_keeps_transition_time_and_success_clears_it():
    obj = stream(tag())
    first = with_results(obj, {"v1": Failed("NotFound", "gone")}, T0)
    again = with_results(first, {"v1": Failed("NotFound", "gone")}, T0 + 60)
    assert again["status"] == first["status"]  # nothing to write
    other = with_results(first, {"v1": Failed("Unauthorized", "denied")}, T0 + 60)
    cond = other["status"]["tags"][0]["conditions"][0]
    assert (cond["reason"], cond["lastTransitionTime"]) == ("Unauthorized", imports.stamp(T0))
    ok = with_results(other, {"v1": Resolved("quay.io/org/img", D1)}, T0 + 120)
    assert "conditions" not in ok["status"]["tags"][0]
    assert parse_imagestream(ok).tag("v1").phase is TagPhase.READY


def test_other_conditions_and_tags_are_kept():
    other_cond = {"type": "Other", "status": "True"}
    obj = stream(
        tag(),
        tag("v2"),
        status=[
            {"tag": "v2", "items": [item(D2)]},
            {"tag": "v1", "items": [], "conditions": [failure(), other_cond]},
        ],
    )
    out = with_results(obj, {"v1": Resolved("quay.io/org/img", D1)}, T0)
    v2, v1 = out["status"]["tags"]
    assert v2 == {"tag": "v2", "items": [item(D2)]}
    assert v1["conditions"] == [other_cond]


def test_long_messages_are_clipped():
    out = with_results(stream(tag()), {"v1": Failed("InternalError", "x" * 5000)}, T0)
    assert len(out["status"]["tags"][0]["conditions"][0]["message"]) == imports.MESSAGE_LIMIT


# -- pull secrets ----------------------------------------------------------------------------


def secret(auths: dict, key=".dockerconfigjson") -> dict:
    body = {"auths": auths} if key == ".dockerconfigjson" else auths
    return {"data": {key: base64.b64encode(json.dumps(body).encode()).decode()}}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_pull_secret_names_from_annotation_then_service_account():
    obj = stream(annotations={imports.PULL_SECRETS_ANNOTATION: " a, b ,,a"})
    account = {"imagePullSecrets": [{"name": "c"}, {"name": "a"}, {}, "x"]}
    assert imports.pull_secret_names(obj, account) == ["a", "b", "c"]
    assert imports.pull_secret_names(stream()) == []


def test_credentials_for_exact_host_only():
    configs = [
        imports.dockerconfig(secret({"quay.io": {"auth": b64("robot:pw")}})),
        imports.dockerconfig(
            secret({"https://index.docker.io/v1/": {"username": "hub", "password": "hp"}})
        ),
        imports.dockerconfig(secret({"127.0.0.1:5000": {"auth": b64("u:p:with:colons")}})),
    ]
    assert imports.credentials_for("quay.io", configs) == ("robot", "pw")
    assert imports.credentials_for("docker.io", configs) == ("hub", "hp")
    assert imports.credentials_for("127.0.0.1:5000", configs) == ("u", "p:with:colons")
    # never sent to another host, not even one that looks alike
    assert imports.credentials_for("quay.io.evil.example", configs) is None
    assert imports.credentials_for("ghcr.io", configs) is None


def test_credentials_first_secret_wins_and_legacy_dockercfg():
    configs = [
        imports.dockerconfig(secret({"quay.io": {"auth": b64("first:1")}})),
        imports.dockerconfig(secret({"quay.io": {"auth": b64("second:2")}})),
    ]
    assert imports.credentials_for("quay.io", configs) == ("first", "1")
    legacy = imports.dockerconfig(secret({"quay.io": {"auth": b64("old:x")}}, ".dockercfg"))
    assert imports.credentials_for("quay.io", [legacy]) == ("old", "x")


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"data": {".dockerconfigjson": "not base64!"}},
        {"data": {".dockerconfigjson": b64("not json")}},
        {"data": {".dockerconfigjson": b64("[1]")}},
    ],
)
def test_malformed_secrets_give_no_credentials(obj):
    assert imports.credentials_for("quay.io", [imports.dockerconfig(obj)]) is None


def test_helper_only_entries_give_no_credentials():
    config = {"auths": {"quay.io": {}}, "credHelpers": {"quay.io": "evil"}}
    sec = {"data": {".dockerconfigjson": b64(json.dumps(config))}}
    assert imports.credentials_for("quay.io", [imports.dockerconfig(sec)]) is None


# -- skopeo's errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stderr", "reason", "message"),
    [
        (
            'time="2026-01-01T00:00:00Z" level=fatal msg="Error parsing image name '
            '\\"docker://127.0.0.1:5000/a:nope\\": reading manifest nope in 127.0.0.1:5000/a: '
            'manifest unknown: manifest unknown"',
            "NotFound",
            "reading manifest nope in 127.0.0.1:5000/a: manifest unknown",
        ),
        (
            'level=fatal msg="Error parsing image name \\"docker://h/a:b\\": reading manifest b '
            'in h/a: unauthorized: authentication required"',
            "Unauthorized",
            None,
        ),
        (
            'level=fatal msg="pinging container registry 127.0.0.1:1: Get '
            '\\"http://127.0.0.1:1/v2/\\": dial tcp 127.0.0.1:1: connect: connection refused"',
            "InternalError",
            None,
        ),
        (
            # a port with 401 or 404 in it is no answer of that status
            'level=fatal msg="pinging container registry 127.0.0.1:40104: Get '
            '\\"http://127.0.0.1:40104/v2/\\": dial tcp 127.0.0.1:40104: connect: connection '
            'refused"',
            "InternalError",
            None,
        ),
        (
            'level=fatal msg="reading manifest v in 127.0.0.1:40104/a: denied: not allowed"',
            "Unauthorized",
            None,
        ),
        ("", "InternalError", "skopeo failed"),
        ("plain text error\n", "InternalError", "plain text error"),
    ],
)
def test_classify_skopeo_errors(stderr, reason, message):
    got = classify(stderr)
    assert got.reason == reason
    if message is not None:
        assert got.message == message


# -- configuration ---------------------------------------------------------------------------


def test_import_settings_from_env():
    from aicoe_spawner.builder.config import settings_from_env

    s = settings_from_env({})
    assert (s.import_enabled, s.import_namespaces, s.import_interval, s.import_retry) == (
        True,
        (),
        900.0,
        120.0,
    )
    s = settings_from_env(
        {
            "AICOE_BUILDER_IMPORT": "false",
            "AICOE_BUILDER_IMPORT_NAMESPACES": "a, b",
            "AICOE_BUILDER_IMPORT_INTERVAL": "60",
            "AICOE_BUILDER_IMPORT_RETRY": "5",
            "AICOE_BUILDER_IMPORT_POLL": "0.5",
        }
    )
    assert (s.import_enabled, s.import_namespaces) == (False, ("a", "b"))
    assert (s.import_interval, s.import_retry, s.import_poll) == (60.0, 5.0, 0.5)
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(SystemExit, match="AICOE_BUILDER_IMPORT_INTERVAL"):
            settings_from_env({"AICOE_BUILDER_IMPORT_INTERVAL": bad})
