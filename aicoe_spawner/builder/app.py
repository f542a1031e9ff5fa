"""The builder's HTTP surface: a tornado JupyterHub service (HubOAuth for the page, tokens for
the API, custom scopes to submit and to administer), the GitHub webhook, health and metrics.
A thin shell around :class:`BuildService`."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from gidgethub import GitHubException
from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web

from ..watch import ImageStreamWatch
from .catalog_view import ImagePolicies, render_images, shown_images, viewer_policy
from .github import GitHub, GitHubReporter, Report
from .github_report import (
    IssueRequest,
    can_push,
    issue_request,
    not_allowed_comment,
    owner_and_name,
    refused_comment,
)
from .identity import github_identity, hub_identity
from .page import STATIC, page_context
from .page import environment as page_environment
from .requests import (
    BuildRequest,
    BuildRequestError,
    parse_build_request,
    validate_ref,
    validate_repo_url,
)
from .service import BuildService, Redelivery
from .store import Build
from .vocabulary import PHASES, TERMINAL

log = logging.getLogger("aicoe_spawner.builder.app")

MAX_BODY = 1024 * 1024  # the webhook: GitHub's release and create payloads
MAX_BUILD_BODY = 64 * 1024  # POST api/builds: a build request is a few KiB at most
# the HTTP server's: bodies up to MAX_DRAIN are read (and dropped) to answer 413; a larger
# declared one closes the connection. Every route streams its body, so none is buffered.
MAX_DRAIN = 16 << 20
SERVER_OPTIONS = {"max_body_size": MAX_DRAIN, "max_buffer_size": 1 << 20}
BUILD_SCOPE = "custom:image-builder:build"
ADMIN_SCOPE = "custom:image-builder:admin"


class JSONError(web.HTTPError):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(status, message)
        self.message = message
        self.field = field


def builds_view(builds: list[Build]) -> dict[str, Any]:
    """The first image's build; with ``.aicoe-ci.yaml`` overlays, all of them in ``builds``."""
    view = builds[0].view()
    if len(builds) > 1:
        view["builds"] = [b.view() for b in builds]
    return view


def parse_last_event_id(header: str) -> tuple[int, str]:
    """``Last-Event-ID: <lines sent>:<phase>`` -> (lines, phase); BuildRequestError if not."""
    lines, sep, phase = header.partition(":")
    if not header:
        return 0, ""
    if not (sep and lines.isascii() and lines.isdigit() and len(lines) <= 9) or (
        phase and phase not in PHASES
    ):
        raise BuildRequestError(
            "Last-Event-ID", "must be an id this stream sent (<lines>:<phase>), e.g. 12:building"
        )
    return int(lines), phase


def body_checked(method):
    """``web.authenticated``, after refusing a body over the route's ``max_body`` (413)."""
    authenticated = web.authenticated(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self.check_body()
        return authenticated(self, *args, **kwargs)

    return wrapper


#: Sent with every response of the builder, as the hub sends them: no page of the builder may
#: be framed (its Cancel and Retry buttons cannot be clickjacked), and no response is
#: sniffed into another type than it declares.
SECURITY_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",  # the same for browsers without CSP level 2
    "X-Content-Type-Options": "nosniff",
}


