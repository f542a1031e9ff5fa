"""A Git server over HTTP on loopback (git http-backend as CGI) with repositories made from
dicts, refs a repository does not publish, and a listener that records what reaches it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import TYPE_CHECKING

from aicoe_devcluster import gitserver
from aicoe_devcluster.controlplane import free_port

if TYPE_CHECKING:
    pass


class GitServer(gitserver.GitServer):
    """The project's smart-HTTP git server on loopback, with repositories made from dicts."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "127.0.0.1", free_port())
        self.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def create_repo(
        self,
        name: str,
        files: dict[str, str],
        tag: str | None = None,
        symlinks: dict[str, str] | None = None,
    ) -> str:
        """A bare repo ``name`` with one commit of ``files`` and ``symlinks`` (path ->
        target) (and ``tag``); returns the SHA."""
        work = Path(tempfile.mkdtemp(prefix="git-work-"))
        subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
        sha = self._commit(work, files, symlinks or {}, tag)
        bare = self.root / f"{name}.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
        shutil.rmtree(work)
        return sha

    def update_repo(self, name: str, files: dict[str, str], tag: str | None = None) -> str:
        """A new commit of ``files`` on ``main`` of repo ``name`` (and ``tag``); the SHA."""
        work = Path(tempfile.mkdtemp(prefix="git-work-"))
        bare = self.root / f"{name}.git"
        subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True)
        sha = self._commit(work, files, {}, tag)
        g = ["git", "-C", str(work), "push", "-q", "origin", "main"]
        subprocess.run(g + ([f"refs/tags/{tag}"] if tag else []), check=True)
        shutil.rmtree(work)
        return sha

    @staticmethod
    def _commit(work: Path, files: dict[str, str], symlinks: dict[str, str], tag) -> str:
        for path, text in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
            if path.endswith((".sh", "assemble", "run")):
                (work / path).chmod(0o755)
        for path, target in symlinks.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).symlink_to(target)
        g = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.com"]
        subprocess.run([*g, "add", "-A"], check=True)
        subprocess.run([*g, "commit", "-q", "-m", "change"], check=True)
        if tag:
            subprocess.run([*g, "tag", "-a", tag, "-m", tag], check=True)
        return subprocess.run(
            [*g, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()


class Recorder:
    """An HTTP listener on loopback that records the paths that reach it and answers 404:
    a host the builder must never reach."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def push_unpublished_ref(git: GitServer, name: str, ref: str, files: dict[str, str]) -> str:
    """A commit of ``files`` on top of ``main`` of repo ``name``, pushed only to ``ref`` (e.g.
    ``refs/pull/1/head``, what a forge advertises for a pull request): the server advertises
    it, no branch or tag holds it. Returns the SHA."""
    work = Path(tempfile.mkdtemp(prefix="git-work-"))
    bare = git.root / f"{name}.git"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True)
    sha = git._commit(work, files, {}, None)
    subprocess.run(["git", "-C", str(work), "push", "-q", "origin", f"HEAD:{ref}"], check=True)
    shutil.rmtree(work)
    return sha
