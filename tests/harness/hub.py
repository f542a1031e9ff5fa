"""A real JupyterHub process (with configurable-http-proxy) for end-to-end tests, and a
stand-in single-user server that answers on the pods' podIP:port so spawns complete."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp

from aicoe_devcluster.controlplane import REPO_ROOT, free_port, this_checkout_env
from harness.kube import user_pods

CHP = REPO_ROOT / ".cache" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"


class FakeSingleUser:
    """Answers every HTTP request with 200, standing in for jupyterhub-singleuser."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"version": "fake"}')

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.asynccontextmanager
async def running_hub(
    workdir: Path, kubeconfig: Path, namespace: str, extra_config: str = ""
) -> AsyncIterator[Hub]:
    """A started :class:`Hub` spawning into ``namespace``, its servers answered by a
    :class:`FakeSingleUser`; both stopped afterwards."""
    singleuser = FakeSingleUser()
    hub = Hub(workdir, kubeconfig, namespace, singleuser.port, extra_config)
    try:
        await hub.start()
        yield hub
    finally:
        await hub.stop()
        singleuser.stop()


class Hub:
    """A JupyterHub process with AICoESpawner, an admin service token and a log file."""

    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path,
        namespace: str,
        singleuser_port: int,
        extra_config: str = "",
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.port = free_port()
        self.hub_port = free_port()
        self.api_port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "jupyterhub.log"
        self.proc: subprocess.Popen | None = None
        config = f"""
        c = get_config()  # noqa
        c.JupyterHub.ip = "127.0.0.1"
        c.JupyterHub.port = {self.port}
        c.JupyterHub.hub_ip = "127.0.0.1"
        c.JupyterHub.hub_port = {self.hub_port}
        c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
        c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
        c.ConfigurableHTTPProxy.auth_token = {secrets.token_hex(16)!r}
        c.JupyterHub.db_url = "sqlite:///{workdir / "jupyterhub.sqlite"}"
        c.JupyterHub.cookie_secret_file = "{workdir / "cookie_secret"}"
        c.JupyterHub.authenticator_class = "dummy"
        c.Authenticator.allow_all = True
        c.JupyterHub.spawner_class = "aicoe"
        c.JupyterHub.cleanup_servers = True
        c.JupyterHub.services = [{{"name": "tester", "api_token": {self.token!r}}}]
        c.JupyterHub.load_roles = [{{"name": "admin", "services": ["tester"]}}]
        c.KubeSpawner.namespace = {namespace!r}
        c.KubeSpawner.port = {singleuser_port}
        c.KubeSpawner.start_timeout = 60
        c.KubeSpawner.http_timeout = 30
        c.KubeSpawner.storage_pvc_ensure = False
        c.KubeSpawner.k8s_api_request_retry_timeout = 10
        """
        (workdir / "jupyterhub_config.py").write_text(
            textwrap.dedent(config) + "\n" + textwrap.dedent(extra_config)
        )

    # -- process ---------------------------------------------------------------------------

    async def start(self, timeout: float = 60) -> Hub:
        env = this_checkout_env(
            dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1")
        )
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [
                sys.executable,
                "-m",
                "jupyterhub",
                "-f",
                str(self.workdir / "jupyterhub_config.py"),
                "--debug",
            ],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"jupyterhub exited with {self.proc.returncode}\n{self.log_tail()}"
                    )
                try:
                    async with session.get(
                        f"{self.url}/hub/api/", timeout=aiohttp.ClientTimeout(total=2)
                    ) as r:
                        if r.status == 200:
                            return self
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"jupyterhub not up after {timeout} s\n{self.log_tail()}")

    async def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def log_size(self) -> int:
        """Where the hub log ends now: pass it to :meth:`log_since`."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        """What the hub logged after ``offset``."""
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- REST API --------------------------------------------------------------------------

    async def api(
        self, method: str, path: str, json: Any = None, data: bytes | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"token {self.token}"}
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method, f"{self.url}/hub/api{path}", json=json, data=data, headers=headers
            ) as r:
                body = await r.text()
                try:
                    import json as _json

                    parsed = _json.loads(body) if body else None
                except ValueError:
                    parsed = body
                return r.status, parsed

    async def ensure_user(self, name: str, groups: list[str] = ()) -> None:
        status, _ = await self.api("POST", f"/users/{name}")
        assert status in (201, 409), status
        for group in groups:
            status, _ = await self.api("POST", f"/groups/{group}")
            assert status in (201, 409), status
            status, _ = await self.api("POST", f"/groups/{group}/users", json={"users": [name]})
            assert status == 200, status

    async def wait_stopped(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, model = await self.api("GET", f"/users/{name}")
            if status == 200 and not model["servers"]:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"server of {name} did not stop")

    async def wait_ready(self, name: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, model = await self.api("GET", f"/users/{name}")
            server = (model or {}).get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            if server is None and status == 200 and not (model or {}).get("pending"):
                raise AssertionError(f"server of {name} went away\n{self.log_tail(40)}")
            await asyncio.sleep(0.2)
        raise TimeoutError(f"server of {name} not ready\n{self.log_tail(40)}")

    async def stop_server(self, name: str) -> None:
        status, _ = await self.api("DELETE", f"/users/{name}/server")
        assert status in (202, 204, 400), status
        await self.wait_stopped(name)

    # -- browser-less web session ----------------------------------------------------------

    async def login(self, name: str) -> WebSession:
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with session.get(f"{self.url}/hub/login") as r:
            page = await r.text()
        xsrf = _input_value(page, "_xsrf")
        async with session.post(
            f"{self.url}/hub/login?next=",
            data={"username": name, "password": "x", "_xsrf": xsrf},
            allow_redirects=False,
        ) as r:
            assert r.status == 302, (r.status, await r.text())
        return WebSession(self, session)


class WebSession:
    """A logged-in user's cookies, for the HTML form and /hub/spawn links."""

    def __init__(self, hub: Hub, session: aiohttp.ClientSession) -> None:
        self.hub = hub
        self.session = session

    async def get(self, path: str, **kwargs) -> tuple[int, str]:
        async with self.session.get(f"{self.hub.url}{path}", **kwargs) as r:
            return r.status, await r.text()

    async def spawn_page(self, user: str) -> str:
        status, page = await self.get(f"/hub/spawn/{user}")
        assert status == 200, (status, page[:500])
        return page

    async def post_form(
        self, user: str, fields: list[tuple[str, str]], page_path: str | None = None
    ) -> tuple[int, str]:
        """Post ``fields`` with the form of ``page_path`` (default: the user's spawn page)."""
        if page_path is None:
            page = await self.spawn_page(user)
        else:
            status, page = await self.get(page_path)
            assert status == 200, (status, page[:500])
        action = re.search(r'<form[^>]*action="([^"]+)"', page)
        assert action, page[:2000]
        url = action.group(1).replace("&amp;", "&")
        async with self.session.post(
            f"{self.hub.url}{url}", data=fields, allow_redirects=False
        ) as r:
            return r.status, await r.text()

    async def close(self) -> None:
        await self.session.close()


