"""Pure parts of the OpenShift backend (manifests, phase mapping) and of the branch TTL."""

from __future__ import annotations

import datetime

import pytest

from aicoe_spawner.builder.backends.openshift import (
    build_state,
    buildconfig_manifest,
    detect_backend,
    dockerfile_path,
)
from aicoe_spawner.builder.registration import (
    EXPIRES_ANNOTATION,
    expired,
    new_stream,
    with_tag,
    without_tags,
)
from aicoe_spawner.builder.requests import BuildRequestError, BuildSpec

D = "sha256:" + "a" * 64


def spec(**kw) -> BuildSpec:
    base = dict(
        id="b1",
        repo="https://github.com/org/nb",
        ref="main",
        commit="c" * 40,
        ref_kind="branch",
        namespace="ns",
        stream="nb",
        tag="main",
        strategy="dockerfile",
        dockerfile="Dockerfile",
        context_dir="",
        base_image="",
        output_image="r.local/ns/nb:main",
        display_name="",
        description="",
        requester="alice",
    )
    base.update(kw)
    return BuildSpec(**base)


@pytest.mark.parametrize(
    ("status", "phase", "message"),
    [
        ({}, "building", "New"),
        ({"phase": "New"}, "building", "New"),
        ({"phase": "Pending"}, "building", "Pending"),
        ({"phase": "Running"}, "building", "Running"),
        ({"phase": "Failed", "message": "boom"}, "failed", "boom"),
        ({"phase": "Failed", "reason": "FetchSourceFailed"}, "failed", "FetchSourceFailed"),
        ({"phase": "Error", "message": "evicted"}, "failed", "evicted"),
        ({"phase": "Cancelled"}, "cancelled", "cancelled"),
        ({"phase": "Complete"}, "building", "build complete; waiting for the image digest"),
        ({"phase": "Complete", "output": {"to": {"imageDigest": D}}}, "ready", ""),
        ({"phase": "Complete", "output": {"to": {"imageDigest": "sha256:x"}}}, "building", None),
    ],
)
def test_build_phase_mapping(status, phase, message):
    state = build_state({"status": status}, None, spec())
    assert state.phase == phase
    if message is not None:
        assert state.message == message


def test_no_build_is_pending_and_stream_digest_wins():
    assert build_state(None, None, spec()).phase == "pending"
    stream = {
        "status": {"tags": [{"tag": "main", "items": [{"dockerImageReference": "r/x@" + D}]}]}
    }
    state = build_state({"status": {"phase": "Complete"}}, stream, spec())
    assert (state.phase, state.digest, state.image_ref) == ("ready", D, "r/x@" + D)


def test_dockerfile_path_is_relative_to_the_context():
    assert dockerfile_path(spec(context_dir="a/b", dockerfile="a/b/c/Dockerfile")) == "c/Dockerfile"
    assert dockerfile_path(spec()) == "Dockerfile"
    with pytest.raises(BuildRequestError):
        dockerfile_path(spec(context_dir="a", dockerfile="Dockerfile"))
    bc = buildconfig_manifest(spec(strategy="source", base_image="quay.io/x/y:1", dockerfile=""))
    assert bc["spec"]["strategy"]["sourceStrategy"]["from"]["name"] == "quay.io/x/y:1"


def test_detect_backend():
    assert detect_backend(["build.openshift.io"]) == "openshift"
    assert detect_backend(["apps", "image.openshift.io"]) == "kubernetes"


def test_expiry_annotation_and_expired_tags():
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    s = spec()
    stream = with_tag(new_stream(s), s, "ready", expires_at=now)
    stream = with_tag(stream, spec(tag="v1", ref="v1", ref_kind="tag", id="b2"), "ready")
    ann = {t["name"]: t["annotations"] for t in stream["spec"]["tags"]}
    assert ann["main"][EXPIRES_ANNOTATION] == "2025-01-01T00:00:00Z"
    assert EXPIRES_ANNOTATION not in ann["v1"]
    assert expired(stream, now - datetime.timedelta(seconds=1)) == []
    assert expired(stream, now) == [("main", "b1")]
    stream["status"] = {"tags": [{"tag": "main"}, {"tag": "v1"}]}
    left = without_tags(stream, {"main"})
    assert [t["name"] for t in left["spec"]["tags"]] == ["v1"]
    assert left["status"]["tags"] == [{"tag": "v1"}]
    # a tag build of the same name drops the expiry; no `from` on OpenShift
    again = with_tag(stream, spec(ref_kind="tag"), "ready", image_from=False)
    tag = next(t for t in again["spec"]["tags"] if t["name"] == "main")
    assert EXPIRES_ANNOTATION not in tag["annotations"]
    bad = {"spec": {"tags": [{"name": "x", "annotations": {EXPIRES_ANNOTATION: "soon"}}]}}
    assert expired(bad, now) == []
