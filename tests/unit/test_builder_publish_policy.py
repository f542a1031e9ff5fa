"""Who may publish to an ImageStream and tag (issue 18: S1, S7, S10), as pure functions: the
publish refusal naming the option, the refs a repository publishes, the names a request or a
repository chooses (never a repository's default name), and what a failed or cancelled first
build leaves."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from aicoe_spawner.builder.ci_config import parse_ci_configs
from aicoe_spawner.builder.git import published_ref
from aicoe_spawner.builder.imagestream import (
    abandoned,
    after_end,
    new_stream,
    with_status_tag,
    with_tag,
)
from aicoe_spawner.builder.naming import (
    hashed_stream_name,
    project_stream_name,
    requester_prefix,
    requester_stream_name,
    stream_name_for,
)
from aicoe_spawner.builder.publish import (
    OPTIONS_ANNOTATION,
    content_options,
    is_webhook,
    owned_streams,
    publisher_of,
    refusal,
    tag_options,
)
from aicoe_spawner.builder.requests import (
    BuildDefaults,
    BuildRequestError,
    RepoPolicy,
    parse_build_request,
    resolve_spec,
)

SHA = "c" * 40
REPO = "https://github.com/alice/nb"
POLICY = RepoPolicy(allowed_hosts=("github.com",))
DNS = {"github.com": ["140.82.112.3"]}
D1 = "sha256:" + "1" * 64


def spec(user="alice", ref="v1", ci=None, repo=REPO, **body):
    request = parse_build_request({"repo": repo, "ref": ref, **body}, POLICY, DNS.get)
    return resolve_spec(request, SHA, "tag", ci, BuildDefaults(namespace="ns"), user)


def published(s, digest=D1):
    """The stream after ``s`` built and pushed its tag."""
    return with_status_tag(with_tag(new_stream(s), s, "ready"), s, digest)


# -- S1: who may publish ------------------------------------------------------------------


def test_the_stream_records_its_publisher_and_each_tag_its_options():
    s = spec(strategy="source", base_image="quay.io/alice/base:1")
    stream = published(s)
    assert publisher_of(stream) == "alice"
    assert (
        tag_options(stream, "v1")
        == content_options(s)
        == {
            "strategy": "source",
            "dockerfile": "",
            "context_dir": "",
            "base_image": "quay.io/alice/base:1",
        }
    )
    assert tag_options(stream, "v2") is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"strategy": "source", "base_image": "quay.io/bob/evil:1"}, "strategy"),
        ({"dockerfile": "evil/Dockerfile"}, "dockerfile"),
        ({"context_dir": "evil"}, "context_dir"),
    ],
)
def test_anyone_else_changing_the_content_of_a_tag_is_refused_naming_the_option(body, field):
    stream = published(spec())
    bob = spec(user="bob", **body)
    error = refusal(stream, bob, content_options(spec(user="bob")))
    assert isinstance(error, BuildRequestError)
    assert (error.status, error.field) == (409, field)
    assert "alice" in error.why and "only the publisher may change it" in error.why
    assert "choose another name" in error.why


def test_what_may_publish():
    alice_custom = spec(base_image="quay.io/alice/base:1", strategy="source")
    stream = published(alice_custom)
    defaults = content_options(spec())
    # the same content as published: anyone (they follow the existing build)
    assert (
        refusal(
            stream,
            spec(user="bob", base_image="quay.io/alice/base:1", strategy="source"),
            defaults,
        )
        is None
    )
    # the repository's defaults over a tag published with other options: refused
    assert refusal(stream, spec(user="bob"), defaults).field == "strategy"
    # its publisher, an admin, the repository's webhook: anything
    assert refusal(stream, spec(user="alice"), defaults) is None
    assert refusal(stream, replace(spec(user="root"), publisher_rights=True), defaults) is None
    # no stream yet: whoever builds first publishes it
    assert refusal(None, spec(user="bob", dockerfile="x/Dockerfile"), defaults) is None
    # a new tag: the repository's defaults only
    assert refusal(stream, spec(user="bob", ref="v2"), defaults) is None
    assert refusal(stream, spec(user="bob", ref="v2", context_dir="x"), defaults).field == (
        "context_dir"
    )
    # the re-check on write compares only tags that record their options
    assert refusal(stream, spec(user="bob", ref="v2", context_dir="x")) is None


def test_only_a_webhook_identity_carries_the_repositorys_rights():
    assert is_webhook("github:octo")
    assert not is_webhook("alice") and not is_webhook("user:github:octo")


def test_streams_written_before_the_publisher_annotation_keep_their_creator():
    stream = published(spec())
    del stream["metadata"]["annotations"]["aicoe-spawner.io/publisher"]
    assert publisher_of(stream) == "alice"
    del stream["spec"]["tags"][0]["annotations"][OPTIONS_ANNOTATION]
    # a tag without recorded options is held to the repository's defaults
    assert refusal(stream, spec(user="bob"), content_options(spec())) is None
    assert refusal(stream, spec(user="bob", context_dir="x"), content_options(spec())).field == (
        "context_dir"
    )


def test_owned_streams_counts_a_publisher():
    streams = [published(spec()), published(spec(repo="https://github.com/a/b")), {}]
    assert owned_streams(streams, "alice") == 2 and owned_streams(streams, "bob") == 0


# -- refs the repository publishes -----------------------------------------------------


TIP, PEELED, OLD, PR = "1" * 40, "2" * 40, "3" * 40, "4" * 40
REFS = {
    "HEAD": TIP,
    "refs/heads/main": TIP,
    "refs/tags/v1": "5" * 40,
    "refs/tags/v1^{}": PEELED,
    "refs/pull/7/head": PR,
    "refs/merge-requests/3/head": OLD,
}


def test_branches_tags_and_their_tips_are_published():
    assert published_ref(REFS, "main", REPO) == (TIP, "branch")
    assert published_ref(REFS, "v1", REPO) == (PEELED, "tag")
    assert published_ref(REFS, "refs/heads/main", REPO) == (TIP, "branch")
    assert published_ref(REFS, TIP, REPO) == (TIP, "commit")
    assert published_ref(REFS, PEELED, REPO) == (PEELED, "commit")  # an annotated tag's


@pytest.mark.parametrize(
    "ref",
    ["refs/pull/7/head", "refs/merge-requests/3/head", "refs/changes/1", PR, OLD, "9" * 64],
)
def test_pull_requests_and_unadvertised_commits_are_refused(ref):
    with pytest.raises(BuildRequestError) as info:
        published_ref(REFS, ref, REPO)
    assert (info.value.status, info.value.field) == (422, "ref")
    assert str(info.value).startswith("ref: ")


# -- S10: names ------------------------------------------------------------------------


def test_a_requested_name_lives_under_its_requester():
    assert spec(name="tools").stream == "alice--tools"
    assert spec(user="bob", name="tools").stream == "bob--tools"
    # identities that are no DNS label get a hash: two of them never share a prefix
    assert re.fullmatch(r"github-octo-[0-9a-f]{10}", requester_prefix("github:octo"))
    assert requester_prefix("a.b") != requester_prefix("a_b")
    assert len(requester_stream_name("x" * 100, "y" * 100)) <= 63


def test_a_chosen_name_is_never_a_default_name():
    """Default names never hold ``--``; request names hold ``--`` once, not followed by
    ``-``; project names ``---``: the three kinds never meet."""
    repos = [
        "https://github.com/alice/nb",
        "https://github.com/alice--x/nb--y",
        "https://github.com/a-b/c",
        "https://github.com/" + "z" * 90 + "/q",
    ]
    defaults = {f(r) for r in repos for f in (stream_name_for, hashed_stream_name)}
    assert all("--" not in d for d in defaults)
    # a request may ask for any repository's default name: it gets its own
    for target in defaults:
        for user in ("alice", "bob", "github:octo"):
            assert spec(user=user, name=target).stream not in defaults
    chosen = {requester_stream_name(u, n) for u in ("alice", "bob") for n in ("x", "nb")}
    projects = {project_stream_name(r, p) for r in repos for p in ("x", "nb")}
    assert not chosen & projects
    for name in chosen:
        head, _, tail = name.partition("--")
        assert head and tail and not tail.startswith("-")
    for name in projects:
        assert "---" in name and len(name) <= 63


def test_registry_project_lives_under_the_repositorys_default_name():
    [ci] = parse_ci_configs("build:\n  registry-project: alice-tools\n")
    assert spec(ci=ci).stream == "alice-nb---alice-tools"
    assert spec(user="github:octo", ci=ci).stream == "alice-nb---alice-tools"  # per repo


# -- S7: what a first build leaves -----------------------------------------------------


def test_a_failed_or_cancelled_first_build_leaves_nothing():
    s = spec()
    pending = with_tag(new_stream(s), s, "pending")
    for phase in ("failed", "cancelled"):
        assert after_end(pending, s, phase, "boom") is None
    # a tag that serves keeps serving; another build's tag stays
    served = published(s)
    again = after_end(served, replace(s, id="other"), "failed", "boom")
    assert again is not None and again["status"] == served["status"]
    v2 = spec(ref="v2")
    both = with_tag(served, v2, "pending")
    left = after_end(both, v2, "cancelled")
    assert [t["name"] for t in left["spec"]["tags"]] == ["v1"]


def test_a_stream_enters_the_catalog_with_its_first_ready_tag():
    s = spec()
    label = "opendatahub.io/notebook-image"
    assert label not in with_tag(new_stream(s), s, "building")["metadata"]["labels"]
    assert published(s)["metadata"]["labels"][label] == "true"


def test_a_stream_no_build_writes_and_that_never_served_is_abandoned():
    import datetime

    s = spec()
    stream = with_tag(new_stream(s), s, "building")
    stream["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
    now = datetime.datetime(2025, 1, 1, 0, 10, tzinfo=datetime.UTC)
    assert abandoned(stream, set(), now, 300)
    assert not abandoned(stream, {(s.stream, "v1")}, now, 300)  # a build still writes it
    assert not abandoned(stream, set(), now, 3600)  # within the grace
    assert not abandoned(published(s) | {"metadata": stream["metadata"]}, set(), now, 300)
