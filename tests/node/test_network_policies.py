"""The chart's NetworkPolicies, enforced on the real node (issue #21).

The node runs the NetworkPolicy agent kube-network-policies (``RealNode.start_network_policies``;
built by tools/build.sh with tools/kube-network-policies/aicoe.patch). The chart's
NetworkPolicies, rendered by ``helm template`` with the node's values (DNS, the git server and
the registry on the node IP, as tests/node/test_chart.py installs it), are applied as they are;
small busybox pods carry the labels that those policies select (the hub, the proxy, the
builder, a user's server, a build pod) and serve their name over HTTP on the chart's ports.
Then probe pods with the same labels try every connection from inside the pod (``nc -w 3``,
``nslookup``) and the test compares what got through with what docs/deploy.md promises:

- a user's pod reaches DNS, the hub's API and public addresses, but not the metadata address,
  another user's pod, the proxy's API, the builder or the node's other services;
- a build pod reaches DNS, the git server and the registry only;
- the hub reaches DNS, the API server, the proxy's API, users' pods, the builder and public
  addresses, but not the metadata address; the proxy reaches the hub and users' pods;
- a pod that no policy selects reaches every stand-in (so a denial is the policy's, not a
  missing server), but not the hub's or a user's pod (their ingress rules).

Destinations off the pods: the metadata address 169.254.169.254 and a "public" address
203.0.113.10 (TEST-NET-3) are a stand-in host in a network namespace of its own, routed for
traffic from the node's bridge only (policy routing: the machine's own traffic still goes
where it went); "the API server" is a stand-in on the node IP on port 6443. Denied means the
connection timed out (the agent drops the first packet); allowed means the target's answer
came back, in the same run.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import pytest_asyncio
from harness.helm_chart import by_kind, render
from harness.node import NodeCluster
from kubernetes_asyncio import client

from aicoe_devcluster.cluster import delete_namespace
from aicoe_devcluster.gitserver import GitServer

pytestmark = [pytest.mark.node, pytest.mark.timeout(300)]

RELEASE = "aicoe-spawner"
NAMESPACE = "aicoe-netpol"
BUILDS = f"{NAMESPACE}-builds"  # the chart's default build namespace
FREE = "aicoe-netpol-free"  # no NetworkPolicy: its pods are not judged
METADATA = "169.254.169.254"
PUBLIC = "203.0.113.10"
API_PORT = 6443  # the chart's apiServerPorts: [443, 6443]
#: server pods: (role, policy name, namespace, ports)
SERVERS = {
    "hub": (f"{RELEASE}-hub", NAMESPACE, (8081,)),
    "proxy": (f"{RELEASE}-proxy", NAMESPACE, (8000, 8001)),
    "builder": (f"{RELEASE}-builder", NAMESPACE, (8080,)),
    "alice": (f"{RELEASE}-singleuser", NAMESPACE, (8888,)),
}


class StandIns:
    """The off-pod destinations: a network namespace holding 169.254.169.254 and
    203.0.113.10 (busybox httpd on port 80), reached from the node's bridge through a route
    table of its own; and an HTTP server on the node IP on :data:`API_PORT`."""

    def __init__(self, node) -> None:
        self.node = node
        tag = uuid.uuid4().hex[:6]
        self.netns = f"aicoe-np-{tag}"
        self.host_if, self.ns_if = f"np{tag}h", f"np{tag}n"
        self.table = str(4000 + node.index)
        self.rule_priority = str(1000 + node.index)
        self.httpd: subprocess.Popen | None = None
        self.api: ThreadingHTTPServer | None = None
        self.bridge_forwarding: str | None = None

    def start(self, folder) -> StandIns:
        run = self._run
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.netns)
        run("ip", "addr", "add", "192.0.2.1/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        ns = ("ip", "netns", "exec", self.netns)
        run(*ns, "ip", "addr", "add", "192.0.2.2/30", "dev", self.ns_if)
        for address in (METADATA, PUBLIC):
            run(*ns, "ip", "addr", "add", f"{address}/32", "dev", self.ns_if)
        run(*ns, "ip", "link", "set", self.ns_if, "up")
        run(*ns, "ip", "link", "set", "lo", "up")
        run(*ns, "ip", "route", "add", "default", "via", "192.0.2.1")
        for address in (METADATA, PUBLIC):
            run("ip", "route", "add", f"{address}/32", "via", "192.0.2.2", "dev", self.host_if,
                "table", self.table)  # fmt: skip
        run("ip", "rule", "add", "iif", self.node.bridge, "lookup", self.table,
            "priority", self.rule_priority)  # fmt: skip
        # forwarding on the two interfaces only (the CNI plugin also turns on ip_forward)
        self.bridge_forwarding = self._forwarding(self.node.bridge)
        for interface in (self.node.bridge, self.host_if):
            self._forwarding(interface, "1")
        www = folder / "www"
        www.mkdir()
        (www / "index.html").write_text("stand-in\n")
        self.httpd = subprocess.Popen(
            [*ns, "busybox", "httpd", "-f", "-p", "80", "-h", str(www)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        class Api(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"apiserver\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.api = ThreadingHTTPServer((self.node.node_ip, API_PORT), Api)
        threading.Thread(target=self.api.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.api is not None:
            self.api.shutdown()
            self.api.server_close()
        if self.httpd is not None:
            self.httpd.kill()
            self.httpd.wait(10)
        if self.bridge_forwarding is not None:
            self._forwarding(self.node.bridge, self.bridge_forwarding)
        subprocess.run(["ip", "rule", "del", "priority", self.rule_priority], capture_output=True)
        subprocess.run(["ip", "route", "flush", "table", self.table], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)

    @staticmethod
    def _forwarding(interface: str, value: str | None = None) -> str:
        path = Path(f"/proc/sys/net/ipv4/conf/{interface}/forwarding")
        if value is not None:
            path.write_text(value)
        return path.read_text().strip()

    @staticmethod
    def _run(*args: str) -> None:
        proc = subprocess.run(args, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"


def node_policies(node, git: GitServer) -> list[dict]:
    """The chart's NetworkPolicies for this node (tests/node/test_chart.py's network values:
    DNS, the git server and the registry on the node IP)."""
    here = [f"{node.node_ip}/32"]
    docs = render(
        "kubernetes",
        namespace=NAMESPACE,
        release=RELEASE,
        values={
            "networkPolicy.dnsCIDRs": here,
            "builder.networkPolicy": {
                "dnsCIDRs": here,
                "gitCIDRs": here,
                "gitExcept": [],
                "gitPorts": [git.port],
                "registryCIDRs": here,
                "registryPorts": [int(node.registry.rsplit(":", 1)[1])],
            },
        },
    )
    return by_kind(docs, "NetworkPolicy")


def pod(name: str, namespace: str, labels: dict, image: str, script: str, restart: str) -> dict:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 0,
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "containers": [
                {"name": "main", "image": image, "command": ["/bin/busybox", "sh", "-c", script]}
            ],
        },
    }


def server_script(name: str, ports: tuple[int, ...]) -> str:
    starts = " ".join(f"$b httpd -p {p} -h /tmp/www;" for p in ports)
    return (
        f"b=/bin/busybox; $b mkdir -p /tmp/www; echo {name} > /tmp/www/index.html; "
        f"{starts} exec $b sleep 100000"
    )


def probe_script(probes: dict[str, str], canary: str | None) -> str:
    """Run every probe at once and print ``<name> ok <last line of the answer>`` (HTTP 200) or
    ``<name> fail <error>``. A probe is an ``http://`` URL (busybox ``nc -w 3``: the static
    busybox's wget crashes in a container without NSS) or ``dns:<name>@<server>``. First,
    while ``canary`` (a URL the policies deny) still answers, wait: the agent learns the new
    pod's IP from the API server, which can be after the container starts; it stops after 30
    tries, and then the canary's own probe fails the test."""
    lines = [
        "b=/bin/busybox; $b mkdir -p /tmp/r",
        'get() { printf \'GET %s HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n\' "$3" "$1" '
        '| $b nc -w "$4" "$1" "$2" 2>&1; }',
        'probe() { out=$(get "$2" "$3" "$4" 3); '
        'if echo "$out" | $b head -1 | $b grep -q " 200 "; then '
        'echo "$1 ok $(echo "$out" | $b tail -1)"; else echo "$1 fail $(echo $out)"; fi; }',
        'dns() { if out=$($b timeout 8 $b nslookup "$2" "$3" 2>&1); then echo "$1 ok"; '
        'else echo "$1 fail $(echo $out)"; fi; }',
    ]
    if canary:
        host, port, path = split_url(canary)
        lines.append(
            f"n=0; while get {host} {port} '{path}' 2 | $b grep -q ' 200 '; do "
            'n=$((n+1)); [ $n -ge 30 ] && break; $b sleep 0.5; done; echo "canary $n"'
        )
    for name, target in probes.items():
        if target.startswith("dns:"):
            host, server = target[4:].split("@")
            lines.append(f"dns {name} {host} {server} > /tmp/r/{name} &")
        else:
            host, port, path = split_url(target)
            lines.append(f"probe {name} {host} {port} '{path}' > /tmp/r/{name} &")
    lines.append("wait; $b cat /tmp/r/*")
    return "\n".join(lines)


