"""GitHub for the builder's tests, on loopback: GitHub's own webhook payloads (npm
``@octokit/webhooks-examples``), GitHub's REST description (npm ``@octokit/openapi``), both
installed by npm into the ignored ``.cache/node-github`` on first use, and :class:`FakeGitHub`,
an aiohttp server answering the REST calls the builder makes. Every request it receives is
checked against the REST description (a documented path and method, a request body valid for
the operation's schema, the authentication GitHub asks for) and recorded; a request that is not
valid is answered 400 and kept in ``violations``. Faults (5xx, rate limits) can be queued."""

from __future__ import annotations

import asyncio
import fcntl
import json
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from aicoe_devcluster.controlplane import REPO_ROOT, free_port

NODE_DIR = REPO_ROOT / ".cache" / "node-github"
PACKAGES = ("@octokit/webhooks-examples@7.6.1", "@octokit/openapi@23.0.2")


def octokit() -> Path:
    """``node_modules/@octokit`` with both packages, installed (once, under a lock) if not."""
    root = NODE_DIR / "node_modules" / "@octokit"
    wanted = (root / "webhooks-examples" / "package.json", root / "openapi" / "package.json")
    if all(p.exists() for p in wanted):
        return root
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed for GitHub's webhook examples and REST description")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    with open(NODE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all(p.exists() for p in wanted):
            subprocess.run(
                [
                    npm,
                    "install",
                    "--no-save",
                    "--no-package-lock",
                    "--prefix",
                    str(NODE_DIR),
                    *list(PACKAGES),
                ],
                check=True,
                capture_output=True,
                timeout=600,
            )
    return root


def webhook_example(event: str, action: str | None = None, index: int = 0) -> dict:
    """GitHub's example payload of ``event`` (and ``action``), a fresh copy."""
    examples = json.loads(
        (octokit() / "webhooks-examples" / "api.github.com" / "index.json").read_text()
    )
    for entry in examples:
        if entry["name"] == event:
            found = [x for x in entry["examples"] if action is None or x.get("action") == action]
            return json.loads(json.dumps(found[index]))
    raise KeyError(event)


_SPEC: dict | None = None


def rest_description() -> dict:
    """GitHub's REST description for api.github.com (OpenAPI 3)."""
    global _SPEC
    if _SPEC is None:
        path = octokit() / "openapi" / "generated" / "api.github.com.json"
        _SPEC = json.loads(path.read_text())
    return _SPEC


def _inline(node: Any, spec: dict, depth: int = 0) -> Any:
    """``node`` with its local ``$ref``s replaced by what they name; OpenAPI's ``nullable``
    as JSON Schema's ``null`` type."""
    if depth > 40:
        return {}
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _inline(target, spec, depth + 1)
        out = {k: _inline(v, spec, depth + 1) for k, v in node.items()}
        if out.pop("nullable", False) and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_inline(v, spec, depth + 1) for v in node]
    return node


def operation(method: str, path: str) -> tuple[str, dict] | None:
    """(documented path template, operation) for a request, None when GitHub has none."""
    spec = rest_description()
    # literal segments first: /repos/{owner}/{repo}/installation before a template there
    for template, item in sorted(spec["paths"].items(), key=lambda t: t[0].count("{")):
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    return None


def check_request(method: str, path: str, body: Any) -> list[str]:
    """What is wrong with a request by GitHub's REST description ([]: nothing)."""
    found = operation(method, path)
    if found is None:
        return [f"{method} {path}: not a documented operation"]
    template, op = found
    problems = []
    content = ((op.get("requestBody") or {}).get("content") or {}).get("application/json")
    if content is not None and body is not None:
        schema = _inline(content["schema"], rest_description())
        for error in jsonschema.Draft7Validator(schema).iter_errors(body):
            problems.append(f"{method} {template}: {error.message}")
    elif body not in (None, b"", {}) and content is None:
        problems.append(f"{method} {template}: takes no JSON body")
    return problems


@dataclass
class Call:
    method: str
    path: str  # without the API prefix
    query: dict[str, str]
    body: Any
    auth: str  # "jwt", "token <value>" or ""


@dataclass
class Fault:
    """Answer the next request matching ``method`` and ``path`` (a regex) with ``status``;
    ``then_apply``: do what was asked anyway (GitHub answered 5xx after doing it)."""

    method: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    then_apply: bool = False


