"""A real single-node cluster on this machine: containerd + runc, bridge CNI, kubelet,
kube-scheduler and kube-controller-manager beside a ``ControlPlane``, a local registry
that the node pulls from, and CoreDNS on the node IP as the pods' only resolver
(``<service>.<namespace>.svc.cluster.local``; every other name is REFUSED: pods reach nothing
outside the test cluster, not even the machine's resolver). With ``cluster_services=True``
also what in-cluster clients need: the API server on the node IP (the ``kubernetes``
Service) and kube-proxy (Services, NodePorts). Test and demo use only; needs root.

Everything it makes is its own: a bridge ``aicoe<N>`` with gateway ``10.244.<N>.1`` (the node
IP, which pods use to reach services on the host), containerd's root/state/socket, the
kubelet's root, a cgroup root ``/aicoe-<id>`` — and ``stop()`` removes all of it: processes,
mounts, network namespaces, interfaces, cgroups and kube-proxy's iptables rules (checked by
``leftovers()``). kube-proxy's rules are global: run one node with cluster services at a time.

On demand (:meth:`RealNode.start_network_policies`) the node enforces NetworkPolicies with
kube-network-policies (tools/kube-network-policies, patched for kernels without the nftables
``queue`` expression); its nftables table ``inet kube-network-policies`` is global too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .controlplane import ControlPlane, ControlPlaneError, find_binary, free_port
from .images import ImageBuilder, cache_dir

log = logging.getLogger("aicoe.devcluster.node")

NODE_NAME = "aicoe-node"
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN = Path("/usr/lib/cni")
CGROUP_FS = Path("/sys/fs/cgroup")
#: The NetworkPolicy agent's nftables table (``--nftables-table`` is not a flag of v0.8.0).
POLICY_TABLE = ("inet", "kube-network-policies")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def pick_network_index() -> int:
    """The first N for which neither bridge ``aicoe<N>`` nor 10.244.<N>.0/24 is in use."""
    links = _ip("-o", "link").stdout
    addrs = _ip("-o", "addr").stdout
    for n in range(10, 250):
        if f"aicoe{n}:" not in links and f"10.244.{n}." not in addrs:
            return n
    raise ControlPlaneError("no free aicoe<N> bridge / 10.244.<N>.0/24 subnet")


def mountpoints() -> list[str]:
    """Every mount point of this mount namespace, in mount order."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].replace("\\040", " "))
    return points


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def processes_in(folder: Path) -> list[int]:
    """PIDs whose working directory is ``folder`` or below it (what a hub started there left:
    its proxy and managed services run in their own sessions)."""
    pids = []
    folder = folder.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = (entry / "cwd").resolve(strict=True)
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            pids.append(int(entry.name))
    return pids


def iptables_rules() -> str:
    """All IPv4 iptables rules (without counters and comments)."""
    proc = subprocess.run(["iptables-save"], capture_output=True, text=True)
    return "\n".join(line for line in proc.stdout.splitlines() if line and line[0] not in "#:")


def nft_tables() -> set[str]:
    """nftables tables (``family name``), e.g. the ``ip nat`` that iptables-nft creates."""
    proc = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    return {line.removeprefix("table ").strip() for line in proc.stdout.splitlines() if line}


def remove_kube_rules(tables_before: set[str]) -> None:
    """Remove what kube-proxy leaves after ``--cleanup``: ``KUBE-*`` chains and the rules that
    jump to them (IPv4 and IPv6), and the tables that did not exist before and are empty."""
    for tool in ("iptables", "ip6tables"):
        table = ""
        dump = subprocess.run([f"{tool}-save"], capture_output=True, text=True).stdout
        chains = []
        for line in dump.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and " -j KUBE-" in line and not line.startswith("-A KUBE-"):
                subprocess.run([tool, "-t", table, "-D", *line[3:].split()], capture_output=True)
            elif line.startswith(":KUBE-"):
                chains.append((table, line[1:].split()[0]))
        for table, chain in chains:
            subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
        for table, chain in chains:
            subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)
    for family_name in nft_tables() - tables_before:
        listing = subprocess.run(
            ["nft", "list", "table", *family_name.split()], capture_output=True, text=True
        ).stdout
        rules = [
            line
            for line in listing.splitlines()
            if line.strip() and not line.strip().startswith(("table ", "chain ", "type ", "}"))
        ]
        if not rules:
            subprocess.run(["nft", "delete", "table", *family_name.split()], capture_output=True)


