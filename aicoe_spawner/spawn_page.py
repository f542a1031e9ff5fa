"""The ``/hub/spawn`` page for AICoESpawner, and the hub startup check.

JupyterHub's own page starts a server as soon as a ``/hub/spawn?…`` link is opened, sends a
link opened while the server runs to the old server, and re-renders a rejected form with
defaults. :class:`SpawnPage` (a subclass of JupyterHub's ``SpawnHandler``) instead:

- shows a link's choice in the form and starts nothing until the user presses Start;
- says so when the user's server already runs with other options, and offers to stop it and
  start the link's choice;
- re-renders a rejected choice with the user's entries and the message by its field, and logs
  one line.

:func:`attach_to_hub` runs when the spawner module is imported inside a starting JupyterHub
(this module does not import the spawner's: the spawner class is passed in):
once the hub builds its handlers it checks the spawner's configuration (a mistake stops the hub
with a message), serves the spawn URLs with :class:`SpawnPage` and the server API with
:class:`~aicoe_spawner.secret_env.ServerAPIHandler` (its PUT and PATCH drop secret env values
before JupyterHub logs or stores the options).
"""

from __future__ import annotations

import asyncio
import functools
import json
import struct
import zlib
from typing import Any

import jupyterhub.log as hub_log
from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.handlers.pages import SpawnHandler
from jupyterhub.scopes import needs_scope
from jupyterhub.utils import maybe_future, url_path_join
from tornado import web
from tornado.httputil import url_concat

from . import options as opts
from .form_view import FORM_MARKER, STATE_PATH, FormContext, FormParts, Segment, composing_page
from .secret_env import ServerAPIHandler

_RESERVED_QUERY = ("next", "display_name")


def describe(options: dict[str, Any]) -> str:
    """A choice in words: ``"minimal:2025.2, size medium, 1 GPU"``."""
    if options.get("image"):
        parts = [str(options["image"])]
    elif options.get("size"):
        parts = ["the size's own image"]  # saved options name the image whenever one is chosen
    else:
        parts = ["the default image"]
    parts.append(f"size {options['size']}" if options.get("size") else "the default size")
    for key in ("cpu", "memory"):
        if options.get(key):
            parts.append(f"{key} {options[key]}")
    gpus = options.get("gpus") or 0
    parts.append(f"{gpus} GPU" + ("" if gpus == 1 else "s"))
    return ", ".join(parts)


