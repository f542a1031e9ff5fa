"""The builder talking to GitHub (I/O): a gidgethub client authenticated as a GitHub App
(JWT → installation token) or with a token, against a configurable API URL (GitHub
Enterprise: ``https://<host>/api/v3``), and :class:`GitHubReporter`, the build observer that
reports back: a commit status per image (pending → success/failure/error, linked to the
build's launch link) and, for an issue-triggered build, one comment with the images, their
digests and the launch link, and the issue closed (a failure comments the reason and leaves it
open).

What to report about a build survives restarts and is shared by replicas: the webhook handler
writes a *report* ConfigMap (``imgbuild-github-<hash>``, labelled with its builds' ids) naming
the repository, commit, installation and issue. The service calls :meth:`build_changed` on the
one replica whose status write changed a build's phase. The comment is claimed in the
ConfigMap (a resourceVersion precondition) before it is posted, and every comment carries a
hidden marker that is looked for before posting again, so an issue never gets a second one.

GitHub's answers: 5xx, 429 and rate-limit 403s are retried a few times (bounded waits);
anything else is logged and dropped. Tokens and the App key never reach a log or a record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import gidgethub
import gidgethub.apps
import gidgethub.tornado
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from tornado import httpclient

from . import github_report as report
from .store import TERMINAL, Build
from .vocabulary import MANAGED_BY, L

log = logging.getLogger("aicoe_spawner.builder.github")

REPORT_LABEL = f"{L}github-build"  # one per build id the report covers: <id>=true
REPORT_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},{L}record=github-report"
ANSWER_LABEL = f"{L}github-answer"  # an issue's report: waiting (to be answered) | done
SWEEP_INTERVAL = 300.0  # seconds between looks for issues left unanswered (GitHub was down)
REQUESTER = "aicoe-image-builder"  # gidgethub's User-Agent
REQUEST_TIMEOUT = 20.0  # seconds per request to GitHub
MAX_COMMENTS_READ = 300  # an issue's comments looked through for ours (it comments early)


class GitHubError(Exception):
    """GitHub did not do what was asked (after the bounded retries)."""


@dataclass(frozen=True)
class GitHubConfig:
    """How the builder reaches GitHub. ``app_id`` + ``private_key``: as a GitHub App;
    ``token``: as a user or bot token. ``public_url``: the hub's address seen by GitHub's
    users, for links ("" = no links)."""

    api_url: str = "https://api.github.com"
    app_id: str = ""
    private_key: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    issue_builds: bool = True
    public_url: str = ""
    prefix: str = "/services/image-builder/"
    attempts: int = 4  # per request, for 5xx, 429 and rate-limit answers
    max_wait: float = 30.0  # seconds, at most, before one retry

    @property
    def configured(self) -> bool:
        return bool(self.token or (self.app_id and self.private_key))


def github_config(s: Any, prefix: str) -> GitHubConfig | None:
    """The GitHub configuration of the builder's settings (key and token files read now),
    None when neither an App nor a token is configured; SystemExit naming what is wrong."""
    token, key = s.github_token, ""
    try:
        if s.github_token_file:
            with open(s.github_token_file, encoding="utf-8") as f:
                token = f.read().strip()
        if s.github_app_private_key_file:
            with open(s.github_app_private_key_file, encoding="utf-8") as f:
                key = f.read()
    except OSError as e:
        raise SystemExit(f"GitHub credentials: {e.filename}: {e.strerror}") from None
    if bool(s.github_app_id) != bool(key):
        raise SystemExit("github_app_id and github_app_private_key_file go together")
    config = GitHubConfig(
        api_url=s.github_api_url,
        app_id=s.github_app_id,
        private_key=key,
        token="" if key else token,
        issue_builds=s.github_issue_builds,
        public_url=s.public_url,
        prefix=prefix,
    )
    return config if config.configured else None


class RetryingGitHubAPI(gidgethub.tornado.GitHubAPI):
    """gidgethub's tornado client retrying 5xx, 429 and rate-limit answers a bounded number
    of times (``Retry-After`` or the reset time, capped). A comment's POST is never retried
    here: GitHub may have made it (the reporter looks for its marker first)."""

    def __init__(self, *args: Any, attempts: int, max_wait: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attempts = attempts
        self.max_wait = max_wait

    async def _request(self, method, url, headers, body=b""):
        """As gidgethub's tornado client, but a POST may have an empty body (the token
        exchange), every request has a timeout, and GitHub not answering is a 503 (retried
        as one)."""
        request = httpclient.HTTPRequest(
            url,
            method=method,
            headers=dict(headers),
            body=None if method in ("GET", "DELETE") else body,
            request_timeout=REQUEST_TIMEOUT,
        )
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, httpclient.HTTPClientError) as e:
            log.warning("GitHub: %s %s: %s", method, url.split("?")[0], type(e).__name__)
            return 503, {}, b""
        if response.code == 599:  # tornado's "no answer" (timeout, connection refused)
            return 503, {}, b""
        return response.code, response.headers, response.body

    async def handle_rate_limit_error(self, *, method, url, exception, attempt) -> bool:
        status = int(getattr(exception, "status_code", 0) or 0)
        limited = isinstance(exception, gidgethub.RateLimitExceeded) or status == 429
        headers = getattr(exception, "headers", None) or {}
        if status == 403 and "retry-after" in {k.lower() for k in headers}:
            limited = True  # a secondary rate limit
        if not (limited or status >= 500) or attempt >= self.attempts:
            return False
        if method == "POST" and url.rstrip("/").endswith("/comments"):
            return False
        await self.sleep(self._wait(headers, attempt))
        return True

    def _wait(self, headers: Any, attempt: int) -> float:
        values = {k.lower(): v for k, v in dict(headers).items()}
        wait = float(2 ** (attempt - 1))
        try:
            if "retry-after" in values:
                wait = float(values["retry-after"])
            elif values.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in values:
                wait = float(values["x-ratelimit-reset"]) - time.time()
        except ValueError:
            pass
        return min(max(wait, 0.0), self.max_wait)


class GitHub:
    """Clients for one repository's installation (App) or the token's."""

    def __init__(self, config: GitHubConfig) -> None:
        self.config = config
        self._tokens: dict[int, tuple[str, float]] = {}  # installation -> (token, expiry)

    def _client(self, token: str | None = None) -> RetryingGitHubAPI:
        return RetryingGitHubAPI(
            REQUESTER,
            oauth_token=token,
            base_url=self.config.api_url.rstrip("/"),
            attempts=self.config.attempts,
            max_wait=self.config.max_wait,
        )

    async def installation_of(self, owner: str, repo: str) -> int:
        """The App's installation on ``owner/repo`` (``GET /repos/{owner}/{repo}/installation``)."""
        gh = self._client()
        answer = await gh.getitem(
            "/repos/{owner}/{repo}/installation", {"owner": owner, "repo": repo}, jwt=self._jwt()
        )
        return int(answer["id"])

    def _jwt(self) -> str:
        return gidgethub.apps.get_jwt(
            app_id=self.config.app_id, private_key=self.config.private_key
        )

    async def for_repo(self, owner: str, repo: str, installation: int | None) -> RetryingGitHubAPI:
        """A client that acts on ``owner/repo``: with the installation's token (asked for
        and kept until shortly before it expires) or the configured token."""
        if self.config.token:
            return self._client(self.config.token)
        if not installation:
            installation = await self.installation_of(owner, repo)
        token, expires = self._tokens.get(installation, ("", 0.0))
        if time.monotonic() >= expires:
            answer = await gidgethub.apps.get_installation_access_token(
                self._client(),
                installation_id=str(installation),
                app_id=self.config.app_id,
                private_key=self.config.private_key,
            )
            token = answer["token"]
            # installation tokens live an hour; a new one is asked for after 50 minutes
            self._tokens[installation] = (token, time.monotonic() + 50 * 60)
        return self._client(token)

    # -- the calls --------------------------------------------------------------------------

    @staticmethod
    async def permission(gh: RetryingGitHubAPI, owner: str, repo: str, login: str) -> Any:
        """The collaborator permission answer of ``login`` (404: not a collaborator)."""
        try:
            return await gh.getitem(
                "/repos/{owner}/{repo}/collaborators/{username}/permission",
                {"owner": owner, "repo": repo, "username": login},
            )
        except gidgethub.BadRequest as e:
            if int(e.status_code) == 404:
                return {"permission": "none"}
            raise

    @staticmethod
    async def set_status(
        gh: RetryingGitHubAPI, owner: str, repo: str, sha: str, body: dict[str, str]
    ) -> None:
        await gh.post(
            "/repos/{owner}/{repo}/statuses/{sha}",
            {"owner": owner, "repo": repo, "sha": sha},
            data=body,
        )

    @staticmethod
    async def comment_once(
        gh: RetryingGitHubAPI, owner: str, repo: str, number: int, key: str, text: str
    ) -> bool:
        """Post ``text`` on the issue unless a comment of ours for ``key`` is there; True if
        posted. A failed POST is retried only after looking again (GitHub may have made it)."""
        where = {"owner": owner, "repo": repo, "issue_number": number}
        url = "/repos/{owner}/{repo}/issues/{issue_number}/comments"
        for attempt in range(1, gh.attempts + 1):
            comments = []
            async for c in gh.getiter(url + "{?per_page}", {**where, "per_page": 100}):
                comments.append(c)
                if len(comments) >= MAX_COMMENTS_READ:
                    break
            if report.has_marker(comments, key):
                return False
            try:
                await gh.post(url, where, data={"body": report.marked(key, text)})
                return True
            except gidgethub.GitHubBroken:
                if attempt >= gh.attempts:
                    raise
                await gh.sleep(min(2.0 ** (attempt - 1), gh.max_wait))
        return False

    @staticmethod
    async def close_issue(gh: RetryingGitHubAPI, owner: str, repo: str, number: int) -> None:
        await gh.patch(
            "/repos/{owner}/{repo}/issues/{issue_number}",
            {"owner": owner, "repo": repo, "issue_number": number},
            data={"state": "closed", "state_reason": "completed"},
        )


