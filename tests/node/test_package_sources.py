"""What a build pod on the real node can reach: the test cluster's own package sources (a PEP
503 index and a Debian repository on the node IP) and nothing else — not even the machine's
DNS resolver. So a build whose base image lives on an outside registry fails at once, with
the image and the registry's answer in the record's message."""

from __future__ import annotations

import asyncio
import re
import shlex
import tempfile
import time
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from aicoe_devcluster.gitserver import GitServer, git
from aicoe_devcluster.packages import missing_locked_files
from aicoe_spawner.builder.backends.kubernetes import KubernetesBackend
from aicoe_spawner.builder.backends.kubernetes_job import JobConfig
from aicoe_spawner.builder.requests import BuildSpec

pytestmark = pytest.mark.node

CHECK = r"""
set -eu
echo "== resolv.conf"; cat /etc/resolv.conf
python3 - <<'EOF'
import socket, time
t = time.monotonic()
try:
    socket.getaddrinfo("quay.io", 443)
    print("quay.io RESOLVED")
except socket.gaierror as e:
    print(f"quay.io not resolved in {time.monotonic() - t:.2f} s: {e}")
print("kubernetes service", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
EOF
python3 -m venv /tmp/venv
PIP_INDEX_URL=$PIP_URL PIP_TRUSTED_HOST=$HOST /tmp/venv/bin/pip install -q xmltodict==0.13.0
/tmp/venv/bin/python -c 'import xmltodict; print("xmltodict", xmltodict.__version__)'
printf '%s\n' "$APT_LINE" > /tmp/aicoe.list
APT="-o Dir::Etc::sourcelist=/tmp/aicoe.list -o Dir::Etc::sourceparts=/dev/null"
apt-get $APT -o APT::Update::Error-Mode=any -q update >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get $APT install -y -q --no-install-recommends tree >/dev/null
tree --version
"""


async def run_pod(kube: client.ApiClient, image: str, script: str, env: dict, timeout=180) -> str:
    core = client.CoreV1Api(kube)
    name = f"pkg-check-{int(time.time() * 1000) % 10**8}"
    pod = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "check",
                    "image": image,
                    "command": ["/bin/sh", "-c", script],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "securityContext": {"runAsUser": 0, "runAsGroup": 0},
                }
            ],
        },
    }
    await core.create_namespaced_pod("default", pod)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            status = (await core.read_namespaced_pod(name, "default")).status
            if status.phase in ("Succeeded", "Failed"):
                logs = await core.read_namespaced_pod_log(name, "default")
                assert status.phase == "Succeeded", logs
                return logs
            await asyncio.sleep(1)
        raise TimeoutError(f"pod {name} still running after {timeout} s")
    finally:
        await core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


@pytest.mark.timeout(600)
async def test_a_pod_installs_from_the_cluster_sources_and_resolves_nothing_outside(
    node_cluster, node_kube, package_index
):
    node = node_cluster.node
    # every file the test repositories' locks pin is served, with the locked hash
    for repo in package_index.repos:
        assert missing_locked_files(repo, package_index.packages_dir) == [], repo.name

    env = {
        "PIP_URL": package_index.pip_url,
        "HOST": package_index.trusted_host,
        "APT_LINE": package_index.apt_line,
    }
    logs = await run_pod(node_kube, node.images["notebook"], CHECK, env)
    resolv = logs.split("== resolv.conf\n", 1)[1]
    assert re.findall(r"^nameserver (\S+)", resolv, re.M) == [node.node_ip], logs
    refused = re.search(r"quay.io not resolved in ([\d.]+) s", logs)
    assert refused and float(refused[1]) < 2, logs  # refused at once, no resolver timeout
    service = await client.CoreV1Api(node_kube).read_namespaced_service("kubernetes", "default")
    assert f"kubernetes service {service.spec.cluster_ip}" in logs  # the cluster domain works
    assert "xmltodict 0.13.0" in logs  # a pin of tests/data/repos/requirements-only
    assert re.search(r"^tree v\d", logs, re.M), logs


@pytest.mark.timeout(600)
async def test_a_base_image_on_an_outside_registry_fails_the_build_at_once(node_cluster, node_kube):
    node = node_cluster.node
    image = "quay.io/jupyter/minimal-notebook:latest"
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp) / "files"
        files.mkdir()
        (files / "Dockerfile").write_text(f"FROM {image}\nRUN true\n")
        server = GitServer(Path(tmp) / "git", address=node.node_ip).start()
        try:
            url = server.add_repo("quay-base", files)
            commit = git("rev-parse", "v1^{commit}", cwd=server.root / "quay-base.git")
            spec = BuildSpec(
                id=f"quay{commit[:8]}",
                repo=url,
                ref="v1",
                commit=commit,
                ref_kind="tag",
                namespace="default",
                stream="quay-base",
                tag="v1",
                strategy="dockerfile",
                dockerfile="Dockerfile",
                context_dir="",
                base_image="",
                output_image=f"{node.registry}/default/quay-base:v1",
                display_name="quay-base",
                description="",
                requester="tester",
            )
            config = JobConfig(
                builder_image=await asyncio.to_thread(node.ensure_image, "builder"),
                tls_verify=False,
                storage_size="2Gi",
                resources={"requests": {"cpu": "100m", "memory": "128Mi"}},
            )
            backend = KubernetesBackend(node_kube, config)
            started = time.monotonic()
            await backend.submit(spec)
            while True:
                state = await backend.state(spec)
                if state.phase in ("ready", "failed"):
                    break
                assert time.monotonic() - started < 120, state
                await asyncio.sleep(0.5)
            elapsed = time.monotonic() - started
        finally:
            server.stop()
    print(f"\nbuild failed in {elapsed:.1f} s: {state.message!r}")
    assert state.phase == "failed"
    assert f"base image {image} cannot be pulled: " in state.message, state.message
    assert "quay.io" in state.message.split("cannot be pulled: ", 1)[1]  # the registry's answer
    assert elapsed < 60, (elapsed, shlex.quote(state.message))
    await backend.cleanup(spec)