def _same_choice(running: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(running.get(k) == wanted.get(k) for k in opts.LINK_FIELDS)


# -- sending a composed page -------------------------------------------------------------

_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_DEFLATE_END = b"\x03\x00"  # an empty final block


def accepts_gzip(handler: web.RequestHandler) -> bool:
    for item in handler.request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            if not q.startswith("q="):
                return True
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
    return False


class ComposedPage:
    """A spawn page as pieces: the page's own head and tail around the form's segments."""

    def __init__(self, head: str, segments: tuple[Segment, ...], tail: str) -> None:
        self.segments = (Segment(head), *segments, Segment(tail))

    def write_to(self, handler: web.RequestHandler) -> None:
        """Write the page, as one gzip stream made of the pieces' compressed forms (the
        cached ones compressed once for all requests) when the browser accepts gzip."""
        handler.set_header("Content-Type", "text/html; charset=UTF-8")
        handler.set_header("Vary", "Accept-Encoding")
        if not accepts_gzip(handler):
            for segment in self.segments:
                handler.write(segment.data)
            return
        handler.set_header("Content-Encoding", "gzip")
        crc, size = 0, 0
        handler.write(_GZIP_HEADER)
        for segment in self.segments:
            crc = zlib.crc32(segment.data, crc)
            size += len(segment.data)
            handler.write(segment.compressed)
        handler.write(_DEFLATE_END + struct.pack("<II", crc, size & 0xFFFFFFFF))


class OptionsRejected(web.HTTPError, ValueError):
    """HTTP 400 for user_options that failed validation; ``error`` names the field. Also a
    ValueError, as KubeSpawner's ``load_user_options`` raises for a refused choice."""

    def __init__(self, error: opts.OptionsError) -> None:
        super().__init__(400, str(error))
        self.error = error
        self.jupyterhub_message = str(error)


def write_json(handler: web.RequestHandler, value: Any) -> None:
    """JSON, gzip-compressed when that is smaller and the browser accepts it."""
    body = json.dumps(value, separators=(",", ":")).encode()
    handler.set_header("Content-Type", "application/json; charset=UTF-8")
    handler.set_header("Cache-Control", "no-store")
    handler.set_header("Vary", "Accept-Encoding")
    if len(body) > 1024 and accepts_gzip(handler):
        handler.set_header("Content-Encoding", "gzip")
        body = zlib.compress(body, 6, 31)
    handler.finish(body)


class SpawnPage(SpawnHandler):
    """JupyterHub's spawn page, with links that never start anything by themselves.
    ``served``: the spawner class it handles (others get JupyterHub's page)."""

    def initialize(self, served: type) -> None:
        super().initialize()
        self.served = served

    async def _get(self, user_name, server_name, display_name):
        token = composing_page.set(True)
        try:
            return await self._get_page(user_name, server_name, display_name)
        finally:
            composing_page.reset(token)

    async def _post(self, user_name, server_name, display_name):
        token = composing_page.set(True)
        try:
            return await self._post_form(user_name, server_name, display_name)
        finally:
            composing_page.reset(token)

    def finish(self, chunk=None):
        if isinstance(chunk, ComposedPage):
            chunk.write_to(self)
            chunk = None
        return super().finish(chunk)

    async def _spawner_for(self, user_name: str, server_name: str, display_name: str):
        """(user, spawner) as JupyterHub's handler finds them; 404 for an unknown user."""
        user = self.current_user
        if user_name != user.name:
            user = self.find_user(user_name)
            if user is None:
                raise web.HTTPError(404, f"No such user: {user_name}")
        if server_name:
            await self._check_named_server_request(user, server_name, display_name)
        return user, user.get_or_create_spawner(server_name, display_name, replace_failed=True)

    def _reject(self, spawner, error: opts.OptionsError, source: str) -> None:
        self.set_status(400)
        self.log.warning("Rejected %s options for %s: %s", source, spawner._log_name, error)

    async def _render_form(self, for_user, spawner_options_form, message="", html_message=""):
        # JupyterHub posts the form back to the request's URL, query included: a link's query
        # (which may hold what a link must not carry) is not repeated into the page.
        next_url = self.get_argument("next", None)
        action = url_concat(self.request.path, {"next": next_url} if next_url else {})
        auth_state = await for_user.get_auth_state()
        html = await self.render_template(
            "spawn.html",
            for_user=for_user,
            auth_state=auth_state,
            spawner_options_form=spawner_options_form,
            error_message=message,
            html_error_message=html_message,
            url=url_concat(action, {"_xsrf": self.xsrf_token.decode("ascii")}),
            spawner=for_user.spawner,
        )
        if isinstance(spawner_options_form, FormParts):
            head, marker, tail = html.partition(FORM_MARKER)
            if not marker:  # a custom spawn.html without the form: nothing to compose
                return html
            return ComposedPage(head, spawner_options_form.segments, tail)
        return html

    async def _page(self, user, spawner, context: FormContext) -> None:
        form = await spawner.render_options_form(context)
        self.finish(await self._render_form(for_user=user, spawner_options_form=form))

    # -- GET: a link ------------------------------------------------------------------------

    @needs_scope("servers")
    async def _get_page(self, user_name, server_name, display_name):
        query = {
            key: [v.decode("utf8", "replace") for v in values]
            for key, values in self.request.query_arguments.items()
            if key not in _RESERVED_QUERY
        }
        if any(k.startswith("opt-") for k in query):
            # JupyterHub's prefixed form (?opt-image=…): then only prefixed keys count.
            query = {k[4:]: v for k, v in query.items() if k.startswith("opt-") and k[4:]}
        if not query:
            return await super()._get(user_name, server_name, display_name)
        user, spawner = await self._spawner_for(user_name, server_name, display_name)
        if not isinstance(spawner, self.served) or spawner.pending:
            return await super()._get(user_name, server_name, display_name)
        spawner.handler = self
        # As JupyterHub's page does: auth state may shape the form.
        await spawner.run_auth_state_hook(await user.get_auth_state())
        try:
            raw = await maybe_future(spawner.options_from_query(query))
            chosen = await spawner.check_user_options(raw)
        except OptionsRejected as e:
            self._reject(spawner, e.error, "link")
            shown = {k: v for k, v in query.items() if k in opts.LINK_FIELDS}
            context = FormContext(entries=shown, error=e.error, source="link")
            return await self._page(user, spawner, context)
        finally:
            spawner.handler = None
        wanted = chosen.to_user_options(spawner.namespace)
        if spawner.ready:
            running = spawner.user_options or {}
            if _same_choice(running, wanted):
                return self.redirect(self.get_next_url(user, default=user.server_url(server_name)))
            notice = {
                "kind": "running",
                "running": describe(running),
                "starts": describe(wanted),
                "server_url": user.server_url(server_name),
            }
        else:
            notice = {"kind": "link", "starts": describe(wanted)}
        # The form shows exactly what would start: the link's choice with defaults filled in.
        shown = {**query, "size": [wanted["size"]], "gpus": [str(wanted["gpus"])]}
        if "image" in wanted:  # a size with its own image has no catalog choice
            shown["image"] = [wanted["image"]]
        await self._page(user, spawner, FormContext(entries=shown, notice=notice))

    # -- POST: the form ---------------------------------------------------------------------

    @needs_scope("servers")
    async def _post_form(self, user_name, server_name, display_name):
        user, spawner = await self._spawner_for(user_name, server_name, display_name)
        if not isinstance(spawner, self.served) or spawner.pending:
            return await super()._post(user_name, server_name, display_name)
        form = {
            key: [v.decode("utf8", "replace") for v in values]
            for key, values in self.request.body_arguments.items()
        }
        replace = form.get("_replace_running") == ["1"]
        try:
            raw = await maybe_future(spawner.run_options_from_form(form))
            chosen = await spawner.check_user_options(raw)
        except OptionsRejected as e:
            self._reject(spawner, e.error, "form")
            return await self._page(user, spawner, FormContext(entries=form, error=e.error))
        if spawner.ready:
            wanted = chosen.to_user_options(spawner.namespace)
            if not replace:
                self.set_status(409)
                notice = {
                    "kind": "running",
                    "running": describe(spawner.user_options or {}),
                    "starts": describe(wanted),
                    "server_url": user.server_url(server_name),
                }
                return await self._page(user, spawner, FormContext(entries=form, notice=notice))
            self.log.info("Stopping %s to start a new choice", spawner._log_name)
            await self.stop_single_user(user, server_name)
            if spawner._stop_future is not None and not spawner._stop_future.done():
                await spawner._stop_future
        pending_url = self._get_pending_url(user, server_name)
        return await self._wrap_spawn_single_user(
            user, server_name, display_name, spawner, pending_url, raw
        )


class FormState(BaseHandler):
    """Live updates of an open (lean) options form, for the page's script:

    - ``?since=<version>&stale=<0|1>``: held until the catalog moves past ``version`` (or the
      hub's view of it turns stale or fresh, or ``form_live_wait`` passes), then what changed
      for this user as JSON (``AICoESpawner.form_changes``): a few hundred bytes per change,
      an empty answer when nothing did;
    - ``?card=<namespace/stream>[&full=1]``: one image card (a stream that appeared or changed
      shape; ``full``: with its version and package lists) as escaped HTML inside JSON.
    """

    _closed = False

    def initialize(self, served: type) -> None:
        super().initialize()
        self.served = served

    def on_connection_close(self) -> None:
        self._closed = True

    @needs_scope("servers")
    async def get(self, user_name: str, server_name: str = ""):
        user = self.current_user
        if user_name != user.name:
            user = self.find_user(user_name)
            if user is None:
                raise web.HTTPError(404, f"No such user: {user_name}")
        if server_name not in user.orm_spawners:
            raise web.HTTPError(404, f"No such server: {server_name}")
        spawner = user.spawners[server_name]
        if not isinstance(spawner, self.served):
            raise web.HTTPError(404, "not an AICoESpawner")
        card = self.get_argument("card", None)
        if card is not None:
            found = spawner.image_card_html(card, full=self.get_argument("full", "") == "1")
            if found is None:
                raise web.HTTPError(404, "image: not in your catalog")
            return write_json(self, found)
        try:
            since = int(self.get_argument("since", "0"))
        except ValueError:
            raise web.HTTPError(400, "since: must be an integer") from None
        stale = self.get_argument("stale", "0") == "1"
        watch = spawner.catalog_watch()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(spawner.form_live_wait, 0)
        while watch.version == since and watch.stale == stale and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # In slices: staleness changes without a new version, and a closed tab ends it.
            await watch.wait_for_change(since, min(remaining, 1.0))
        if self._closed:
            return
        write_json(self, spawner.form_changes(since))


# -- hub integration ----------------------------------------------------------------------


def attach_to_hub(served: type) -> None:
    """Once JupyterHub builds its handlers (``JupyterHub.init_handlers``, before it creates the
    tornado application): check the spawner's configuration and serve the spawn URLs with
    :class:`SpawnPage`, if the hub's spawner is a subclass of ``served`` (AICoESpawner).

    JupyterHub offers spawners no hook for either, and it imports the spawner class while the
    application object is still being built, so this wraps ``init_handlers`` of the class once.
    """
    from jupyterhub.app import JupyterHub

    if getattr(JupyterHub.init_handlers, "_aicoe_spawn_page", False):
        return
    original = JupyterHub.init_handlers

    @functools.wraps(original)
    def init_handlers(app):
        original(app)
        install(app, served)

    init_handlers._aicoe_spawn_page = True
    JupyterHub.init_handlers = init_handlers


def install(app, served: type) -> None:
    """Check the configuration and swap JupyterHub's spawn page and server API for ours in
    ``app.handlers``, if the hub's spawner class is a subclass of ``served``."""
    if not issubclass(app.spawner_class, served):
        return
    check_configuration(app)
    # A link with secret_env_value=… is refused, but its URL still reaches the request log:
    # JupyterHub scrubs query values whose names contain these words; add "secret".
    if "secret" not in hub_log.SCRUB_PARAM_KEYS:
        hub_log.SCRUB_PARAM_KEYS = (*hub_log.SCRUB_PARAM_KEYS, "secret")
    # The server API's PATCH logs the user_options it is given: its reader drops the values.
    app.handlers = [
        (
            url_path_join(app.hub_prefix, STATE_PATH, r"([^/]+)/?([^/]*)"),
            FormState,
            {"served": served},
        ),
        *(_ours(h, served) for h in app.handlers),
    ]


def _ours(handler: tuple, served: type) -> tuple:
    """One ``app.handlers`` entry, with our spawn page and server API for JupyterHub's."""
    if len(handler) > 1 and handler[1] is SpawnHandler:
        kwargs = {**(handler[2] if len(handler) > 2 else {}), "served": served}
        return (handler[0], SpawnPage, kwargs, *handler[3:])
    if len(handler) > 1 and handler[1] is UserServerAPIHandler:
        return (handler[0], ServerAPIHandler, *handler[2:])
    return handler


def check_configuration(app) -> None:
    """Stop the hub with a message if the spawner's configuration cannot work."""
    try:
        spawner = app.spawner_class(config=app.config, _mock=True, _config_check=True)
        spawner.check_configuration()
    except Exception as e:
        app.log.critical("AICoESpawner cannot start with this configuration: %s", e)
        app.exit(1)