# -- reports: what to tell GitHub about which builds ---------------------------------------


@dataclass(frozen=True)
class Report:
    """Where one webhook's builds are reported: the repository, the built commit, the App's
    installation (0: the token's, or looked up), the issue (0: none) and its opener, the tag,
    the repository's clone URL (for the launch link), the builds, and whether the issue's
    comment was claimed."""

    owner: str
    repo: str
    sha: str
    builds: tuple[str, ...]
    clone_url: str
    ref: str
    installation: int = 0
    issue: int = 0
    login: str = ""
    commented: bool = False
    name: str = ""
    resource_version: str = ""

    def key(self) -> str:
        return hashlib.sha256(
            f"{self.owner}/{self.repo}#{self.issue}@{self.sha}:{','.join(self.builds)}".encode()
        ).hexdigest()[:32]

    def data(self) -> dict[str, str]:
        fields = {
            k: getattr(self, k)
            for k in ("owner", "repo", "sha", "clone_url", "ref", "installation", "issue", "login")
        }
        return {
            "report": json.dumps({**fields, "builds": list(self.builds)}, sort_keys=True),
            "commented": "true" if self.commented else "false",
        }

    @classmethod
    def of(cls, cm: Any) -> Report | None:
        try:
            data = cm.data or {}
            fields = json.loads(data["report"])
            return cls(
                **{**fields, "builds": tuple(fields["builds"])},
                commented=data.get("commented") == "true",
                name=cm.metadata.name,
                resource_version=cm.metadata.resource_version,
            )
        except (KeyError, TypeError, ValueError):
            return None


