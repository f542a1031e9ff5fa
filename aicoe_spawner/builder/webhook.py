"""``POST api/webhooks/github``: GitHub's release/tag events and AICoE-CI issue requests,
verified by HMAC, claimed once across replicas (:meth:`.service.BuildService.submit_once`)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from gidgethub import GitHubException

from .github import GitHub
from .github_report import (
    IssueRequest,
    can_push,
    issue_request,
    not_allowed_comment,
    owner_and_name,
    refused_comment,
)
from .github_reporter import GitHubReporter, Report
from .handlers import MAX_BODY, BaseHandler, JSONError, builds_view
from .identity import github_identity
from .requests import (
    BuildRequest,
    BuildRequestError,
    validate_ref,
    validate_repo_url,
)
from .service import Redelivery
from .store import Build

log = logging.getLogger("aicoe_spawner.builder.app")


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """GitHub's ``X-Hub-Signature-256: sha256=<hex hmac>``, compared in constant time."""
    if not secret or not header or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.encode())


def _object(payload: dict, key: str) -> dict:
    value = payload.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BuildRequestError(key, "must be a JSON object")
    return value


def webhook_request(event: str, payload: Any) -> tuple[str, str, Any] | None:
    """(repo clone URL, tag, sender login) for a release published / tag created event, None
    for other events; BuildRequestError (400) naming the field for a malformed payload."""
    if not isinstance(payload, dict):
        raise BuildRequestError("body", "must be a JSON object")
    repository, release, sender = (_object(payload, k) for k in ("repository", "release", "sender"))
    if event == "release" and payload.get("action") == "published":
        ref, ref_field = release.get("tag_name"), "release.tag_name"
    elif event == "create" and payload.get("ref_type") == "tag":
        ref, ref_field = payload.get("ref"), "ref"
    else:
        return None
    repo = repository.get("clone_url")
    if not isinstance(repo, str):
        raise BuildRequestError("repository.clone_url", "must be the repository's clone URL")
    if not isinstance(ref, str):
        raise BuildRequestError(ref_field, "must be the tag name (a string)")
    return repo, ref, sender.get("login")


@dataclass(frozen=True)
class IssueEvent:
    """An ``issues`` ``opened`` event of a "Deliver Container Image" issue."""

    owner: str
    repo: str
    clone_url: str
    number: int
    login: str
    installation: int
    request: IssueRequest


def installation_id(payload: dict) -> int:
    """The GitHub App installation that sent the event (0: none)."""
    value = _object(payload, "installation").get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def issue_event(event: str, payload: Any) -> IssueEvent | None:
    """The "Deliver Container Image" issue an ``issues`` ``opened`` event opened, None for
    every other event and issue; BuildRequestError (400) naming the field if malformed."""
    if event != "issues" or not isinstance(payload, dict) or payload.get("action") != "opened":
        return None
    issue, repository = _object(payload, "issue"), _object(payload, "repository")
    request = issue_request(issue.get("title"), issue.get("body"))
    if request is None:
        return None
    number = issue.get("number")
    if not isinstance(number, int) or isinstance(number, bool) or number <= 0:
        raise BuildRequestError("issue.number", "must be the issue's number")
    user = issue.get("user")
    login = github_identity(user.get("login") if isinstance(user, dict) else None)
    names = owner_and_name(repository.get("full_name"))
    if names is None:
        raise BuildRequestError("repository.full_name", "must be <owner>/<name>")
    clone_url = repository.get("clone_url")
    if not isinstance(clone_url, str):
        raise BuildRequestError("repository.clone_url", "must be the repository's clone URL")
    return IssueEvent(
        owner=names[0],
        repo=names[1],
        clone_url=clone_url,
        number=number,
        login=login.removeprefix("github:"),
        installation=installation_id(payload),
        request=request,
    )