class RealNode:
    """Node components for ``plane`` (``real_node=True``), under ``workdir``.

    Without cluster services the plane is started first and stays on loopback; with them the
    node starts the plane itself, on the node IP, once the bridge exists.
    """

    def __init__(self, plane: ControlPlane, *, cluster_services: bool = False) -> None:
        if (plane.pki is None) != cluster_services:
            raise ControlPlaneError(
                "start the control plane before the node"
                if plane.pki is None
                else "with cluster_services the node starts the control plane"
            )
        self.plane = plane
        self.cluster_services = cluster_services
        # short: unix sockets (containerd, the kubelet's pod-resources) allow 107 bytes
        self.workdir = Path(tempfile.mkdtemp(prefix="aicoe-node-"))
        self.id = uuid.uuid4().hex[:8]
        self.index = pick_network_index()
        self.bridge = f"aicoe{self.index}"
        self.subnet = f"10.244.{self.index}.0/24"
        self.node_ip = f"10.244.{self.index}.1"
        self.cgroup_root = f"/aicoe-{self.id}"
        self.socket = self.workdir / "containerd" / "containerd.sock"
        self.registry_port = free_port()
        self.registry = f"{self.node_ip}:{self.registry_port}"
        # a second registry that asks for a password (htpasswd), started only on demand
        # (:meth:`start_auth_registry`); containerd knows it from the start
        self.auth_registry = f"{self.node_ip}:{free_port()}"
        self.kubelet_port = free_port()
        self.images: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.timings: dict[str, float] = {}
        self._nft_tables_before: set[str] = set()
        if cluster_services:
            plane.address = self.node_ip

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, images: tuple[str, ...] = ("notebook",), timeout: float = 120) -> RealNode:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._nft_tables_before = nft_tables()
        try:
            self._start_network()
            if self.cluster_services:
                self.plane.start()
            self._start_registry(timeout)
            t = time.monotonic()
            builder = ImageBuilder()
            for name in ("pause", *images):
                self.images[name] = builder.ensure(name, self.registry)
            self.timings["images"] = time.monotonic() - t
            self._start_containerd(timeout)
            self._start_kubelet()
            self._start_controllers()
            if self.cluster_services:
                self._start_kube_proxy()
            self._start_coredns(timeout)  # every node: pods resolve nothing outside it
            self._wait_node_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - started
        return self

    def ensure_image(self, name: str) -> str:
        """Registry reference (by digest) of one of the project's images, built if missing."""
        if name not in self.images:
            self.images[name] = ImageBuilder().ensure(name, self.registry)
        return self.images[name]

    def start_network_policies(self, timeout: float = 30) -> None:
        """Enforce NetworkPolicies on this node: kube-network-policies, which sends the first
        packet of every connection from or to a pod that a NetworkPolicy selects to an NFQUEUE
        (on POSTROUTING: forwarded and bridged traffic; with aicoe.patch also on INPUT: what
        pods send to the node's own addresses) and drops it unless the policies admit it. The
        node's root processes (the kubelet's probes) are not judged. Returns once its nftables
        table exists; :meth:`stop_network_policies` (or :meth:`stop`) removes it."""
        if "kube-network-policies" in self.procs:
            return
        self._spawn(
            "kube-network-policies",
            [
                str(find_binary("kube-network-policies")),
                f"--kubeconfig={self.plane.kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                # kernels from 6.12 have the conntrack fix; DNS is judged like the rest
                "--netfilter-bug-1766-fix=false",
                "--disable-nri",  # no NRI socket here (v0.8.0 ignores the flag: its informer)
                "--v=2",
            ],
        )
        self._wait_for(
            lambda: " ".join(POLICY_TABLE) in nft_tables(), "kube-network-policies", timeout
        )

    def stop_network_policies(self) -> None:
        """Stop the NetworkPolicy agent; it removes its table on SIGINT (not on SIGTERM), and
        a table left behind (queue rules without a reader drop every judged packet) is
        deleted here."""
        proc = self.procs.pop("kube-network-policies", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 10
            while " ".join(POLICY_TABLE) in nft_tables() and time.monotonic() < deadline:
                time.sleep(0.1)
            proc.kill()  # it sleeps 5 s after its cleanup
            proc.wait(10)
        if " ".join(POLICY_TABLE) in nft_tables():
            subprocess.run(["nft", "delete", "table", *POLICY_TABLE], capture_output=True)

    def policy_pod_ips(self) -> set[str]:
        """The pod IPs that the agent judges (its set ``podips-v4``: the node's pods that a
        NetworkPolicy selects)."""
        proc = subprocess.run(
            ["nft", "-j", "list", "set", *POLICY_TABLE, "podips-v4"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return set()
        for item in json.loads(proc.stdout).get("nftables", []):
            if "set" in item:
                return {e for e in item["set"].get("elem", []) if isinstance(e, str)}
        return set()

    def stop(self) -> None:
        """Stop everything and remove every trace of the node."""
        self.stop_network_policies()
        for name in ("coredns", "kube-proxy", "kube-scheduler", "kube-controller-manager"):
            self._terminate(name)
        if self.cluster_services:  # kube-proxy's iptables (and nftables) rules
            subprocess.run(
                [str(find_binary("kube-proxy")), "--cleanup", "--v=0"], capture_output=True
            )
            remove_kube_rules(self._nft_tables_before)
        self._terminate("kubelet")
        self._kill_cgroup_processes()
        self._terminate("containerd")
        for pid in processes_mentioning(str(self.socket)):  # containerd shims
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._kill_cgroup_processes()
        self._unmount_all()
        self._remove_cgroups()
        self._terminate("registry")
        self._terminate("auth-registry")
        if not any(p.startswith(str(self.workdir)) for p in mountpoints()):
            shutil.rmtree(self.workdir, ignore_errors=True)
        _ip("link", "delete", self.bridge, check=False)
        for veth in re.findall(r"^\d+: (veth\w+)@", _ip("-o", "link").stdout, re.M):
            # veths of our pods whose network namespace is already gone
            master = _ip("-o", "link", "show", veth, check=False).stdout
            if f"master {self.bridge} " in master:
                _ip("link", "delete", veth, check=False)

    def leftovers(self) -> list[str]:
        """What of this node still exists on the machine (empty after ``stop()``)."""
        found = []
        for pid in processes_mentioning(str(self.workdir)):
            found.append(f"process {pid}")
        for point in mountpoints():
            if point.startswith(str(self.workdir)) or self.cgroup_root in point:
                found.append(f"mount {point}")
        if _ip("link", "show", self.bridge, check=False).returncode == 0:
            found.append(f"interface {self.bridge}")
        if f"10.244.{self.index}." in _ip("-o", "addr").stdout:
            found.append(f"address in {self.subnet}")
        for controller in self._cgroup_hierarchies():
            if (controller / self.cgroup_root.lstrip("/")).exists():
                found.append(f"cgroup {controller}{self.cgroup_root}")
        for rule in self.iptables_rules():
            found.append(f"iptables rule {rule}")
        if "kube-network-policies" in self.logs and " ".join(POLICY_TABLE) in nft_tables():
            found.append("nftables table {} {}".format(*POLICY_TABLE))
        return found

    def iptables_rules(self) -> list[str]:
        """iptables rules that name this node's bridge or subnet, and with cluster services
        kube-proxy's (``KUBE-*``; without them the node adds none; other software on the
        machine may add rules of its own meanwhile)."""
        mine = (
            self.bridge,
            f"10.244.{self.index}.",
            *(("KUBE-",) if self.cluster_services else ()),
        )
        return [r for r in iptables_rules().splitlines() if any(m in r for m in mine)]

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name, path in self.logs.items():
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"---- {name} (last {len(text)} lines) ----")
            out.extend(text)
        return "\n".join(out)

    # -- parts -----------------------------------------------------------------------------

    def _start_network(self) -> None:
        """The bridge, with the gateway address that is also the node IP."""
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.node_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        conf_dir = self.workdir / "cni"
        conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": f"aicoe-{self.id}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,  # pods reach the host only: no NAT to the outside
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet, "gateway": self.node_ip}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.workdir / "cni-ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }
        (conf_dir / "10-aicoe.conflist").write_text(json.dumps(conflist, indent=2))

    def _start_registry(self, timeout: float) -> None:
        storage = cache_dir() / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "registry.yml"
        config.write_text(
            textwrap.dedent(
                f"""\
                version: 0.1
                log: {{level: warn, accesslog: {{disabled: true}}}}
                storage:
                  filesystem: {{rootdirectory: {storage}}}
                  delete: {{enabled: true}}
                http: {{addr: "{self.registry}"}}
                """
            )
        )
        self._spawn("registry", ["docker-registry", "serve", str(config)])
        self._wait_for(lambda: self._http_ok(f"http://{self.registry}/v2/"), "registry", timeout)

    def start_auth_registry(self, username: str, password: str, timeout: float = 30) -> str:
        """Start (or restart with these credentials) the registry at :attr:`auth_registry`,
        which answers only ``username``/``password`` (docker-registry's htpasswd auth, bcrypt,
        over plain HTTP); its storage is the node's own and outlives a stop. Returns its
        ``host:port``. containerd pulls from it with the credentials the kubelet passes (a
        pod's image pull secret)."""
        import bcrypt  # only the tests that ask for this registry need it

        self.stop_auth_registry()
        folder = self.workdir / "auth-registry"
        (folder / "storage").mkdir(parents=True, exist_ok=True)
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
        (folder / "htpasswd").write_text(f"{username}:{hashed}\n")
        config = folder / "registry.yml"
        config.write_text(
            textwrap.dedent(
                f"""\
                version: 0.1
                log: {{level: warn, accesslog: {{disabled: true}}}}
                storage:
                  filesystem: {{rootdirectory: {folder / "storage"}}}
                  delete: {{enabled: true}}
                auth:
                  htpasswd: {{realm: aicoe-test, path: {folder / "htpasswd"}}}
                http: {{addr: "{self.auth_registry}"}}
                """
            )
        )
        self._spawn("auth-registry", ["docker-registry", "serve", str(config)])
        self._wait_for(
            lambda: self._http_status(f"http://{self.auth_registry}/v2/") == 401,
            "registry with authentication",
            timeout,
        )
        return self.auth_registry

    def stop_auth_registry(self) -> None:
        """Stop the registry with authentication (its images stay for the next start)."""
        self._terminate("auth-registry")

    def _start_containerd(self, timeout: float) -> None:
        root = self.workdir / "containerd"
        root.mkdir(parents=True, exist_ok=True)
        config = root / "config.toml"
        config.write_text(
            textwrap.dedent(
                f"""\
                version = 2
                root = "{root / "root"}"
                state = "{root / "state"}"
                [grpc]
                  address = "{self.socket}"
                [ttrpc]
                  address = "{self.socket}.ttrpc"
                [debug]
                  level = "warn"
                [metrics]
                  address = ""
                [plugins."io.containerd.grpc.v1.cri"]
                  sandbox_image = "{self.images["pause"]}"
                  restrict_oom_score_adj = true
                  netns_mounts_under_state_dir = true
                  enable_selinux = false
                  [plugins."io.containerd.grpc.v1.cri".containerd]
                    snapshotter = "overlayfs"
                    default_runtime_name = "runc"
                    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
                      runtime_type = "io.containerd.runc.v2"
                      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                        SystemdCgroup = false
                  [plugins."io.containerd.grpc.v1.cri".cni]
                    bin_dir = "{CNI_BIN}"
                    conf_dir = "{self.workdir / "cni"}"
                  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{self.registry}"]
                    endpoint = ["http://{self.registry}"]
                  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{self.auth_registry}"]
                    endpoint = ["http://{self.auth_registry}"]
                """
            )
        )
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait_for(self.socket.exists, "containerd", timeout)

    def _start_kubelet(self) -> None:
        kubelet_dir = self.workdir / "kubelet"
        kubelet_dir.mkdir(parents=True, exist_ok=True)
        for controller in self._cgroup_hierarchies():
            (controller / self.cgroup_root.lstrip("/")).mkdir(exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
            },
            "authorization": {"mode": "AlwaysAllow"},  # a test node on a private bridge
            "enforceNodeAllocatable": [],
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "makeIPTablesUtilChains": False,
            "serializeImagePulls": False,
            # not the machine's resolver: pods (also dnsPolicy Default) ask CoreDNS only
            "resolvConf": str(self._write_resolv_conf()),
            "clusterDNS": [self.node_ip],
            "clusterDomain": CLUSTER_DOMAIN,
            "volumeStatsAggPeriod": "0s",
            # not the machine's /var/log/pods: another node's kubelet deletes the log folders
            # of pods it does not know there
            "podLogsDir": str(kubelet_dir / "pod-logs"),
        }
        config_path = kubelet_dir / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        self._spawn(
            "kubelet",
            [
                str(find_binary("kubelet")),
                f"--config={config_path}",
                f"--kubeconfig={self.plane.kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.node_ip}",
                f"--root-dir={kubelet_dir / 'root'}",
                f"--cert-dir={kubelet_dir / 'pki'}",
                "--v=1",
            ],
        )

    def _start_controllers(self) -> None:
        pki = self.plane.pki
        assert pki is not None
        kubeconfig = str(self.plane.kubeconfig)
        common = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--authentication-skip-lookup=true",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--v=1",
        ]
        self._spawn(
            "kube-scheduler",
            [str(find_binary("kube-scheduler")), *common, f"--secure-port={free_port()}"],
        )
        self._spawn(
            "kube-controller-manager",
            [
                str(find_binary("kube-controller-manager")),
                *common,
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                "--controllers=*",
                "--use-service-account-credentials=false",
            ],
        )

    def _start_kube_proxy(self) -> None:
        """kube-proxy in iptables mode; NodePorts only on the node IP."""
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.plane.kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "bindAddress": self.node_ip,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "mode": "iptables",
            "clusterCIDR": self.subnet,
            "nodePortAddresses": [f"{self.node_ip}/32"],
            # 0: leave the machine's conntrack settings alone
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        path = self.workdir / "kube-proxy.json"
        path.write_text(json.dumps(config, indent=2))
        self._spawn("kube-proxy", [str(find_binary("kube-proxy")), f"--config={path}", "--v=1"])

    def _write_resolv_conf(self) -> Path:
        """The resolv.conf the kubelet gives pods: CoreDNS on the node IP, nothing else."""
        path = self.workdir / "kubelet" / "resolv.conf"
        path.write_text(f"nameserver {self.node_ip}\n")
        return path

    def _start_coredns(self, timeout: float) -> None:
        """CoreDNS on the node IP, port 53, the only resolver of the node's pods: it answers
        for the cluster domain (and reverse lookups) and REFUSES every other name, so a
        build that names an outside host (a registry on the internet) fails at once instead
        of waiting for a resolver it cannot reach."""
        ready_port = free_port()
        corefile = self.workdir / "Corefile"
        corefile.write_text(
            textwrap.dedent(
                f"""                {CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
                    bind {self.node_ip}
                    errors
                    ready 127.0.0.1:{ready_port}
                    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
                        kubeconfig {self.plane.kubeconfig}
                        pods insecure
                    }}
                    cache 5
                }}
                """
            )
        )
        self._spawn("coredns", [str(find_binary("coredns")), "-conf", str(corefile)])
        self._wait_for(
            lambda: self._http_ok(f"http://127.0.0.1:{ready_port}/ready"), "CoreDNS", timeout
        )

    def _wait_node_ready(self, timeout: float) -> None:
        t = time.monotonic()

        def ready() -> bool:
            node = self.plane.get(f"/api/v1/nodes/{NODE_NAME}")
            if not node:
                return False
            conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            taints = node.get("spec", {}).get("taints") or []
            return conditions.get("Ready") == "True" and not taints

        self._wait_for(ready, "node", timeout)
        self.timings["node_ready"] = time.monotonic() - t

    # -- teardown --------------------------------------------------------------------------

    @staticmethod
    def _cgroup_hierarchies() -> list[Path]:
        """Mounted cgroup hierarchies (v1 controllers and the unified v2 one)."""
        found = []
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _, point, fstype, *_ = line.split()
            if fstype in ("cgroup", "cgroup2") and point.startswith(str(CGROUP_FS)):
                found.append(Path(point))
        return found

    def _kill_cgroup_processes(self) -> None:
        for controller in self._cgroup_hierarchies():
            root = controller / self.cgroup_root.lstrip("/")
            if not root.exists():
                continue
            for procs in _walk(root, "cgroup.procs"):
                try:
                    pids = procs.read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
        time.sleep(0.2)

    def _remove_cgroups(self) -> None:
        for controller in self._cgroup_hierarchies():
            root = controller / self.cgroup_root.lstrip("/")
            if not root.exists():
                continue
            dirs = sorted(_walk(root), key=lambda p: -len(p.parts))
            for path in [*dirs, root]:
                for _ in range(20):
                    try:
                        path.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        self._kill_cgroup_processes()

    def _unmount_all(self) -> None:
        prefix = str(self.workdir)
        for point in reversed(mountpoints()):
            if point.startswith(prefix):
                subprocess.run(["umount", "--lazy", point], capture_output=True)

    # -- helpers ---------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        path = self.workdir / f"{name}.log"
        self.logs[name] = path
        with path.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _terminate(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def _wait_for(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with code {proc.returncode} while waiting for {what}\n"
                        f"{self.log_tail()}"
                    )
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"{what} not ready after {timeout} s\n{self.log_tail()}")

    @staticmethod
    def _http_status(url: str) -> int | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False


def _walk(root: Path, name: str | None = None) -> list[Path]:
    """The folders under ``root`` (or the files called ``name`` in them), while the kernel
    removes cgroups concurrently: a folder that vanished mid-walk is skipped, not an error."""
    found = []
    for folder, dirs, files in os.walk(root, onerror=lambda e: None):
        base = Path(folder)
        if name is None:
            found += [base / d for d in dirs]
        elif name in files:
            found.append(base / name)
    return found
