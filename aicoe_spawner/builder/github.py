"""The builder talking to GitHub (I/O): a gidgethub client authenticated as a GitHub App
(JWT → installation token) or with a token, against a configurable API URL (GitHub
Enterprise: ``https://<host>/api/v3``): commit statuses, one marked comment per issue, closing
an issue. :class:`~.github_reporter.GitHubReporter` decides what to tell GitHub about which
builds.

GitHub's answers: 5xx, 429 and rate-limit 403s are retried a few times (bounded waits);
anything else is logged and dropped. Tokens and the App key never reach a log or a record."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import gidgethub
import gidgethub.apps
import gidgethub.tornado
from tornado import httpclient

from . import github_report as report

log = logging.getLogger("aicoe_spawner.builder.github")

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