class WebhookHandler(BaseHandler):
    """GitHub's ``release`` (published) and ``create`` (tag) events build the tag; an
    ``issues`` ``opened`` event of AICoE-CI's "Deliver Container Image" template builds the
    issue's ``Tag:`` when its opener can push to the repository (asked of GitHub). Builds the
    webhook started are reported back (:mod:`.github`) when a GitHub client is configured."""

    max_body = MAX_BODY

    def check_xsrf_cookie(self) -> None:  # authenticated by HMAC instead
        pass

    @property
    def github(self) -> GitHub | None:
        return self.settings.get("github")

    @property
    def reporter(self) -> GitHubReporter | None:
        return self.settings.get("github_reporter")

    async def post(self) -> None:
        body = self.body()  # 413 before the signature is checked
        secret = self.settings.get("webhook_secret") or b""
        if not verify_signature(secret, body, self.request.headers.get("X-Hub-Signature-256")):
            raise JSONError(401, "X-Hub-Signature-256: missing or invalid signature")
        event = self.request.headers.get("X-GitHub-Event", "")
        if not event:
            raise JSONError(400, "X-GitHub-Event: missing (GitHub sends the event name)")
        if event == "ping":
            return self.write_json({"message": "pong"})
        payload = self.json_body()
        try:
            found = webhook_request(event, payload)
            issue = issue_event(event, payload) if found is None else None
        except BuildRequestError as e:
            raise JSONError(e.status, str(e), e.field) from None
        if issue is not None and (self.github is None or not self.github.config.issue_builds):
            return self.write_json(
                {"message": "issue builds are off (no GitHub client, or github_issue_builds)"},
                202,
            )
        if found is None and issue is None:
            return self.write_json({"message": f"event {event[:40]!r} ignored"}, 202)
        delivery = self.request.headers.get("X-GitHub-Delivery", "")
        if not delivery or len(delivery) > 100 or not delivery.isprintable():
            raise JSONError(
                400, "X-GitHub-Delivery: missing or not a delivery id", "X-GitHub-Delivery"
            )
        service = self.service
        # A delivery, and a signed body, start at most one build, across replicas and
        # restarts: GitHub's redeliveries repeat the id, a replay repeats the (signed) body.
        keys = [f"delivery:{delivery}", "body:" + hashlib.sha256(body).hexdigest()]

        async def submit() -> str | tuple[int, list[Build]]:
            if issue is not None:
                return await self._issue(issue)  # a str: handled without a build
            repo, ref, sender = found
            request = BuildRequest(
                repo=validate_repo_url(repo, service.policy, service.resolver),
                ref=validate_ref(ref),
            )
            return await service.submit_all(request, github_identity(sender))

        try:  # not handled (an error): the claims go, GitHub's redelivery may try again
            answer = await service.submit_once(keys, submit)
        except Redelivery as e:
            return self.write_json(
                {
                    "message": f"delivery {delivery[:40]!r} was received before: no new build",
                    "build": e.build.view() if e.build else None,
                },
                200,
            )
        except BuildRequestError as e:
            raise JSONError(e.status, str(e), e.field) from None
        except GitHubException as e:  # GitHub did not answer the issue's questions
            status_code = getattr(e, "status_code", None)
            shown = f" ({int(status_code)})" if status_code else ""
            raise JSONError(502, f"GitHub{shown}: {type(e).__name__}; redeliver later") from None
        if isinstance(answer, str):  # handled without a build (the claims are kept)
            return self.write_json({"message": answer}, 200)
        status, builds = answer
        if found is not None and status == 202:
            names = owner_and_name(_object(payload, "repository").get("full_name"))
            if names is not None:
                await self._report(
                    Report(
                        owner=names[0],
                        repo=names[1],
                        sha=builds[0].spec.commit,
                        builds=tuple(b.id for b in builds),
                        clone_url=builds[0].spec.repo,
                        ref=builds[0].spec.ref,
                        installation=installation_id(payload),
                    ),
                    builds[0],
                )
        self.write_json(builds_view(builds), status)

    async def _issue(self, issue: IssueEvent) -> str | tuple[int, list[Build]]:
        """Build what the issue asks for (the status and builds), or comment why not and
        answer that. Nothing is asked of GitHub for a repository the builder may not
        build; BuildRequestError after the reason was commented."""
        service, github = self.service, self.github
        assert github is not None
        repo = validate_repo_url(issue.clone_url, service.policy, service.resolver)
        gh = await github.for_repo(issue.owner, issue.repo, issue.installation)
        key = f"issue-{issue.number}"
        where = (gh, issue.owner, issue.repo, issue.number)
        if issue.request.problem:
            reason = f"{issue.request.problem}: write the git tag to build as `Tag: 1.2.3`"
            await github.comment_once(*where, key, refused_comment(issue.login, reason))
            return f"issue #{issue.number}: {reason}"
        answer = await github.permission(gh, issue.owner, issue.repo, issue.login)
        if not can_push(answer):
            await github.comment_once(*where, key, not_allowed_comment(issue.login))
            return f"issue #{issue.number}: {issue.login} cannot push to the repository: no build"
        try:
            request = BuildRequest(repo=repo, ref=validate_ref(issue.request.tag))
            status, builds = await service.submit_all(request, github_identity(issue.login))
        except BuildRequestError as e:
            await github.comment_once(*where, key, refused_comment(issue.login, str(e)))
            raise
        await self._report(
            Report(
                owner=issue.owner,
                repo=issue.repo,
                sha=builds[0].spec.commit,
                builds=tuple(b.id for b in builds),
                clone_url=repo,
                ref=issue.request.tag,
                installation=issue.installation,
                issue=issue.number,
                login=issue.login,
            ),
            builds[0],
        )
        return status, builds

    async def _report(self, r: Report, owner: Build) -> None:
        """Keep where the builds are reported and report where they are now; GitHub's
        failure here does not fail the webhook (the build runs)."""
        reporter = self.reporter
        if reporter is None:
            return
        try:
            r = await reporter.reports.create(r, owner)
            await reporter.report(r)
        except Exception as e:
            log.warning(
                "reporting builds %s to %s/%s: %s %s",
                ",".join(r.builds),
                r.owner,
                r.repo,
                type(e).__name__,
                str(e)[:300],
            )