class SecurityHeaders(web.RequestHandler):
    """Every handler of the app derives from this (a test checks the routes): tornado sets
    default headers on every response, redirects and error pages included."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)


class CappedBody(SecurityHeaders):
    """Every route streams its request body (tornado never buffers one) and keeps at most
    ``max_body`` bytes of it (0: the route takes none). A declared Content-Length over that is
    answered 413 in ``prepare``, before anything else (authentication included); a body that
    grows over it while it arrives (chunked) is dropped, and a handler that reads it answers
    413 (:meth:`check_body`). What is over is read and dropped, so the client gets the answer."""

    _stream_request_body = True  # as @web.stream_request_body, for every subclass
    max_body = 0
    _received: bytearray | None = None
    _overflow = False

    def prepare(self) -> None:
        declared = self.request.headers.get("Content-Length", "0")
        self._overflow = not declared.isdigit() or int(declared) > self.max_body
        self._received = bytearray()
        self.check_body()

    def data_received(self, chunk: bytes) -> None:
        if self._overflow or self._received is None:
            return
        self._received += chunk
        if len(self._received) > self.max_body:
            self._overflow = True
            self._received = None

    def check_body(self) -> None:
        if self._overflow:
            if not self.max_body:
                raise JSONError(413, "body: this route takes no request body", "body")
            raise JSONError(413, f"body: larger than {self.max_body // 1024} KiB", "body")


class BaseHandler(CappedBody):
    """The builder's handlers: JSON errors, bodies capped per route (:class:`CappedBody`)."""

    @property
    def service(self) -> BuildService:
        return self.settings["build_service"]

    def body(self) -> bytes:
        self.check_body()
        return bytes(self._received or b"")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = getattr(exc, "message", None) or getattr(exc, "log_message", None)
        body = {"status": status_code, "message": message or self._reason}
        if getattr(exc, "field", None):
            body["field"] = exc.field
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def json_body(self) -> Any:
        body = self.body()
        try:
            return json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise JSONError(400, f"body: not valid JSON ({e})", "body") from None
        except RecursionError:
            raise JSONError(400, "body: JSON nested too deeply", "body") from None

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class AuthHandler(HubOAuthenticated, BaseHandler):
    """Hub-authenticated; scopes decide what the user may do."""

    @property
    def hub_auth(self):
        return self.settings["hub_auth"]

    async def prepare(self) -> None:
        """Identify the user here, without blocking: HubAuthenticated's synchronous
        ``get_current_user`` would block the event loop on a thread (and on the hub, for a
        token it has not cached) for every request. The body's size is checked first."""
        self._hub_auth_user_cache = None  # nobody, until identified (error pages read it)
        super().prepare()
        model = await self.hub_auth.get_user(self, sync=False)
        try:
            self._hub_auth_user_cache = self.check_hub_user(model) if model else None
        except UserNotAllowed:
            self._hub_auth_user_cache = None

            def refuse(*args: Any, **kwargs: Any) -> None:  # as HubAuthenticated does
                raise web.HTTPError(403, f"{model.get('kind')} {model.get('name')} is not allowed.")

            self.redirect = refuse

    def scopes(self) -> set[str]:
        model = self.current_user or {}
        return set(model.get("scopes") or [])

    def user_name(self) -> str:
        model = self.current_user
        if not model:
            raise JSONError(403, "authentication required")
        return hub_identity(model.get("kind", "user"), model["name"])

    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes()

    def require(self, scope: str) -> None:
        if scope not in self.scopes() and ADMIN_SCOPE not in self.scopes():
            raise JSONError(403, f"the scope {scope} is required")

    async def visible_build(self, build_id: str) -> Build:
        build = await self.service.record(build_id) if len(build_id) <= 64 else None
        # another user's build is reported exactly like a missing one
        if build is None or not (self.is_admin() or build.spec.requester == self.user_name()):
            raise JSONError(404, f"build {build_id[:64]!r} not found")
        return build


class BuildsHandler(AuthHandler):
    max_body = MAX_BUILD_BODY

    @web.authenticated
    async def get(self) -> None:
        builds = await self.service.list_builds(None if self.is_admin() else self.user_name())
        self.write_json({"builds": [b.view() for b in builds]})

    @body_checked
    async def post(self) -> None:
        self.require(BUILD_SCOPE)
        body = self.json_body()
        try:
            request = parse_build_request(body, self.service.policy, self.service.resolver)
            status, builds = await self.service.submit_all(
                request, self.user_name(), admin=self.is_admin()
            )
        except BuildRequestError as e:
            raise JSONError(e.status, str(e), e.field) from None
        self.write_json(builds_view(builds), status)


class BuildHandler(AuthHandler):
    @web.authenticated
    async def get(self, build_id: str) -> None:
        self.write_json((await self.visible_build(build_id)).view())

    @web.authenticated
    async def delete(self, build_id: str) -> None:
        build = await self.visible_build(build_id)
        build = await self.service.cancel(build)
        self.write_json(build.view())


class LogsHandler(AuthHandler):
    @web.authenticated
    async def get(self, build_id: str) -> None:
        build = await self.visible_build(build_id)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        text = await self.service.full_log(build)
        if build.phase == "failed" and build.message and build.message not in text:
            text += ("\n" if text else "") + build.message
        self.finish(text)


