"""The builder's HTTP surface: a tornado JupyterHub service (HubOAuth for the page, tokens for
the API, custom scopes to submit and to administer), the GitHub webhook, health and metrics.
A thin shell around :class:`BuildService`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web

from ..watch import ImageStreamWatch
from .catalog_view import ImagePolicies, render_images, shown_images, viewer_policy
from .github import GitHub
from .github_reporter import GitHubReporter
from .handlers import (
    ADMIN_SCOPE,
    BUILD_SCOPE,
    MAX_BODY,
    MAX_BUILD_BODY,
    MAX_DRAIN,
    SECURITY_HEADERS,
    SERVER_OPTIONS,
    AuthHandler,
    BaseHandler,
    CappedBody,
    JSONError,
    SecurityHeaders,
    body_checked,
    builds_view,
    parse_last_event_id,
)
from .page import STATIC, page_context
from .page import environment as page_environment
from .requests import (
    BuildRequestError,
    parse_build_request,
    validate_ref,
    validate_repo_url,
)
from .service import BuildService
from .store import Build
from .vocabulary import TERMINAL
from .webhook import IssueEvent, WebhookHandler, issue_event, verify_signature, webhook_request

log = logging.getLogger("aicoe_spawner.builder.app")

__all__ = [
    "ADMIN_SCOPE",
    "BUILD_SCOPE",
    "MAX_BODY",
    "MAX_BUILD_BODY",
    "MAX_DRAIN",
    "SECURITY_HEADERS",
    "SERVER_OPTIONS",
    "AuthHandler",
    "BaseHandler",
    "CappedBody",
    "IssueEvent",
    "JSONError",
    "SecurityHeaders",
    "WebhookHandler",
    "body_checked",
    "builds_view",
    "issue_event",
    "make_app",
    "parse_last_event_id",
    "verify_signature",
    "webhook_request",
]


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
