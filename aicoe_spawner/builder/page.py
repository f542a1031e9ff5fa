"""The builder's web page: a JupyterHub page (the hub's own ``page.html`` with its navbar and
Bootstrap 5 styles, loaded from the installed jupyterhub package) with the build form, the
user's builds with live progress and log, and a Launch button for ready images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from jupyterhub._data import DATA_FILES_PATH

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"


def environment() -> jinja2.Environment:
    """Our templates first, then JupyterHub's (``page.html`` and its macros)."""
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader(TEMPLATES),
                jinja2.FileSystemLoader(Path(DATA_FILES_PATH) / "templates"),
            ]
        ),
        autoescape=True,
    )


def _js_string(text: str) -> str:
    """``text`` for a double-quoted JS string inside ``<script>``: no way out of either."""
    body = json.dumps(text)[1:-1]
    return body.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_context(
    *, user: str, hub_prefix: str, prefix: str, xsrf: str, admin: bool
) -> dict[str, Any]:
    """What ``page.html`` and ``builder.html`` need; everything user-given is escaped by the
    template (HTML) or by ``tojson`` (the data block)."""

    def static_url(path: str, include_version: bool = True) -> str:
        return f"{hub_prefix}static/{path}"

    return {
        "base_url": hub_prefix,
        "prefix": prefix,
        "hub_prefix": hub_prefix,
        "static_url": static_url,
        "user": {"name": user, "json_escaped_name": _js_string(user)},
        "no_spawner_check": True,
        "parsed_scopes": set(),
        "services": [],
        "logout_url": f"{hub_prefix}logout",
        "login_url": f"{hub_prefix}login",
        "xsrf_token": xsrf,
        "admin": admin,
        "data": {
            "prefix": prefix,
            "hub_prefix": hub_prefix,
            "xsrf": xsrf,
            "user": user,
            "admin": admin,
        },
    }