def split_url(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, path


async def wait_pods(core: client.CoreV1Api, pods: list[tuple[str, str]], phases, timeout=90):
    deadline = time.monotonic() + timeout
    found = {}
    while True:
        for name, namespace in pods:
            found[name] = await core.read_namespaced_pod(name, namespace)
        if all(p.status.phase in phases for p in found.values()):
            return found
        failed = {n: p.status.phase for n, p in found.items() if p.status.phase == "Failed"}
        assert not failed, failed
        if time.monotonic() > deadline:
            raise AssertionError({n: p.status.phase for n, p in found.items()})
        await asyncio.sleep(0.3)


@pytest.fixture(scope="module")
def stand_ins(node_cluster: NodeCluster, tmp_path_factory) -> Iterator[tuple[StandIns, GitServer]]:
    node = node_cluster.node
    folder = tmp_path_factory.mktemp("netpol")
    git = GitServer(folder / "git", address=node.node_ip).start()
    (folder / "repo").mkdir()
    (folder / "repo" / "README").write_text("a repository\n")
    git.add_repo("repo", folder / "repo")
    hosts = StandIns(node)
    try:
        hosts.start(folder)
        node.start_network_policies()
        yield hosts, git
    finally:
        node.stop_network_policies()
        hosts.stop()
        git.stop()


@pytest_asyncio.fixture(scope="module")
async def policy_pods(node_cluster, node_kube, stand_ins):
    """The chart's policies applied, the server pods running and judged by the agent: the
    server pods' IPs by role."""
    node = node_cluster.node
    core = client.CoreV1Api(node_kube)
    net = client.NetworkingV1Api(node_kube)
    _, git = stand_ins
    policies = {p["metadata"]["name"]: p for p in node_policies(node, git)}
    try:
        for namespace in (NAMESPACE, BUILDS, FREE):
            await core.create_namespace({"metadata": {"name": namespace}})
        for policy in policies.values():
            namespace = policy["metadata"].get("namespace", NAMESPACE)
            await net.create_namespaced_network_policy(namespace, policy)
        image = node.images["pause"]
        for role, (policy, namespace, ports) in SERVERS.items():
            labels = policies[policy]["spec"]["podSelector"]["matchLabels"]
            body = pod(role, namespace, labels, image, server_script(role, ports), "Always")
            await core.create_namespaced_pod(namespace, body)
        running = await wait_pods(
            core, [(r, s[1]) for r, s in SERVERS.items()], ("Running",), timeout=60
        )
        ips = {role: p.status.pod_ip for role, p in running.items()}
        deadline = time.monotonic() + 30
        while not set(ips.values()) <= node.policy_pod_ips():
            assert time.monotonic() < deadline, (ips, node.policy_pod_ips())
            await asyncio.sleep(0.2)
        yield policies, ips
    finally:
        for namespace in (FREE, BUILDS, NAMESPACE):
            await delete_namespace(node_kube, namespace, timeout=60)


async def test_the_chart_policies_are_enforced_from_inside_pods(
    node_cluster, node_kube, stand_ins, policy_pods
):
    node = node_cluster.node
    _, git = stand_ins
    policies, ips = policy_pods
    core = client.CoreV1Api(node_kube)
    ip = node.node_ip
    url = {
        "dns": f"dns:kubernetes.default.svc.cluster.local@{ip}",
        "metadata": f"http://{METADATA}/",
        "public": f"http://{PUBLIC}/",
        "apiserver": f"http://{ip}:{API_PORT}/",
        "git": f"{git.base_url}/repo.git/info/refs?service=git-upload-pack",
        "registry": f"http://{node.registry}/v2/",
        "hub": f"http://{ips['hub']}:8081/",
        "proxy-public": f"http://{ips['proxy']}:8000/",
        "proxy-api": f"http://{ips['proxy']}:8001/",
        "builder": f"http://{ips['builder']}:8080/",
        "alice": f"http://{ips['alice']}:8888/",
    }
    # what docs/deploy.md promises: True = reaches, False = must not
    expected = {
        "hub": {
            "dns": True, "apiserver": True, "proxy-api": True, "alice": True, "builder": True,
            "public": True, "metadata": False, "registry": False,
        },
        "proxy": {
            "dns": True, "hub": True, "alice": True, "builder": True, "metadata": False,
            "public": False, "apiserver": False,
        },
        "bob": {  # another user
            "dns": True, "hub": True, "public": True, "metadata": False, "alice": False,
            "proxy-api": False, "proxy-public": False, "builder": False, "apiserver": False,
            "registry": False, "git": False,
        },
        "build": {
            "dns": True, "git": True, "registry": True, "hub": False, "alice": False,
            "proxy-api": False, "metadata": False, "public": False, "apiserver": False,
        },
        "free": {  # no policy selects it: the stand-ins answer; the hub's ingress refuses it
            "metadata": True, "public": True, "apiserver": True, "git": True, "registry": True,
            "proxy-public": True, "hub": False, "alice": False,
        },
    }  # fmt: skip
    probers = {
        "hub": (policies[f"{RELEASE}-hub"], NAMESPACE),
        "proxy": (policies[f"{RELEASE}-proxy"], NAMESPACE),
        "bob": (policies[f"{RELEASE}-singleuser"], NAMESPACE),
        "build": (policies[f"{RELEASE}-builder-builds"], BUILDS),
        "free": (None, FREE),
    }
    started = time.monotonic()
    for role, (policy, namespace) in probers.items():
        labels = policy["spec"]["podSelector"]["matchLabels"] if policy else {"probe": role}
        script = probe_script(
            {name: url[name] for name in expected[role]},
            canary=url["metadata"] if policy else None,
        )
        body = pod(f"probe-{role}", namespace, labels, node.images["pause"], script, "Never")
        await core.create_namespaced_pod(namespace, body)
    await wait_pods(
        core,
        [(f"probe-{role}", ns) for role, (_, ns) in probers.items()],
        ("Succeeded",),
        timeout=120,
    )
    print(f"\nprobes ran in {time.monotonic() - started:.1f} s")
    wrong = {}
    for role, (_, namespace) in probers.items():
        log = await core.read_namespaced_pod_log(f"probe-{role}", namespace)
        print(f"---- probe-{role}\n{log.strip()}")
        seen = {}
        for line in log.splitlines():
            name, _, rest = line.partition(" ")
            status, _, answer = rest.partition(" ")
            seen[name] = (status, answer)
        for name, allowed in expected[role].items():
            status, answer = seen.get(name, ("missing", ""))
            if allowed:
                want = name if name in SERVERS else None  # a pod answers with its name
                ok = status == "ok" and (want is None or answer.strip() == want)
            else:  # dropped by the agent: the connection times out
                ok = status == "fail" and "timed out" in answer
            if not ok:
                verdict = "reach" if allowed else "time out"
                wrong[f"{role} -> {name}"] = f"should {verdict}: {status} {answer}"
    assert wrong == {}, wrong
