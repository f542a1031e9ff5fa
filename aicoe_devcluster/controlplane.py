"""A local etcd + kube-apiserver on loopback, for tests and the demo.

The binaries come from ``tools/build.sh`` (built from Go modules). Nothing else of Kubernetes
runs: the fake kubelet and the namespace finalizer in this package play those parts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .pki import Pki, create_pki

REPO_ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = Path(__file__).resolve().parent / "crds"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started."""


def this_checkout_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a Python subprocess (hub, builder) that must import this checkout's
    ``aicoe_spawner``, not another one an editable install may point at."""
    path = env.get("PYTHONPATH", "")
    return {**env, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)}


def tools_bin_dir() -> Path:
    """Where tools/build.sh puts kube-apiserver, etcd and helm."""
    return Path(os.environ.get("AICOE_TOOLS_BIN", REPO_ROOT / ".cache" / "bin"))


def find_binary(name: str) -> Path:
    """Path of a tools/ binary; raises ControlPlaneError naming the fix when it is missing."""
    path = tools_bin_dir() / name
    if not os.access(path, os.X_OK):
        raise ControlPlaneError(f"{path} is missing: run tools/build.sh to build it")
    return path


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never one this process was given before: the kernel may
    hand a port it just freed out again, and two servers told the same port (a hub and its
    proxy's API) collide when the second binds."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    namespace: str = "default",
) -> Path:
    """Write a kubeconfig (JSON, which is valid YAML) for a client certificate or a token."""
    user: dict = {}
    if cert and key:
        user = {"client-certificate": str(cert), "client-key": str(key)}
    if token:
        user = {"token": token}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [
            {
                "name": "local",
                "context": {"cluster": "local", "user": "user", "namespace": namespace},
            }
        ],
        "current-context": "local",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


class ControlPlane:
    """etcd and kube-apiserver as child processes, in a temporary directory.

    ``start()`` returns once ``/readyz`` answers and namespace ``default`` exists;
    ``restart_apiserver()`` stops and starts kube-apiserver on the same port and etcd.
    """

    def __init__(
        self, workdir: Path | None = None, *, keep_workdir: bool = False, real_node: bool = False
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aicoe-controlplane-"))
        self.keep_workdir = keep_workdir
        # With a real node (node.RealNode) the ServiceAccount admission plugin is on, as on any
        # cluster, and the API server reaches kubelets by their InternalIP.
        self.real_node = real_node
        # Where kube-apiserver listens and what it advertises. A real node with cluster
        # services (node.RealNode(cluster_services=True)) sets its node IP here, so that pods
        # reach the API server through the `kubernetes` Service, whose endpoint the API server
        # then maintains itself (endpoint reconciler on).
        self.address = "127.0.0.1"
        self.etcd_bin = find_binary("etcd")
        self.apiserver_bin = find_binary("kube-apiserver")
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = free_port()
        self.pki: Pki | None = None
        self.etcd: subprocess.Popen | None = None
        self.apiserver: subprocess.Popen | None = None
        self.etcd_log = self.workdir / "etcd.log"
        self.apiserver_log = self.workdir / "kube-apiserver.log"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.startup_seconds: float | None = None

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    @property
    def reachable_from_pods(self) -> bool:
        return self.address != "127.0.0.1"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> ControlPlane:
        started = time.monotonic()
        self.pki = create_pki(
            self.workdir / "pki", extra_ips=(self.address,) if self.reachable_from_pods else ()
        )
        write_kubeconfig(
            self.kubeconfig,
            self.server,
            self.pki.ca_cert,
            cert=self.pki.admin_cert,
            key=self.pki.admin_key,
        )
        self._start_etcd(timeout)
        self.start_apiserver(timeout)
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_etcd(self, timeout: float) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        args = [
            str(self.etcd_bin),
            "--name=default",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        self.etcd = self._spawn(args, self.etcd_log)
        self._wait(lambda: self._http_ok(f"{client}/health"), self.etcd, "etcd", timeout)

    def start_apiserver(self, timeout: float = 90) -> None:
        """Start kube-apiserver (again) and wait for it to be ready."""
        assert self.pki is not None
        args = [
            str(self.apiserver_bin),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={self.pki.serving_cert}",
            f"--tls-private-key-file={self.pki.serving_key}",
            f"--client-ca-file={self.pki.ca_cert}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            "--authorization-mode=RBAC",
            *(
                ["--kubelet-preferred-address-types=InternalIP"]
                if self.real_node
                else ["--disable-admission-plugins=ServiceAccount,StorageObjectInUseProtection"]
            ),
            f"--endpoint-reconciler-type={'lease' if self.reachable_from_pods else 'none'}",
            "--allow-privileged=true",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--v=1",
        ]
        with self.apiserver_log.open("a") as log:
            log.write(f"\n==== kube-apiserver starting at {time.strftime('%H:%M:%S')} ====\n")
        self.apiserver = self._spawn(args, self.apiserver_log)
        self._wait(self._apiserver_ready, self.apiserver, "kube-apiserver", timeout)

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver only; etcd and its data stay."""
        self._terminate(self.apiserver)
        self.apiserver = None

    def restart_apiserver(self, down_seconds: float = 0.0, timeout: float = 90) -> None:
        self.stop_apiserver()
        if down_seconds:
            time.sleep(down_seconds)
        self.start_apiserver(timeout)

    def stop(self) -> None:
        self._terminate(self.apiserver)
        self._terminate(self.etcd)
        self.apiserver = self.etcd = None
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- diagnostics -----------------------------------------------------------------------

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for path in (self.etcd_log, self.apiserver_log):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"---- {path.name} (last {len(text)} lines) ----")
            out.extend(text)
        return "\n".join(out)

    # -- helpers ---------------------------------------------------------------------------

    def _spawn(self, args: list[str], log_path: Path) -> subprocess.Popen:
        log = log_path.open("ab")
        try:
            return subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    @staticmethod
    def _terminate(proc: subprocess.Popen | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def _wait(self, ready, proc: subprocess.Popen, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {proc.returncode} during startup\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise ControlPlaneError(f"{name} not ready after {timeout} s\n{self.log_tail()}")

    @staticmethod
    def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def get(self, path: str) -> dict | None:
        """GET an API path as admin; None when it does not answer 200."""
        try:
            with urllib.request.urlopen(
                f"{self.server}{path}", timeout=5, context=self._ssl_context()
            ) as resp:
                return json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def _apiserver_ready(self) -> bool:
        ctx = self._ssl_context()
        return self._http_ok(f"{self.server}/readyz", ctx) and self._http_ok(
            f"{self.server}/api/v1/namespaces/default", ctx
        )