class EventsHandler(AuthHandler):
    """Server-sent events: ``phase`` (the build) and ``log`` (one line) events. The event id
    is ``<lines sent>:<phase>``, so a reconnect with Last-Event-ID resumes where it stopped;
    each wake-up sends only the lines not sent yet. Open streams are capped per user and per
    replica (429). Reading never starts a build."""

    keepalive = 15.0
    _counted: str | None = None

    def _send(self, event: str, data: Any, event_id: str) -> None:
        self.write(f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n")

    def _open_stream(self, user: str) -> None:
        streams: dict[str, int] = self.settings["streams"]
        total = sum(streams.values())
        if streams.get(user, 0) >= self.settings["max_streams_per_user"]:
            raise JSONError(
                429,
                f"{user} has {streams[user]} event streams open "
                f"(limit {self.settings['max_streams_per_user']}); close one",
            )
        if total >= self.settings["max_streams"]:
            raise JSONError(
                429, f"{total} event streams are open (limit {self.settings['max_streams']})"
            )
        streams[user] = streams.get(user, 0) + 1
        self._counted = user

    def _close_stream(self) -> None:
        user, self._counted = self._counted, None
        if user is not None:
            streams: dict[str, int] = self.settings["streams"]
            streams[user] -= 1
            if streams[user] <= 0:
                del streams[user]

    def on_connection_close(self) -> None:
        self._close_stream()  # free the slot now, not at the next keepalive

    @web.authenticated
    async def get(self, build_id: str) -> None:
        try:
            sent, phase_sent = parse_last_event_id(self.request.headers.get("Last-Event-ID", ""))
        except BuildRequestError as e:
            raise JSONError(400, str(e), e.field) from None
        build = await self.visible_build(build_id)
        self._open_stream(self.user_name())
        try:
            await self._stream(build, sent, phase_sent)
        finally:
            self._close_stream()

    async def _stream(self, build: Build, sent: int, phase_sent: str) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        service = self.service
        while True:
            build = service.latest(build)
            lines = await service.lines_of(build)
            for i in range(sent, len(lines)):
                self._send("log", {"line": lines[i]}, f"{i + 1}:{phase_sent}")
            sent = max(sent, len(lines))
            if build.phase != phase_sent:
                phase_sent = build.phase
                self._send("phase", build.view(), f"{sent}:{phase_sent}")
            try:
                await self.flush()
            except Exception:
                return  # client went away
            if build.phase in TERMINAL:
                self.write("event: end\ndata: {}\n\n")
                await self.finish()
                return
            if self._counted is None:
                return  # the connection closed
            changed = await service.wait_changed(self.keepalive)
            if not changed:
                self.write(": keepalive\n\n")


class ImagesHandler(AuthHandler):
    """The catalog as the requesting user's spawn page offers it (:mod:`.catalog_view`):
    hidden images and images their groups' policies do not allow are left out, for
    builder admins nothing is. Rendered once per catalog change and policy (users with the
    same groups share it), not per request."""

    MAX_CACHED = 64  # bodies per catalog version (distinct policies of the users)

    @web.authenticated
    async def get(self) -> None:
        watch: ImageStreamWatch = self.settings["image_watch"]
        if not watch.synced:
            await watch.wait_synced(10)
        groups = (self.current_user or {}).get("groups") or []
        key = viewer_policy(self.settings["image_policies"], groups, self.is_admin())
        cache: dict = self.settings["images_cache"]
        if cache.get("version") != (watch.version, watch.stale):
            cache.clear()
            cache.update(version=(watch.version, watch.stale), bodies={})
        bodies: dict = cache["bodies"]
        if key not in bodies:
            if len(bodies) >= self.MAX_CACHED:
                bodies.clear()
            body = render_images(shown_images(watch.catalog, key), watch.stale).encode()
            bodies[key] = (body, f'"{hashlib.sha1(body).hexdigest()}"')
        body, self._etag = bodies[key]
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    _etag: str | None = None

    def compute_etag(self) -> str | None:
        return self._etag  # the cached body's, not a hash of it per request


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


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"status": "ok", "synced": self.service.synced.is_set()})


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.service.metrics.registry))


class NotFoundHandler(BaseHandler):
    """Every path no route serves: 404 as JSON."""

    def prepare(self) -> None:
        raise JSONError(404, f"no such page: {self.request.path[:200]}")


