"""A local git server over smart HTTP (``git http-backend``), for tests and the demo.

It serves bare repositories from a folder on an address that the node's pods can reach, so
the builder (on the host) and its build pods (on the node) clone the same URL. ``add_repo``
turns a folder of files into a repository with one commit and a tag.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "aicoe demo",
    "GIT_AUTHOR_EMAIL": "demo@example.invalid",
    "GIT_COMMITTER_NAME": "aicoe demo",
    "GIT_COMMITTER_EMAIL": "demo@example.invalid",
}


def git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=dict(os.environ, **GIT_ENV),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


class GitServer:
    """``http://<address>:<port>/<name>.git`` for every repository in ``root``.

    For tests: ``requests`` logs each request (method, path and query); ``in_flight`` and
    ``max_in_flight`` count requests being answered; ``delay`` seconds pass before each
    answer (a slow server); ``redirects`` maps a repository name to a URL its requests are
    redirected to (302, the rest of the path appended)."""

    def __init__(self, root: Path, address: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        server_root = self.root
        self.requests: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.redirects: dict[str, str] = {}
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._counted()

            def do_POST(self) -> None:
                self._counted()

            def _counted(self) -> None:
                with lock:
                    server.requests.append((self.command, self.path))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    name = self.path.lstrip("/").split(".git/", 1)[0]
                    if name in server.redirects:
                        rest = self.path.lstrip("/")[len(name) + len(".git") :]
                        self.send_response(302)
                        self.send_header("Location", server.redirects[name] + rest)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self._backend()
                finally:
                    with lock:
                        server.in_flight -= 1

            def _backend(self) -> None:
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(server_root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_CONFIG_GLOBAL": "/dev/null",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_ADDR": self.client_address[0],
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                }
                proc = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True
                )
                head, _, payload = proc.stdout.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode(errors="replace").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.address = address
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self) -> GitServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(
        self,
        name: str,
        files: Path,
        *,
        tag: str = "v1",
        substitutions: dict[str, str] | None = None,
    ) -> str:
        """Publish ``files`` as repository ``name`` (one commit on ``main``, tagged ``tag``),
        replacing ``@KEY@`` placeholders in text files; returns its clone URL."""
        bare = self.root / f"{name}.git"
        work = self.root / f".work-{name}"
        shutil.rmtree(bare, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(files, work, symlinks=True)
        for path in work.rglob("*"):
            if path.is_file() and not path.is_symlink() and substitutions:
                try:
                    text = path.read_text()
                except UnicodeDecodeError:
                    continue
                for key, value in substitutions.items():
                    text = text.replace(f"@{key}@", value)
                path.write_text(text)
        git("init", "-q", "-b", "main", cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", f"{name}: example repository", cwd=work)
        git("tag", tag, cwd=work)
        git("clone", "-q", "--bare", str(work), str(bare), cwd=self.root)
        git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
        shutil.rmtree(work)
        return f"{self.base_url}/{name}.git"
