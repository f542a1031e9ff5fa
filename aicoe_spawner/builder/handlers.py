"""The builder's handler base: body caps before authentication, security headers, JSON
errors, HubOAuth/token authentication with the builder's scopes (used by :mod:`.app` and
:mod:`.webhook`)."""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from jupyterhub.services.auth import (
    HubOAuthenticated,
    UserNotAllowed,
)
from tornado import web

from .identity import hub_identity
from .requests import (
    BuildRequestError,
)
from .service import BuildService
from .store import Build
from .vocabulary import PHASES

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