class CallbackHandler(CappedBody, HubOAuthCallbackHandler):
    @property
    def hub_auth(self):
        return self.settings["hub_auth"]


class StaticHandler(CappedBody, web.StaticFileHandler):
    pass


class PageHandler(AuthHandler):
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as a hub page: the status, what is wrong, and a way back."""
        exc = kwargs.get("exc_info", (None, None))[1]
        message = getattr(exc, "message", None) or getattr(exc, "log_message", None)
        user = self.current_user.get("name", "") if isinstance(self.current_user, dict) else ""
        context = page_context(
            user=user,
            hub_prefix=self.hub_auth.hub_prefix,
            prefix=self.settings["prefix"],
            xsrf=self.xsrf_token.decode(),
            admin=False,
        )
        if not user:
            context["user"] = None
        self.set_header("Content-Type", "text/html; charset=utf-8")
        template = self.settings["templates"].get_template("builder_error.html")
        self.finish(
            template.render(
                context,
                status_code=status_code,
                reason=self._reason,
                message=message or self._reason,
            )
        )

    @web.authenticated
    def get(self) -> None:
        self.require(BUILD_SCOPE)  # the page exists to submit builds
        hub_prefix = self.hub_auth.hub_prefix
        context = page_context(
            user=(self.current_user or {}).get("name", ""),  # as the hub shows it
            hub_prefix=hub_prefix,
            prefix=self.settings["prefix"],
            xsrf=self.xsrf_token.decode(),
            admin=self.is_admin(),
        )
        self.finish(self.settings["templates"].get_template("builder.html").render(context))


class LaunchHandler(PageHandler):
    """``launch?repo=…&ref=…`` (the link behind a README's badge): the builder page with the
    form filled in for that repository; the page builds only when the user presses Build and
    launch, and goes to the hub's spawn page when the image is ready. A repository or ref the
    builder refuses is a refusal page that says why."""

    @web.authenticated
    def get(self) -> None:
        self.require(BUILD_SCOPE)
        try:
            validate_repo_url(
                self.get_argument("repo", ""), self.service.policy, self.service.resolver
            )
            validate_ref(self.get_argument("ref", ""))
        except BuildRequestError as e:
            raise JSONError(e.status, f"This link cannot be built: {e}", e.field) from None
        super().get()


def make_app(
    service: BuildService,
    hub_auth: HubOAuth,
    image_watch: ImageStreamWatch,
    *,
    prefix: str = "/services/image-builder/",
    webhook_secret: bytes = b"",
    cookie_secret: bytes | None = None,
    max_streams: int = 200,
    max_streams_per_user: int = 10,
    image_policies: ImagePolicies | None = None,
    github: GitHub | None = None,
    github_reporter: GitHubReporter | None = None,
) -> web.Application:
    """The service's tornado app. ``cookie_secret`` signs the OAuth and XSRF cookies: give
    every replica the same one (a random one is only for a single throwaway process).
    ``image_policies``: the spawner's policies, for what ``GET api/images`` shows a user.
    ``github``/``github_reporter``: GitHub, for issue builds and reporting back
    (:mod:`.github`); None: neither."""
    prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    build_id = r"([^/]+)"
    routes = [
        (prefix, PageHandler),
        (prefix + "launch", LaunchHandler),
        (prefix + "oauth_callback", CallbackHandler),
        (prefix + "api/builds", BuildsHandler),
        (prefix + f"api/builds/{build_id}", BuildHandler),
        (prefix + f"api/builds/{build_id}/logs", LogsHandler),
        (prefix + f"api/builds/{build_id}/events", EventsHandler),
        (prefix + "api/images", ImagesHandler),
        (prefix + "api/webhooks/github", WebhookHandler),
        (prefix + "health", HealthHandler),
        (prefix + "metrics", MetricsHandler),
        (prefix + "static/(.*)", StaticHandler, {"path": str(STATIC)}),
    ]
    return web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        build_service=service,
        hub_auth=hub_auth,
        image_watch=image_watch,
        webhook_secret=webhook_secret,
        prefix=prefix,
        templates=page_environment(),
        cookie_secret=cookie_secret or os.urandom(32),
        streams={},
        max_streams=max_streams,
        max_streams_per_user=max_streams_per_user,
        images_cache={},
        image_policies=image_policies or ImagePolicies(),
        github=github,
        github_reporter=github_reporter,
    )
