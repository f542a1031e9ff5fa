"""The real-node tier: a control plane of its own with kubelet, containerd, scheduler and
controller-manager (``aicoe_devcluster.node``), so pods run in real containers.

Like the control plane, the node is never optional: if it cannot start, these tests error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from harness.node import (
    IMPORT_INTERVAL,
    IMPORT_POLL,
    IMPORT_RETRY,
    RUNNING,
    NodeCluster,
    NodeDemo,
    start_node_cluster,
    start_package_sources,
    stop_node_cluster,
)
from kubernetes_asyncio import client

from aicoe_devcluster import api_client, install_crds
from aicoe_devcluster.controlplane import free_port
from aicoe_devcluster.packages import PackageSources


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    """A control plane and a real node for the whole session, with the notebook image."""
    cluster = start_node_cluster()
    node = cluster.node
    print(
        f"\nreal node ready in {node.timings['start']:.1f} s "
        f"(images {node.timings['images']:.1f} s, node Ready {node.timings['node_ready']:.1f} s)"
    )
    yield cluster
    stop_node_cluster(cluster)


@pytest_asyncio.fixture(scope="session")
async def node_kube(node_cluster: NodeCluster) -> AsyncIterator[client.ApiClient]:
    """An admin client for the node cluster, with the CRDs installed."""
    api = await api_client(node_cluster.plane.kubeconfig)
    await install_crds(api)
    yield api
    await api.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Attach the node's logs (containerd, kubelet, scheduler, …) to failing tests."""
    report = yield
    if report.failed:
        for cluster in RUNNING:
            report.sections.append(("real node logs", cluster.log_tail()))
    return report


@pytest.fixture(scope="session")
def package_index(node_cluster: NodeCluster) -> Iterator[PackageSources]:
    """Python and Debian packages for build pods, served on the node IP: ``.pip_url`` (PEP 503
    index, for the builder's ``package_index_url``), ``.trusted_host``, ``.apt_line`` (for its
    ``apt_sources``). Serves every package the repositories in tests/data/repos install."""
    sources = start_package_sources(node_cluster.node.node_ip)
    yield sources
    sources.stop()


@pytest_asyncio.fixture(scope="session")
async def demo(node_cluster, package_index, tmp_path_factory) -> AsyncIterator[NodeDemo]:
    """JupyterHub from the example config with the builder as a hub-managed service, on the
    node (``make demo``), for every test of the tier that needs the hub."""
    demo = NodeDemo(
        node_cluster.plane,
        node_cluster.node,
        tmp_path_factory.mktemp("demo"),
        free_port(),
        homes=tmp_path_factory.mktemp("homes"),
        extra_env={
            "AICOE_BUILDER_PACKAGE_INDEX_URL": package_index.pip_url,
            "AICOE_BUILDER_PACKAGE_INDEX_TRUSTED_HOST": package_index.trusted_host,
            "AICOE_BUILDER_APT_SOURCES": package_index.apt_line,
            "AICOE_BUILDER_IMPORT_POLL": str(IMPORT_POLL),
            "AICOE_BUILDER_IMPORT_INTERVAL": str(IMPORT_INTERVAL),
            "AICOE_BUILDER_IMPORT_RETRY": str(IMPORT_RETRY),
        },
    )
    await asyncio.to_thread(demo.start)
    yield demo
    await asyncio.to_thread(demo.stop)
