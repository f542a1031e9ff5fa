"""Start and stop a control plane with a real node (kubelet, containerd, scheduler,
controller-manager) for the node tier and the demo-journey tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aicoe_devcluster import ControlPlane
from aicoe_devcluster.controlplane import REPO_ROOT
from aicoe_devcluster.node import RealNode
from aicoe_devcluster.packages import PackageSources

# Clusters started and not yet stopped (their logs are attached to failing tests).
RUNNING: list[NodeCluster] = []


@dataclass
class NodeCluster:
    plane: ControlPlane
    node: RealNode

    def log_tail(self) -> str:
        return self.plane.log_tail(30) + "\n" + self.node.log_tail(40)


def start_node_cluster(
    images: tuple[str, ...] = ("notebook",), *, cluster_services: bool = False
) -> NodeCluster:
    """With ``cluster_services`` the API server listens on the node IP and kube-proxy and
    CoreDNS run (what an in-cluster client such as the Helm chart's hub needs)."""
    plane = ControlPlane(real_node=True)
    try:
        if not cluster_services:
            plane.start()
        node = RealNode(plane, cluster_services=cluster_services).start(images=images)
    except BaseException:
        plane.stop()
        raise
    cluster = NodeCluster(plane, node)
    RUNNING.append(cluster)
    return cluster


def stop_node_cluster(cluster: NodeCluster) -> None:
    if cluster in RUNNING:
        RUNNING.remove(cluster)
    try:
        cluster.node.stop()
    finally:
        cluster.plane.stop()


# -- package sources for build pods (issue 22): a PEP 503 index and a Debian repository ------

TEST_REPOS = REPO_ROOT / "tests" / "data" / "repos"
# Debian packages besides the test repositories' apt.txt: a small one for quick checks.
EXTRA_APT = ("tree",)


def data_repo(name: str) -> Path:
    """A real public repository's environment files (tests/data/repos/<name>, see PROVENANCE)."""
    path = TEST_REPOS / name
    assert path.is_dir(), f"no test repository {path}"
    return path


def start_package_sources(node_ip: str) -> PackageSources:
    """The index and Debian repository on the node IP, serving what the test repositories
    install (and micropipenv, uv, pip, setuptools, wheel, hatchling)."""
    return PackageSources(sorted(TEST_REPOS.iterdir()), node_ip, extra_apt=EXTRA_APT).start()
