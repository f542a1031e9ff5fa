"""What the builder says to GitHub and how it reads GitHub's events (pure parts of issue 19,
item 3), on GitHub's own example payloads (npm @octokit/webhooks-examples)."""

from __future__ import annotations

from types import SimpleNamespace

import gidgethub
import pytest
from harness.github_fake import check_request, webhook_example

from aicoe_devcluster.controlplane import free_port
from aicoe_spawner.builder import github_report as r
from aicoe_spawner.builder.app import issue_event
from aicoe_spawner.builder.github import GitHubConfig, RetryingGitHubAPI, github_config
from aicoe_spawner.builder.requests import BuildRequestError

TEMPLATE = (
    "Hey, AICoE-CI!\n\nPlease build and deliver the following git tag:\n\nTag: {}\n\n"
    "**IMPORTANT NOTES**\n\n- _If the tag exists ..._\n"
)


@pytest.mark.parametrize(
    ("title", "body", "expected"),
    [
        ("Deliver Container Image", TEMPLATE.format("v1.2.3"), r.IssueRequest(tag="v1.2.3")),
        ("deliver   container image ", "Tag: 0.4.0", r.IssueRequest(tag="0.4.0")),
        ("Deliver Container Image", "**Tag:** `2.0.1`\n", r.IssueRequest(tag="2.0.1")),
        ("Deliver Container Image", "tag:v3", r.IssueRequest(tag="v3")),
        ("Deliver Container Image", TEMPLATE.format("x.y.z"), "x.y.z"),
        ("Deliver Container Image", "please build it", "no `Tag:"),
        ("Deliver Container Image", None, "no `Tag:"),
        ("Spelling error in the README file", "Tag: v1", None),
        (None, "Tag: v1", None),
    ],
)
def test_the_delivery_issue_is_read_as_aicoe_ci_wrote_it(title, body, expected):
    got = r.issue_request(title, body)
    if isinstance(expected, str):
        assert got is not None and expected in got.problem and not got.tag
    else:
        assert got == expected


def test_the_issues_opened_example_is_an_ordinary_issue_until_it_is_the_template():
    p = webhook_example("issues", "opened")
    assert issue_event("issues", p) is None  # "Spelling error in the README file"
    p["issue"].update(title="Deliver Container Image", body=TEMPLATE.format("v9"))
    p["installation"] = {"id": 77}
    got = issue_event("issues", p)
    assert got is not None
    assert (got.owner, got.repo, got.number, got.login, got.installation, got.request.tag) == (
        "Codertocat",
        "Hello-World",
        p["issue"]["number"],
        p["issue"]["user"]["login"],
        77,
        "v9",
    )
    assert got.clone_url == "https://github.com/Codertocat/Hello-World.git"
    assert issue_event("issues", {**p, "action": "edited"}) is None
    assert issue_event("issue_comment", p) is None
    for field, value in (("number", "1"), ("user", {"login": "a b"})):
        bad = {**p, "issue": {**p["issue"], field: value}}
        with pytest.raises(BuildRequestError):
            issue_event("issues", bad)
    bad = {**p, "repository": {**p["repository"], "full_name": "../x"}}
    with pytest.raises(BuildRequestError, match="full_name"):
        issue_event("issues", bad)


@pytest.mark.parametrize(
    ("answer", "push"),
    [
        ({"permission": "admin"}, True),
        ({"permission": "write", "role_name": "write"}, True),
        ({"permission": "write", "role_name": "maintain"}, True),
        ({"permission": "read", "role_name": "triage"}, False),
        ({"permission": "read", "role_name": "read"}, False),
        ({"permission": "none"}, False),
        ({"permission": "read", "user": {"permissions": {"push": True}}}, True),
        ({"permission": "read", "user": {"permissions": {"push": "yes"}}}, False),
        ([], False),
        (None, False),
    ],
)
def test_only_who_can_push_may_ask(answer, push):
    assert r.can_push(answer) is push


def test_commit_statuses_say_where_the_build_is():
    assert r.commit_status("pending", "ns/a:v1") == ("pending", "ns/a:v1 is waiting to be built")
    assert r.commit_status("building", "ns/a:v1") == ("pending", "building ns/a:v1")
    assert r.commit_status("ready", "ns/a:v1") == ("success", "built ns/a:v1")
    assert r.commit_status("cancelled", "ns/a:v1")[0] == "error"
    state, text = r.commit_status("failed", "ns/a:v1", "step 3\nexit 1 " + "x" * 500)
    assert state == "failure" and len(text) == r.DESCRIPTION_LIMIT and "\n" not in text
    assert r.status_context("a", "v1") == "aicoe-image-builder/a:v1"