class ReportStore:
    """Reports as ConfigMaps in the builder's namespace, owned by the first build's record
    (they go with it)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    async def create(self, r: Report, owner: Build | None) -> Report:
        name = f"imgbuild-github-{r.key()}"
        labels = {
            "app.kubernetes.io/managed-by": MANAGED_BY,
            f"{L}record": "github-report",
            **{f"{REPORT_LABEL}-{b}": "true" for b in r.builds},
        }
        if r.issue:
            labels[ANSWER_LABEL] = "done" if r.commented else "waiting"
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if owner is not None and owner.uid:
            meta["ownerReferences"] = [
                {
                    "apiVersion": "aicoe-spawner.io/v1",
                    "kind": "ImageBuild",
                    "name": f"imgbuild-{owner.id}",
                    "uid": owner.uid,
                }
            ]
        try:
            cm = await self.core.create_namespaced_config_map(
                self.namespace, {"metadata": meta, "data": r.data()}
            )
        except ApiException as e:
            if e.status != 409:
                raise
            cm = await self.core.read_namespaced_config_map(name, self.namespace)
        return Report.of(cm) or r

    async def of_build(self, build_id: str) -> list[Report]:
        answer = await self.core.list_namespaced_config_map(
            self.namespace, label_selector=f"{REPORT_SELECTOR},{REPORT_LABEL}-{build_id}=true"
        )
        return [r for r in (Report.of(cm) for cm in answer.items) if r is not None]

    async def claim_comment(self, r: Report) -> bool:
        """Mark the report's comment as ours to post; False when another replica has."""
        if r.commented:
            return False
        body = {
            "metadata": {"resourceVersion": r.resource_version, "labels": {ANSWER_LABEL: "done"}},
            "data": {"commented": "true"},
        }
        try:
            await self.core.patch_namespaced_config_map(r.name, self.namespace, body)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    async def release_comment(self, r: Report) -> None:
        """The comment was not posted: the report waits for the next try."""
        body = {"metadata": {"labels": {ANSWER_LABEL: "waiting"}}, "data": {"commented": "false"}}
        await self.core.patch_namespaced_config_map(r.name, self.namespace, body)

    async def waiting(self) -> list[Report]:
        """The issues' reports not answered yet."""
        answer = await self.core.list_namespaced_config_map(
            self.namespace, label_selector=f"{REPORT_SELECTOR},{ANSWER_LABEL}=waiting"
        )
        return [r for r in (Report.of(cm) for cm in answer.items) if r is not None]