def _input_value(page: str, name: str) -> str:
    match = re.search(rf'name="{name}"[^>]*value="([^"]*)"', page) or re.search(
        rf'value="([^"]*)"[^>]*name="{name}"', page
    )
    assert match, f"no input {name} on page"
    return match.group(1)


# -- spawners outside a hub -------------------------------------------------------------------


class StandInUser:
    """Just enough of ``jupyterhub.user.User`` to build a spawner and render its form."""

    def __init__(self, name: str, groups: tuple[str, ...] = ()) -> None:
        from types import SimpleNamespace
        from urllib.parse import quote

        self.name = name
        self.escaped_name = quote(name, safe="@~")
        self.id = 1
        self.url = f"/user/{self.escaped_name}/"
        self.groups = [SimpleNamespace(name=g) for g in groups]


def in_process_spawner(spawner_class: type, user: str, namespace: str, **traits: Any):
    """A spawner built in this process with a stand-in user and hub (as the benchmarks build
    them); it shares this process's ImageStreamWatch for its namespace."""
    from types import SimpleNamespace

    hub = SimpleNamespace(
        public_host="",
        url="http://127.0.0.1:8081/hub/",
        base_url="/hub/",
        api_url="http://127.0.0.1:8081/hub/api",
    )
    return spawner_class(_mock=True, user=StandInUser(user), hub=hub, namespace=namespace, **traits)


def files_containing(directory: Path, needle: str) -> list[str]:
    """Names of the files in ``directory`` (a hub's database, journal, log, ...) whose bytes
    contain ``needle``."""
    return [
        p.name for p in directory.iterdir() if p.is_file() and needle.encode() in p.read_bytes()
    ]


async def run_in_kernel(hub, user: str, token: str, code: str) -> str:
    """Run ``code`` in a new kernel of the user's server (through the proxy at ``hub.url``:
    a :class:`Hub` or the demo); its stdout."""
    headers = {"Authorization": f"token {token}"}
    base = f"{hub.url}/user/{user}/api"
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{base}/kernels", json={"name": "python3"}) as r:
            assert r.status == 201, (r.status, await r.text())
            kernel = await r.json()
        msg_id = uuid.uuid4().hex
        request = {
            "header": {
                "msg_id": msg_id,
                "username": user,
                "session": uuid.uuid4().hex,
                "msg_type": "execute_request",
                "version": "5.3",
                "date": datetime.datetime.now(datetime.UTC).isoformat(),
            },
            "parent_header": {},
            "metadata": {},
            "content": {"code": code, "silent": False, "allow_stdin": False},
            "channel": "shell",
            "buffers": [],
        }
        out = []
        ws_url = f"{base}/kernels/{kernel['id']}/channels".replace("http://", "ws://")
        async with session.ws_connect(ws_url) as ws:
            await ws.send_str(json.dumps(request))
            async with asyncio.timeout(120):
                async for frame in ws:
                    msg = json.loads(frame.data)
                    if msg.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    if msg["msg_type"] == "stream":
                        out.append(msg["content"]["text"])
                    if msg["msg_type"] == "error":
                        raise AssertionError("\n".join(msg["content"]["traceback"]))
                    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        break
        async with session.delete(f"{base}/kernels/{kernel['id']}") as r:
            assert r.status == 204
    return "".join(out)


async def spawn_one_pod(hub: Hub, kube, user: str, options: dict) -> dict:
    """Start ``user``'s server with ``options`` through the REST API; its one pod."""
    status, body = await hub.api("POST", f"/users/{user}/server", json=options)
    assert status in (201, 202), (status, body, hub.log_tail(30))
    await hub.wait_ready(user)
    pods = await user_pods(kube, hub.namespace, user)
    assert len(pods) == 1
    return pods[0]
