"""The real node itself: it runs a Job to completion in a container, with a ServiceAccount
token from the real ServiceAccount controller, and stopping it leaves nothing behind."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest
from harness.node import start_node_cluster, stop_node_cluster
from kubernetes_asyncio import client

from aicoe_devcluster import api_client
from aicoe_devcluster.node import mountpoints

pytestmark = pytest.mark.node


def interfaces() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


async def wait_job(batch: client.BatchV1Api, namespace: str, name: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await batch.read_namespaced_job(name, namespace)
        if job.status.succeeded or job.status.failed:
            return job
        await asyncio.sleep(0.5)
    raise TimeoutError(f"job {name} did not finish in {timeout} s")


async def test_a_job_runs_in_a_container_and_stopping_leaves_nothing_behind():
    before = (interfaces(), set(mountpoints()))
    cluster = await asyncio.to_thread(start_node_cluster, ())
    node = cluster.node
    try:
        api = await api_client(cluster.plane.kubeconfig)
        try:
            core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
            # The ServiceAccount controller (controller-manager) creates the default account.
            deadline = time.monotonic() + 60
            while not (await core.list_namespaced_service_account("default")).items:
                assert time.monotonic() < deadline, "no default ServiceAccount"
                await asyncio.sleep(0.5)
            job = {
                "metadata": {"name": "hello"},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "hello",
                                    "image": node.images["pause"],
                                    "command": [
                                        "/bin/busybox",
                                        "sh",
                                        "-c",
                                        "echo hello from $(/bin/busybox hostname);"
                                        " /bin/busybox ls /var/run/secrets/kubernetes.io/"
                                        "serviceaccount",
                                    ],
                                }
                            ],
                        }
                    },
                },
            }
            await batch.create_namespaced_job("default", job)
            done = await wait_job(batch, "default", "hello")
            assert done.status.succeeded == 1, done.status
            pods = await core.list_namespaced_pod("default", label_selector="job-name=hello")
            pod = pods.items[0]
            assert pod.spec.node_name == "aicoe-node"
            assert pod.status.pod_ip.startswith(f"10.244.{node.index}.")
            logs = await core.read_namespaced_pod_log(pod.metadata.name, "default")
            assert f"hello from {pod.metadata.name}" in logs
            assert "token" in logs  # ServiceAccount admission + a token from the real controller
        finally:
            await api.close()
    finally:
        await asyncio.to_thread(stop_node_cluster, cluster)
    assert node.leftovers() == []
    after = (interfaces(), set(mountpoints()))
    assert after[0] - before[0] == set(), f"interfaces left: {after[0] - before[0]}"
    assert after[1] - before[1] == set(), f"mounts left: {after[1] - before[1]}"
    assert node.iptables_rules() == []


async def test_with_cluster_services_a_pod_reaches_the_api_server_by_its_service_name():
    """CoreDNS resolves ``kubernetes.default.svc.cluster.local`` to the Service's ClusterIP,
    kube-proxy routes it to the API server on the node IP; stopping removes kube-proxy's rules."""
    before = (interfaces(), set(mountpoints()))
    cluster = await asyncio.to_thread(start_node_cluster, (), cluster_services=True)
    node = cluster.node
    try:
        assert cluster.plane.server.startswith(f"https://{node.node_ip}:")
        api = await api_client(cluster.plane.kubeconfig)
        try:
            core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
            service = await core.read_namespaced_service("kubernetes", "default")
            name = "kubernetes.default.svc.cluster.local"
            script = (
                f"/bin/busybox nslookup {name};"
                f" printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc {name} 443"
            )
            job = {
                "metadata": {"name": "reach-api"},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "reach",
                                    "image": node.images["pause"],
                                    "command": ["/bin/busybox", "sh", "-c", script],
                                }
                            ],
                        }
                    },
                },
            }
            await batch.create_namespaced_job("default", job)
            done = await wait_job(batch, "default", "reach-api")
            pods = await core.list_namespaced_pod("default", label_selector="job-name=reach-api")
            logs = await core.read_namespaced_pod_log(pods.items[0].metadata.name, "default")
            assert done.status.succeeded == 1, logs
            assert service.spec.cluster_ip in logs, logs  # the DNS answer
            # kube-apiserver's answer to plain HTTP on its TLS port: the connection got there
            assert "Client sent an HTTP request to an HTTPS server" in logs, logs
        finally:
            await api.close()
    finally:
        await asyncio.to_thread(stop_node_cluster, cluster)
    assert node.leftovers() == []
    after = (interfaces(), set(mountpoints()))
    assert after[0] - before[0] == set(), f"interfaces left: {after[0] - before[0]}"
    assert after[1] - before[1] == set(), f"mounts left: {after[1] - before[1]}"
    assert node.iptables_rules() == []
