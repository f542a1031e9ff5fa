"""Running git, bounded and with options that cannot be smuggled in (:func:`run_git`,
:func:`git_output`).

Every git process runs with an environment built from scratch (no proxy, credential or git
variables of the service's own), no credential helper or prompt, only the http(s) transport
of the repository for network commands and none for local ones (so a partial clone never
fetches lazily), in its own process group, killed past :data:`TIMEOUT` or when its output
passes its cap. Network commands never follow redirects and connect to the addresses the
repository's host resolves to *now*, checked against the service's :class:`RepoPolicy` and
pinned for git's connection (``http.curloptResolve``), so a name that re-resolves to an
internal address between the check and the connection (DNS rebinding) is not reached."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import signal
from dataclasses import dataclass
from urllib.parse import urlsplit

from .repo_url import RepoPolicy, Resolver, host_addresses, system_resolver

TIMEOUT = 60  # seconds, per git process
MAX_OUTPUT = 16 << 20  # stdout of one git process (ls-remote of a repo with many refs)
MAX_STDERR = 64 << 10
DISK_POLL_SECONDS = 0.05
CHUNK = 64 << 10
NETWORK_COMMANDS = frozenset({"ls-remote", "fetch"})
GIT = shutil.which("git") or "git"
PATH = "/usr/local/bin:/usr/bin:/bin"
# variables passed through from the service: where TLS trust anchors are (an in-cluster
# GitLab with a private CA), nothing else
PASSED_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH")
# every git process
COMMON_CONFIG = (
    "credential.helper=",
    "core.askPass=/bin/false",
    "maintenance.auto=false",
    "gc.auto=0",
    "core.bigFileThreshold=1m",  # objects over 1 MiB are streamed, never held whole
)
# network commands: no redirects (git treats them as errors), the pack stays packed
NETWORK_CONFIG = (
    "http.followRedirects=false",
    "fetch.unpackLimit=1",
    "fetch.writeCommitGraph=false",
    "protocol.version=2",
)


# which hosts git may connect to, and how names resolve
_network: tuple[RepoPolicy, Resolver] = (RepoPolicy(), system_resolver)


def configure(policy: RepoPolicy, resolve: Resolver = system_resolver) -> None:
    """The service's repository policy and resolver, for the address check of every network
    command (one per process: :class:`BuildService` sets it)."""
    global _network
    _network = (policy, resolve)


def _env(protocols: str) -> dict[str, str]:
    """git's whole environment: nothing inherited but trust anchors."""
    env = {
        "PATH": PATH,
        "HOME": "/nonexistent",
        "LC_ALL": "C",
        "GIT_ALLOW_PROTOCOL": protocols,
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_LITERAL_PATHSPECS": "1",
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_NO_LAZY_FETCH": "1",  # git >= 2.44; older ones are stopped by GIT_ALLOW_PROTOCOL
    }
    env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
    return env


def protocols_for(repo: str) -> str:
    return "http" if repo.startswith("http:") else "https"


def _curl_address(address: str) -> str:
    return f"[{address}]" if ":" in address else address


async def _network_config(args: tuple[str, ...]) -> list[str]:
    """``-c`` options of a network command: no redirects, and the repository host's
    addresses, resolved and checked now, pinned for the connection."""
    if "--" not in args or args.index("--") + 1 >= len(args):
        raise ValueError(f"git {args[0]}: the repository must follow '--'")
    url = args[args.index("--") + 1]
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port or (80 if parts.scheme == "http" else 443)
    addresses = await asyncio.to_thread(host_addresses, host, *_network)
    config = list(NETWORK_CONFIG)
    if not _is_address(host):
        pinned = ",".join(_curl_address(a) for a in addresses)
        config.append(f"http.curloptResolve={host}:{port}:{pinned}")
    return [item for option in config for item in ("-c", option)]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _disk_usage(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _kill(proc: asyncio.subprocess.Process) -> None:
    """The process and what it started (its own process group)."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class GitResult:
    code: int
    out: bytes
    err: str
    stopped: str = ""  # why the process was killed (its output, disk, time), "" if it was not

    def failure(self) -> str:
        """What went wrong, for a message (the end of stderr)."""
        why = self.stopped or self.err.strip()[-300:] or f"exit code {self.code}"
        if "returned error: 30" in why:  # git reports a refused redirect like this
            why += " (the server answered with a redirect; the builder does not follow them)"
        return why


async def run_git(
    args: tuple[str, ...],
    *,
    cwd: str | None = None,
    protocols: str = "https",
    stdin: bytes | None = None,
    limit: int | None = None,
    disk_limit: int = 0,
) -> GitResult:
    """Run ``git <args>`` bounded: stdout up to ``limit`` bytes (default MAX_OUTPUT), stderr
    up to MAX_STDERR, TIMEOUT seconds, and (``disk_limit``) the size of ``cwd``; past any of
    them the process group is killed and ``stopped`` says why."""
    limit = MAX_OUTPUT if limit is None else limit
    config = [item for option in COMMON_CONFIG for item in ("-c", option)]
    if args and args[0] in NETWORK_COMMANDS:
        config += await _network_config(args)
    else:
        protocols = "none"  # local commands never reach the network (lazy fetches included)
    proc = await asyncio.create_subprocess_exec(
        GIT,
        *config,
        *args,
        cwd=cwd,
        env=_env(protocols),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = bytearray(), bytearray()
    stopped: list[str] = []

    def stop(why: str) -> None:
        if not stopped:
            stopped.append(why)
        _kill(proc)

    async def pump(stream: asyncio.StreamReader, buf: bytearray, cap: int, what: str) -> None:
        while chunk := await stream.read(CHUNK):
            if len(buf) + len(chunk) > cap:
                stop(f"git {args[0]}: its {what} passed {cap} bytes; stopped")
                return
            buf += chunk

    async def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin or b"")
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            proc.stdin.close()

    async def watch() -> None:
        while True:
            await asyncio.sleep(DISK_POLL_SECONDS)
            if _disk_usage(cwd or ".") > disk_limit:
                stop(f"git {args[0]}: passed {disk_limit >> 20} MiB on disk; stopped")
                return

    assert proc.stdout is not None and proc.stderr is not None
    jobs = [pump(proc.stdout, out, limit, "output"), pump(proc.stderr, err, MAX_STDERR, "stderr")]
    if stdin is not None:
        jobs.append(feed())
    watcher = asyncio.create_task(watch()) if disk_limit else None
    try:
        await asyncio.wait_for(asyncio.gather(*jobs, proc.wait()), TIMEOUT)
    except TimeoutError:
        stop(f"git {args[0]}: timed out after {TIMEOUT} s")
        await proc.wait()
    except BaseException:  # cancelled: the process goes too
        _kill(proc)
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
    if disk_limit and not stopped and _disk_usage(cwd or ".") > disk_limit:
        stopped.append(f"git {args[0]}: passed {disk_limit >> 20} MiB on disk; stopped")
    code = proc.returncode or 0
    if stopped and not code:
        code = 124
    return GitResult(code, bytes(out), err.decode(errors="replace"), stopped[0] if stopped else "")


async def git_output(
    *args: str, cwd: str | None = None, protocols: str = "https", limit: int | None = None
) -> tuple[int, str]:
    """(exit code, stdout) of a bounded git process; on failure the text says why."""
    r = await run_git(args, cwd=cwd, protocols=protocols, limit=limit)
    if r.code:
        return r.code, r.failure()
    return 0, r.out.decode(errors="replace")


# refs whose content the repository publishes: its branches and tags. Anything else that a