class GitHubReporter:
    """The build observer that reports to GitHub (see the module's docstring). ``records``
    reads a build's current record."""

    def __init__(
        self,
        github: GitHub,
        reports: ReportStore,
        records: Callable[[str], Awaitable[Build | None]],
    ) -> None:
        self.github = github
        self.reports = reports
        self.records = records
        self.config = github.config
        self._task: asyncio.Task | None = None

    def launch(self, r: Report) -> str:
        return report.launch_link(self.config.public_url, self.config.prefix, r.clone_url, r.ref)

    async def build_changed(self, build: Build, previous: str) -> None:
        """Called once per phase change of ``build`` (by the replica that wrote it)."""
        for r in await self.reports.of_build(build.id):
            await self.report(r, build)

    async def report(self, r: Report, build: Build | None = None) -> None:
        """Tell GitHub where ``r``'s builds are: each one's commit status (``build``'s only,
        when given), then, for an issue whose builds all ended, the comment and the close."""
        gh = await self.github.for_repo(r.owner, r.repo, r.installation)
        builds = [build] if build is not None else await self._builds(r)
        for b in builds:
            if b is None:
                continue
            state, description = report.commit_status(b.phase, b.spec.image, b.message)
            body = {
                "state": state,
                "description": description,
                "context": report.status_context(b.spec.stream, b.spec.tag),
            }
            if self.launch(r):
                body["target_url"] = self.launch(r)
            await self.github.set_status(gh, r.owner, r.repo, r.sha, body)
        if r.issue and (build is None or build.phase in TERMINAL):
            await self._answer_issue(gh, r)

    async def sweep(self) -> int:
        """Answer the issues whose builds all ended but whose answer could not be posted
        (GitHub was down then); the number answered now."""
        answered = 0
        for r in await self.reports.waiting():
            try:
                gh = await self.github.for_repo(r.owner, r.repo, r.installation)
                answered += bool(await self._answer_issue(gh, r))
            except Exception as e:
                log.warning("answering %s/%s#%d: %s", r.owner, r.repo, r.issue, _safe_error(e))
        return answered

    def start(self, interval: float = SWEEP_INTERVAL) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(interval), name="github-sweep")

    async def run(self, interval: float = SWEEP_INTERVAL) -> None:
        """:meth:`sweep` every ``interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception as e:  # the API server, say: the next sweep tries again
                log.warning("GitHub sweep: %s", _safe_error(e))

    async def _builds(self, r: Report) -> list[Build | None]:
        return [await self.records(b) for b in r.builds]

    async def _answer_issue(self, gh: RetryingGitHubAPI, r: Report) -> bool:
        """Comment (and close) once every build of the issue ended; True if this did."""
        builds = await self._builds(r)
        if any(b is None or b.phase not in TERMINAL for b in builds):
            return False  # another image is still building: its end answers
        if not await self.reports.claim_comment(r):
            return False
        shown = [
            report.Built(
                image=b.spec.image,
                pull=report.at_digest(b.spec.output_image, b.digest),
                digest=b.digest,
                phase=b.phase,
                message=b.message,
            )
            for b in builds
            if b is not None
        ]
        delivered = all(b.phase == "ready" for b in shown)
        if delivered:
            text = report.delivered_comment(r.login, r.ref, shown, self.launch(r))
        else:
            text = report.failed_comment(r.login, r.ref, shown)
        try:
            await self.github.comment_once(gh, r.owner, r.repo, r.issue, r.key(), text)
            if delivered:
                await self.github.close_issue(gh, r.owner, r.repo, r.issue)
        except BaseException:
            await self.reports.release_comment(r)  # the sweep tries again
            raise
        return True


def _safe_error(e: BaseException) -> str:
    """An error as logged: its type and GitHub's status, never a request's headers."""
    status = getattr(e, "status_code", None)
    text = str(e)[:200]
    return f"{type(e).__name__} {int(status) if status else ''} {text}".strip()