def test_user_text_stays_inside_its_code_block():
    reason = "```\n@everyone [click](https://evil.example) <script>\n```" + "y" * 5000
    block = r.code_block(reason)
    assert block.startswith("```text\n") and block.endswith("\n```")
    assert block.count("```") == 2  # nothing inside closes the fence
    assert len(block) < r.REASON_LIMIT + 40
    built = [r.Built("ns/a:v1", "reg/ns/a@sha256:1", "sha256:1", "failed", reason)]
    text = r.failed_comment("octo", "v1`x", built)
    assert "@everyone" not in text.split("```text", 1)[0]
    assert "`v1x`" in text  # a tag cannot break out of its code span


def test_the_delivered_comment_names_image_digest_and_launch_link():
    link = r.launch_link(
        "https://hub.example.com/", "/services/image-builder/", "https://github.com/o/r.git", "v1"
    )
    assert link == (
        "https://hub.example.com/services/image-builder/launch"
        "?repo=https%3A%2F%2Fgithub.com%2Fo%2Fr.git&ref=v1"
    )
    assert r.launch_link("", "/services/image-builder/", "https://github.com/o/r.git", "v1") == ""
    pull = r.at_digest("quay.io/org/r:v1", "sha256:ab")
    assert pull == "quay.io/org/r@sha256:ab"
    assert r.at_digest("reg:5000/org/r:v1", "sha256:ab") == "reg:5000/org/r@sha256:ab"
    text = r.delivered_comment("octo", "v1", [r.Built("ns/r:v1", pull, "sha256:ab", "ready")], link)
    assert "`quay.io/org/r@sha256:ab`" in text and "`sha256:ab`" in text and link in text
    marked = r.marked("k1", text)
    assert r.has_marker([{"body": "hi"}, {"body": marked}], "k1")
    assert not r.has_marker([{"body": marked}], "k2")


def test_the_credentials_are_read_from_files_and_never_shown(tmp_path):
    key, token = tmp_path / "key.pem", tmp_path / "token"
    key.write_text("-----BEGIN PRIVATE KEY-----\nsecret-key\n")
    token.write_text("ghp_secret\n")
    s = SimpleNamespace(
        github_token="",
        github_token_file="",
        github_app_id="",
        github_app_private_key_file="",
        github_api_url="https://ghe.example.com/api/v3",
        github_issue_builds=True,
        public_url="",
    )
    assert github_config(s, "/p/") is None  # nothing configured: no GitHub at all
    s.github_token_file = str(token)
    config = github_config(s, "/p/")
    assert config.token == "ghp_secret" and config.api_url == "https://ghe.example.com/api/v3"
    s.github_app_id, s.github_app_private_key_file = "12", str(key)
    config = github_config(s, "/p/")
    assert (config.app_id, config.token) == ("12", "")  # the App wins
    assert "secret" not in repr(config)
    s.github_app_private_key_file = ""
    with pytest.raises(SystemExit, match="go together"):
        github_config(s, "/p/")
    s.github_app_private_key_file = str(tmp_path / "missing")
    with pytest.raises(SystemExit, match="missing"):
        github_config(s, "/p/")
    assert GitHubConfig(token="t").configured and not GitHubConfig().configured


def test_retries_wait_a_bounded_time():
    gh = RetryingGitHubAPI("t", oauth_token="x", attempts=3, max_wait=5.0)
    assert gh._wait({"Retry-After": "3600"}, 1) == 5.0
    assert gh._wait({"retry-after": "2"}, 1) == 2.0
    assert gh._wait({}, 1) == 1.0 and gh._wait({}, 2) == 2.0
    assert gh._wait({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}, 1) == 0.0


async def test_github_not_answering_is_a_bounded_number_of_503s():
    gh = RetryingGitHubAPI(
        "t", oauth_token="x", base_url=f"http://127.0.0.1:{free_port()}", attempts=3, max_wait=0
    )
    sent = []
    request = gh._request

    async def counted(*args):
        sent.append(args[0])
        return await request(*args)

    gh._request = counted
    with pytest.raises(gidgethub.GitHubBroken):
        await gh.getitem("/repos/o/r/installation")
    assert sent == ["GET"] * 3
    sent.clear()
    with pytest.raises(gidgethub.GitHubBroken):  # a comment's POST: GitHub may have made it
        await gh.post("/repos/o/r/issues/1/comments", data={"body": "x"})
    assert sent == ["POST"]


def test_the_stand_in_refuses_what_github_documents_not():
    """tests/harness/github_fake.py's check, against GitHub's REST description."""
    sha = "a" * 40
    assert check_request("POST", f"/repos/o/r/statuses/{sha}", {"state": "success"}) == []
    assert check_request("POST", f"/repos/o/r/statuses/{sha}", {"state": "done"})
    assert check_request("PATCH", "/repos/o/r/issues/1", {"state": "closed"}) == []
    assert check_request("PATCH", "/repos/o/r/issues/1", {"state_reason": "fixed"})
    assert check_request("POST", "/repos/o/r/issues/1/comments", {}) != []  # body required
    assert check_request("POST", "/repos/o/r/comments-of-issue/1", {"body": "x"})
    assert check_request("GET", "/repos/o/r/collaborators/u/permission", None) == []