class FakeGitHub:
    """GitHub's REST API on loopback under ``prefix`` ("" as api.github.com, ``/api/v3`` as
    GitHub Enterprise Server), for a GitHub App ``app_id`` (its key: ``private_key_pem``)
    and/or a personal ``token``."""

    def __init__(self, prefix: str = "", app_id: str = "4242", installation: int = 42) -> None:
        self.prefix = prefix.rstrip("/")
        self.app_id, self.installation = app_id, installation
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.public_key = key.public_key()
        self.token = "ghp_" + secrets.token_hex(12)  # a personal token's
        self.issued: set[str] = set()  # installation tokens handed out
        self.permissions: dict[str, str] = {}  # login -> admin | write | read
        self.comments: dict[int, list[dict]] = {}
        self.statuses: list[dict] = []
        self.closed: dict[int, str] = {}
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.faults: list[Fault] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self.changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def routes(self) -> list[tuple[str, str]]:
        """(method, path) of every call so far."""
        return [(c.method, c.path) for c in self.calls]

    async def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"GitHub was not called as expected: {self.routes()}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 0.2)
            except TimeoutError:
                pass

    # -- the API -----------------------------------------------------------------------------

    def _auth(self, header: str) -> str:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            try:
                claims = jwt.decode(value, self.public_key, algorithms=["RS256"])
            except jwt.PyJWTError:
                return ""
            return "jwt" if str(claims.get("iss")) == self.app_id else ""
        if scheme.lower() == "token" and (value in self.issued or value == self.token):
            return f"token {value}"
        return ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._answer(request)
        finally:
            self.changed.set()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if not path.startswith(self.prefix + "/"):
            self.violations.append(f"{request.method} {path}: outside the API prefix")
            return web.json_response({"message": "Not Found"}, status=404)
        path = path[len(self.prefix) :]
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        auth = self._auth(request.headers.get("Authorization", ""))
        call = Call(request.method, path, dict(request.query), body, auth)
        self.calls.append(call)
        problems = check_request(request.method, path, body)
        if "github" not in request.headers.get("Accept", ""):
            problems.append(f"{request.method} {path}: Accept is not GitHub's media type")
        if problems:
            self.violations += problems
            return web.json_response({"message": "; ".join(problems)}, status=400)
        app_route = path.startswith("/app/") or path.endswith("/installation")
        if not auth or (auth == "jwt") != app_route:
            return web.json_response({"message": "Bad credentials"}, status=401)
        fault = next(
            (f for f in self.faults if f.method == request.method and re.fullmatch(f.path, path)),
            None,
        )
        if fault is not None:
            self.faults.remove(fault)
            if fault.then_apply:
                self._apply(call)
            return web.json_response(
                {"message": "fault"}, status=fault.status, headers=fault.headers
            )
        status, answer = self._apply(call)
        return web.json_response(answer, status=status)

    def _apply(self, call: Call) -> tuple[int, Any]:
        m, path, body = call.method, call.path, call.body or {}
        if m == "POST" and re.fullmatch(r"/app/installations/\d+/access_tokens", path):
            token = "ghs_" + secrets.token_hex(12)
            self.issued.add(token)
            return 201, {"token": token, "expires_at": "2099-01-01T00:00:00Z"}
        if m == "GET" and re.fullmatch(r"/repos/[^/]+/[^/]+/installation", path):
            return 200, {"id": self.installation, "app_id": int(self.app_id)}
        if found := re.fullmatch(r"/repos/[^/]+/[^/]+/collaborators/([^/]+)/permission", path):
            login = found.group(1)
            if login not in self.permissions:
                return 404, {"message": "Not Found"}
            perm = self.permissions[login]
            return 200, {
                "permission": perm,
                "role_name": perm,
                "user": {"login": login, "permissions": {"push": perm in ("admin", "write")}},
            }
        if m == "POST" and re.fullmatch(r"/repos/[^/]+/[^/]+/statuses/[0-9a-f]{40}", path):
            self.statuses.append({**body, "sha": path.rsplit("/", 1)[1]})
            return 201, {"id": len(self.statuses), **body}
        if found := re.fullmatch(r"/repos/[^/]+/[^/]+/issues/(\d+)/comments", path):
            comments = self.comments.setdefault(int(found.group(1)), [])
            if m == "GET":
                return 200, comments
            comments.append({"id": len(comments) + 1, "body": body["body"]})
            return 201, comments[-1]
        if m == "PATCH" and (found := re.fullmatch(r"/repos/[^/]+/[^/]+/issues/(\d+)", path)):
            self.closed[int(found.group(1))] = body.get("state_reason", "")
            return 200, {"number": int(found.group(1)), "state": body.get("state")}
        return 404, {"message": "Not Found"}
