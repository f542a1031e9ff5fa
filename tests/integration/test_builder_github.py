"""GitHub, both ways (issue 19, item 3): the builder's webhook receives GitHub's own example
payloads (npm @octokit/webhooks-examples), asks a local stand-in of GitHub's REST API
(tests/harness/github_fake.py; every request checked against npm @octokit/openapi) whether the
issue's opener can push, builds against the real API server, and reports back: commit
statuses, one comment with the image, its digest and the launch link, the issue closed; a
failure comments the reason and leaves it open. The builder acts as a GitHub App (JWT →
installation token) against a GitHub Enterprise style API URL, or with a token. No build runs:
the test plays the Job controller (``complete_job``) or deletes the Job."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import pytest_asyncio
from harness.builder import BuilderProcess, BuilderStack, api_call, github_signature
from harness.git import GitServer
from harness.github_fake import FakeGitHub, Fault, webhook_example
from harness.jobs import complete_job
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import free_port
from aicoe_spawner.builder.github import GitHub, GitHubConfig
from aicoe_spawner.builder.github_reporter import GitHubReporter, ReportStore

pytestmark = pytest.mark.integration
SECRET = b"github-webhook-secret"
PUBLIC = "https://jupyter.example.com"
TEMPLATE_BODY = (
    "Hey, AICoE-CI!\n\nPlease build and deliver the following git tag:\n\nTag: {tag}\n\n"
    "**IMPORTANT NOTES**\n"
)


class Env:
    pass


async def make_env(kube, tmp_path, *, prefix: str, token_auth: bool):
    e = Env()
    e.namespace = f"t-bgh-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": e.namespace}})
    e.kube = kube
    e.git = GitServer(tmp_path / "git")
    e.github = FakeGitHub(prefix=prefix)
    await e.github.start()
    config = GitHubConfig(
        api_url=e.github.url,
        app_id="" if token_auth else e.github.app_id,
        private_key="" if token_auth else e.github.private_key_pem,
        token=e.github.token if token_auth else "",
        public_url=PUBLIC,
        max_wait=0.2,
    )
    holder: dict = {}
    reporter = GitHubReporter(
        GitHub(config), ReportStore(kube, e.namespace), lambda i: holder["s"].record(i)
    )
    port = free_port()
    e.stack = BuilderStack(
        kube,
        e.namespace,
        "registry.local:5000",
        tmp_path,
        token="unused-token",
        hub_url="http://127.0.0.1:9",  # no hub: the webhook needs none
        port=port,
        webhook_secret=SECRET,
        app_options={"github": reporter.github, "github_reporter": reporter},
        max_per_user=20,
        max_total=40,
    )
    holder["s"] = e.service = e.stack.service
    e.service.observers.append(reporter)
    e.reporter = reporter
    e.url = f"http://127.0.0.1:{port}/services/image-builder/"
    return e


async def close_env(e) -> None:
    await e.stack.stop()
    await e.github.stop()
    e.git.stop()
    await delete_namespace(e.kube, e.namespace)


@pytest_asyncio.fixture(scope="module")
async def env(kube, tmp_path_factory):
    """The builder as a GitHub App, GitHub at a GitHub Enterprise style ``/api/v3``."""
    e = await make_env(
        kube, tmp_path_factory.mktemp("builder-github"), prefix="/api/v3", token_auth=False
    )
    yield e
    await close_env(e)


def issue_payload(e, repo: str, tag: str, login: str = "Codertocat", number: int = 1) -> dict:
    """GitHub's example ``issues`` ``opened`` payload, as AICoE-CI's template opens it, for
    the local repository ``repo`` (full name Codertocat/<repo>)."""
    p = webhook_example("issues", "opened")
    p["issue"].update(
        title="Deliver Container Image", body=TEMPLATE_BODY.format(tag=tag), number=number
    )
    p["issue"]["user"]["login"] = p["sender"]["login"] = login
    p["repository"].update(full_name=f"Codertocat/{repo}", name=repo, clone_url=e.git.url(repo))
    p["installation"] = {
        "id": e.github.installation,
        "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNDI=",
    }
    return p


async def deliver(e, event: str, payload: dict, delivery: str, secret: bytes = SECRET):
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": github_signature(body, secret),
        "Content-Type": "application/json",
    }
    return await api_call(e.url, "POST", "api/webhooks/github", data=body, headers=headers)


async def records(e) -> list[str]:
    return sorted(b.id for b in await e.service.store.list())


def new_calls(e, since: int) -> list[tuple[str, str]]:
    return e.github.routes()[since:]


async def test_an_issue_from_a_pusher_builds_reports_comments_and_closes(env):
    e = env
    gh = e.github
    sha = e.git.create_repo("Hello-World", {"Dockerfile": "FROM busybox\n"}, tag="v1")
    gh.permissions["Codertocat"] = "write"
    payload = issue_payload(e, "Hello-World", "v1")
    status, build = await deliver(e, "issues", payload, "delivery-issue-1")
    assert status == 202, build
    assert (build["requester"], build["ref"], build["commit"]) == ("github:Codertocat", "v1", sha)
    await gh.wait_for(lambda: len(gh.statuses) == 1)
    base = "/repos/Codertocat/Hello-World"
    assert gh.routes() == [
        ("POST", f"/app/installations/{gh.installation}/access_tokens"),
        ("GET", f"{base}/collaborators/Codertocat/permission"),
        ("POST", f"{base}/statuses/{sha}"),
    ]
    assert gh.calls[0].auth == "jwt"  # the App's JWT, exchanged for the installation token
    assert {c.auth for c in gh.calls[1:]} == {f"token {t}" for t in gh.issued}
    launch = (
        f"{PUBLIC}/services/image-builder/launch?repo="
        + e.git.url("Hello-World").replace(":", "%3A").replace("/", "%2F")
        + "&ref=v1"
    )
    context = f"aicoe-image-builder/{build['image'].split('/', 1)[1]}"
    assert gh.statuses[0] == {
        "state": "pending",
        "description": f"{build['image']} is waiting to be built",
        "context": context,
        "target_url": launch,
        "sha": sha,
    }
    digest = "sha256:" + "ab" * 32
    await complete_job(e.kube, e.namespace, build["id"], digest)
    await gh.wait_for(lambda: 1 in gh.closed)
    assert gh.statuses[-1]["state"] == "success" and gh.statuses[-1]["context"] == context
    assert {s["state"] for s in gh.statuses} <= {"pending", "success"}
    assert gh.routes()[-3:] == [
        ("GET", f"{base}/issues/1/comments"),
        ("POST", f"{base}/issues/1/comments"),
        ("PATCH", f"{base}/issues/1"),
    ]
    assert gh.calls[-1].body == {"state": "closed", "state_reason": "completed"}
    [comment] = gh.comments[1]
    text = comment["body"]
    assert text.startswith("<!-- aicoe-image-builder:")
    assert f"**{build['image']}**" in text and f"`{digest}`" in text
    assert f"`registry.local:5000/{e.namespace}/hello-world@{digest}`" in text
    assert f"Launch it: {launch}" in text
    assert gh.violations == []
    # a redelivery, and a replay of the signed body under another id, change nothing
    before, count = await records(e), len(gh.calls)
    assert (await deliver(e, "issues", payload, "delivery-issue-1"))[0] == 200
    assert (await deliver(e, "issues", payload, "delivery-issue-1-replay"))[0] == 200
    await e.service.observed()
    assert (await records(e), len(gh.calls)) == (before, count)


async def test_someone_who_cannot_push_gets_a_comment_and_no_build(env):
    e = env
    gh = e.github
    e.git.create_repo("Polite", {"Dockerfile": "FROM busybox\n"}, tag="v1")
    gh.permissions["reader"] = "read"
    base = "/repos/Codertocat/Polite"
    for number, login in ((7, "reader"), (8, "stranger")):  # read; not a collaborator (404)
        before, since = await records(e), len(gh.calls)
        payload = issue_payload(e, "Polite", "v1", login=login, number=number)
        status, body = await deliver(e, "issues", payload, f"delivery-polite-{number}")
        assert status == 200 and "cannot push" in body["message"], body
        assert new_calls(e, since) == [
            ("GET", f"{base}/collaborators/{login}/permission"),
            ("GET", f"{base}/issues/{number}/comments"),
            ("POST", f"{base}/issues/{number}/comments"),
        ]
        [comment] = gh.comments[number]
        assert f"@{login}: thank you" in comment["body"] and "can push" in comment["body"]
        assert number not in gh.closed and await records(e) == before
    # the template's placeholder tag: a comment asking for the tag, no permission asked
    since = len(gh.calls)
    payload = issue_payload(e, "Polite", "x.y.z", login="reader", number=9)
    status, body = await deliver(e, "issues", payload, "delivery-polite-9")
    assert status == 200 and "x.y.z" in body["message"]
    assert [m for m, _ in new_calls(e, since)] == ["GET", "POST"]
    assert "Tag: 1.2.3" in gh.comments[9][0]["body"]
    assert gh.violations == []


async def test_a_failed_build_comments_the_reason_and_leaves_the_issue_open(env):
    e = env
    gh = e.github
    sha = e.git.create_repo("Broken", {"Dockerfile": "FROM busybox\n"}, tag="v2")
    gh.permissions["Codertocat"] = "write"
    payload = issue_payload(e, "Broken", "v2", number=3)
    status, build = await deliver(e, "issues", payload, "delivery-broken-3")
    assert status == 202, build
    await gh.wait_for(lambda: any(s["sha"] == sha for s in gh.statuses))
    await client.BatchV1Api(e.kube).delete_namespaced_job(
        f"imgbuild-{build['id']}", e.namespace, propagation_policy="Background"
    )
    await gh.wait_for(lambda: 3 in gh.comments)
    await e.service.observed()
    mine = [s for s in gh.statuses if s["sha"] == sha]
    assert mine[-1]["state"] == "failure" and "failed" in mine[-1]["description"]
    [comment] = gh.comments[3]
    assert "could not be built" in comment["body"] and "stays open" in comment["body"]
    assert "```text\nthe build job is gone" in comment["body"]
    assert 3 not in gh.closed
    assert gh.violations == []


async def test_github_faults_are_retried_within_bounds_and_never_comment_twice(env):
    e = env
    gh = e.github
    sha = e.git.create_repo("Faulty", {"Dockerfile": "FROM busybox\n"}, tag="v3")
    gh.permissions["Codertocat"] = "admin"
    base = "/repos/Codertocat/Faulty"
    reset = str(int(time.time()))
    gh.faults += [
        # the primary rate limit, then a server error, on the permission check
        Fault(
            "GET",
            f"{base}/collaborators/Codertocat/permission",
            403,
            {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset, "X-RateLimit-Limit": "5000"},
        ),
        Fault("GET", f"{base}/collaborators/Codertocat/permission", 502),
        Fault("POST", f"{base}/statuses/{sha}", 429, {"Retry-After": "0"}),
        # GitHub made the comment but answered 500: it is not posted again
        Fault("POST", f"{base}/issues/4/comments", 500, then_apply=True),
    ]
    since = len(gh.calls)
    status, build = await deliver(e, "issues", issue_payload(e, "Faulty", "v3", number=4), "d-f4")
    assert status == 202, build
    await gh.wait_for(lambda: any(s["sha"] == sha for s in gh.statuses))
    assert new_calls(e, since)[:4] == [
        ("GET", f"{base}/collaborators/Codertocat/permission"),
        ("GET", f"{base}/collaborators/Codertocat/permission"),
        ("GET", f"{base}/collaborators/Codertocat/permission"),
        ("POST", f"{base}/statuses/{sha}"),
    ]
    await complete_job(e.kube, e.namespace, build["id"], "sha256:" + "cd" * 32)
    await gh.wait_for(lambda: 4 in gh.closed)
    assert len(gh.comments[4]) == 1
    calls = new_calls(e, since)
    assert calls.count(("POST", f"{base}/issues/4/comments")) == 1
    assert calls.count(("GET", f"{base}/issues/4/comments")) == 2  # looked again after the 500
    assert gh.faults == [] and gh.violations == []
    # GitHub down for good: bounded attempts, logged, never raised
    gh.faults += [Fault("POST", f"{base}/statuses/{sha}", 503) for _ in range(10)]
    since = len(gh.calls)
    record = await e.service.record(build["id"])
    await e.service._observe(e.reporter, record, "building")  # as the service runs it
    assert len(gh.faults) == 10 - e.reporter.config.attempts
    assert new_calls(e, since) == [("POST", f"{base}/statuses/{sha}")] * e.reporter.config.attempts
    gh.faults.clear()


async def test_github_down_during_an_issue_is_a_502_and_a_redelivery_builds(env):
    e = env
    gh = e.github
    e.git.create_repo("Down", {"Dockerfile": "FROM busybox\n"}, tag="v7")
    gh.permissions["Codertocat"] = "write"
    permission = "/repos/Codertocat/Down/collaborators/Codertocat/permission"
    attempts = e.reporter.config.attempts
    gh.faults += [Fault("GET", permission, 502) for _ in range(attempts)]
    payload = issue_payload(e, "Down", "v7", number=13)
    before = await records(e)
    status, body = await deliver(e, "issues", payload, "down-13")
    assert status == 502 and "GitHub (502)" in body["message"], body
    assert gh.routes().count(("GET", permission)) == attempts and not gh.faults
    assert await records(e) == before and 13 not in gh.comments
    status, build = await deliver(e, "issues", payload, "down-13")  # GitHub's redelivery
    assert status == 202 and build["ref"] == "v7", build
    assert gh.violations == []


async def test_an_answer_github_refused_is_posted_by_the_next_sweep_once(env):
    e = env
    gh = e.github
    e.git.create_repo("Later", {"Dockerfile": "FROM busybox\n"}, tag="v6")
    gh.permissions["Codertocat"] = "write"
    comments = "/repos/Codertocat/Later/issues/12/comments"
    status, build = await deliver(e, "issues", issue_payload(e, "Later", "v6", number=12), "l-12")
    assert status == 202, build
    attempts = e.reporter.config.attempts
    gh.faults += [Fault("GET", comments, 503) for _ in range(attempts)]
    await complete_job(e.kube, e.namespace, build["id"], "sha256:" + "77" * 32)
    await gh.wait_for(lambda: not gh.faults)
    await e.service.observed()
    assert 12 not in gh.comments and 12 not in gh.closed
    assert gh.routes().count(("GET", comments)) == attempts  # bounded, then given up
    assert await e.reporter.sweep() == 1  # GitHub is back
    assert len(gh.comments[12]) == 1 and gh.closed[12] == "completed"
    assert await e.reporter.sweep() == 0
    assert len(gh.comments[12]) == 1 and gh.violations == []


async def test_unsigned_unknown_and_disallowed_deliveries_do_nothing(env):
    e = env
    gh = e.github
    e.git.create_repo("Quiet", {"Dockerfile": "FROM busybox\n"}, tag="v1")
    before, since = await records(e), len(gh.calls)
    payload = issue_payload(e, "Quiet", "v1", number=5)
    assert (await deliver(e, "issues", payload, "q-1", secret=b"wrong"))[0] == 401
    other = webhook_example("issues", "opened")  # an ordinary issue
    assert (await deliver(e, "issues", other, "q-2"))[0] == 202
    edited = webhook_example("issues", "edited")
    assert (await deliver(e, "issues", edited, "q-3"))[0] == 202
    assert (await deliver(e, "star", {"action": "created"}, "q-4"))[0] == 202
    far = issue_payload(e, "Quiet", "v1", number=6)
    far["repository"]["clone_url"] = "http://10.20.30.40/Codertocat/Quiet.git"
    status, body = await deliver(e, "issues", far, "q-5")
    assert status == 400 and body["field"] == "repo"
    assert (await records(e), new_calls(e, since)) == (before, [])


async def test_a_release_reports_commit_statuses_with_a_token(kube, tmp_path):
    """A token instead of an App, GitHub at api.github.com's paths; a release's build is
    reported as commit statuses only (no issue)."""
    e = await make_env(kube, tmp_path, prefix="", token_auth=True)
    try:
        gh = e.github
        sha = e.git.create_repo("Released", {"Dockerfile": "FROM busybox\n"}, tag="v4")
        p = webhook_example("release", "published")
        p["release"]["tag_name"] = "v4"
        p["repository"].update(full_name="Codertocat/Released", clone_url=e.git.url("Released"))
        p.pop("installation", None)
        status, build = await deliver(e, "release", p, "release-1")
        assert status == 202 and build["commit"] == sha, build
        await gh.wait_for(lambda: len(gh.statuses) == 1)
        await complete_job(e.kube, e.namespace, build["id"], "sha256:" + "ef" * 32)
        await gh.wait_for(lambda: gh.statuses[-1]["state"] == "success")
        await e.service.observed()
        assert set(gh.routes()) == {("POST", f"/repos/Codertocat/Released/statuses/{sha}")}
        assert {c.auth for c in gh.calls} == {f"token {gh.token}"}
        assert gh.comments == {} and gh.violations == []
    finally:
        await close_env(e)


async def test_the_builder_process_acts_as_the_github_app_it_is_configured_as(
    kube, control_plane, tmp_path
):
    """``python -m aicoe_spawner.builder`` with the App's ID, its key in a file and the API
    URL from environment variables (as the chart sets them): the issue is built, reported,
    answered and closed; neither the key nor a token reaches the builder's log."""
    namespace = f"t-bghp-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    git = GitServer(tmp_path / "git")
    gh = FakeGitHub(prefix="/api/v3")
    await gh.start()
    key = tmp_path / "app-key.pem"
    key.write_text(gh.private_key_pem)
    builder = BuilderProcess(
        tmp_path,
        control_plane.kubeconfig,
        namespace,
        token="unused-token",
        hub_url="http://127.0.0.1:9",
        port=free_port(),
        AICOE_BUILDER_WEBHOOK_SECRET=SECRET.decode(),
        AICOE_BUILDER_CHECK_IMAGE="false",
        AICOE_BUILDER_GITHUB_API_URL=gh.url,
        AICOE_BUILDER_GITHUB_APP_ID=gh.app_id,
        AICOE_BUILDER_GITHUB_APP_PRIVATE_KEY_FILE=str(key),
        AICOE_BUILDER_PUBLIC_URL=PUBLIC,
    )
    try:
        await builder.start()
        e = Env()
        e.git, e.github, e.url = git, gh, builder.url
        sha = git.create_repo("Proc", {"Dockerfile": "FROM busybox\n"}, tag="v5")
        gh.permissions["Codertocat"] = "maintain"
        status, build = await deliver(e, "issues", issue_payload(e, "Proc", "v5", number=11), "p-1")
        assert status == 202, build
        await gh.wait_for(lambda: len(gh.statuses) == 1)
        assert gh.statuses[0]["sha"] == sha and gh.statuses[0]["state"] == "pending"
        assert gh.statuses[0]["target_url"].startswith(f"{PUBLIC}/services/image-builder/launch?")
        await complete_job(kube, namespace, build["id"], "sha256:" + "12" * 32)
        await gh.wait_for(lambda: 11 in gh.closed)
        assert gh.statuses[-1]["state"] == "success" and len(gh.comments[11]) == 1
        assert gh.violations == []
        log = builder.log_path.read_text(errors="replace")
        assert "GitHub at " in log
        secrets_seen = [gh.private_key_pem.splitlines()[1], *gh.issued]
        assert not [s for s in secrets_seen if s in log]
    finally:
        await builder.stop()
        await gh.stop()
        git.stop()
        await delete_namespace(kube, namespace)
