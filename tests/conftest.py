"""Shared fixtures: a real etcd + kube-apiserver for the whole session, a fresh namespace per
test, the fast tier's kubelet, and ServiceAccount tokens bound to Roles.

The control plane is never optional: if it cannot start, every test that needs it errors (the
run fails); nothing is skipped.

Every test gets the markers of its tier from its directory: ``unit`` (pure, no control plane),
``integration`` (a real kube-apiserver), ``node`` (a real kubelet and containerd, on top of the
API server: node tests are ``integration`` too). So ``-m unit`` and ``-m "not integration"``
need no control plane, ``-m "integration and not node"`` needs no node, ``-m node`` is the node
tier alone.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from _pytest.mark.expression import Expression
from kubernetes_asyncio import client

from aicoe_devcluster import (
    BackgroundLoop,
    ControlPlane,
    FakeKubelet,
    api_client,
    delete_namespace,
    install_crds,
    token_for_role,
    write_kubeconfig,
)

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# The tier of each test directory: the markers its tests get.
TIERS = {"unit": ("unit",), "integration": ("integration",), "node": ("node", "integration")}
# Fixtures that start or need the control plane: a unit test may use none of them.
CONTROL_PLANE_FIXTURES = {"control_plane", "kube", "fake_kubelet", "namespace"}

_control_plane: ControlPlane | None = None


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver on loopback with TLS and RBAC, for the whole session."""
    global _control_plane
    plane = ControlPlane()
    try:
        plane.start()
    except Exception:
        plane.stop()
        raise
    print(f"\ncontrol plane ready in {plane.startup_seconds:.1f} s at {plane.server}")
    _control_plane = plane
    yield plane
    _control_plane = None
    plane.stop()


@pytest_asyncio.fixture(scope="session")
async def kube(control_plane: ControlPlane) -> AsyncIterator[client.ApiClient]:
    """An admin kubernetes_asyncio client, with the CRDs installed."""
    api = await api_client(control_plane.kubeconfig)
    await install_crds(api)
    yield api
    await api.close()


@pytest.fixture(scope="session")
def fake_kubelet(control_plane: ControlPlane, kube) -> Iterator[FakeKubelet]:
    """The fast tier's one kubelet, in its own thread: a notebook pod Running/Ready with
    podIP 127.0.0.1 on paper, a Job's pod in the runtime of its namespace (``JobRunner``
    registers one), left to the test where there is none."""
    kubelet = FakeKubelet(control_plane.kubeconfig, pod_ip="127.0.0.1")
    loop = BackgroundLoop("fake-kubelet")
    loop.start(kubelet.run)
    yield kubelet
    loop.stop()


@pytest_asyncio.fixture
async def namespace(kube: client.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace, deleted (to completion) after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": name}})
    yield name
    await delete_namespace(kube, name)


@pytest.fixture
def role_token(kube: client.ApiClient, namespace: str) -> Callable[..., Awaitable[str]]:
    """``await role_token(name, rules)``: a ServiceAccount token bound to a Role in the test
    namespace (TokenRequest API)."""

    async def make(name: str, rules: list[dict], **kwargs) -> str:
        return await token_for_role(kube, namespace, name, rules, **kwargs)

    return make


@pytest.fixture
def token_kubeconfig(control_plane: ControlPlane, tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a kubeconfig that authenticates with a bearer token."""

    def make(token: str, namespace: str = "default") -> Path:
        path = tmp_path / f"token-{uuid.uuid4().hex[:6]}.kubeconfig"
        assert control_plane.pki is not None
        return write_kubeconfig(
            path, control_plane.server, control_plane.pki.ca_cert, token=token, namespace=namespace
        )

    return make


def pytest_ignore_collect(collection_path, config):
    """With ``-m`` naming only tiers, a tier directory the expression cannot select is not even
    imported (some integration modules run built binaries such as helm at import)."""
    markexpr = config.getoption("markexpr")
    path = Path(collection_path).resolve()
    if not markexpr or path.parent != TESTS or path.name not in TIERS:
        return None
    names = set(re.findall(r"[^\s()]+", markexpr)) - {"and", "or", "not"}
    if not names <= {m for markers in TIERS.values() for m in markers}:
        return None
    markers = TIERS[path.name]
    if Expression.compile(markexpr).evaluate(lambda name, /, **kwargs: name in markers):
        return None
    return True


def pytest_collection_modifyitems(config, items):
    """Mark every test with its tier (the first directory under tests/). A test outside a tier
    directory, or a unit test that uses the control plane, is a collection error."""
    misplaced = []
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
        markers = TIERS.get(parts[0]) if len(parts) > 1 else None
        if markers is None:
            misplaced.append(f"{item.nodeid}: not under tests/{{{','.join(TIERS)}}}/")
            continue
        if "unit" in markers and CONTROL_PLANE_FIXTURES & set(item.fixturenames):
            misplaced.append(f"{item.nodeid}: a unit test using the control plane")
            continue
        for marker in markers:
            item.add_marker(getattr(pytest.mark, marker))
    if misplaced:
        raise pytest.UsageError("tests outside their tier:\n  " + "\n  ".join(misplaced))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Attach the control plane's logs to failing tests."""
    report = yield
    if report.failed and _control_plane is not None:
        report.sections.append(("control plane logs", _control_plane.log_tail()))
    return report


def wait_until(predicate: Callable[[], bool], timeout: float = 5, interval: float = 0.05) -> float:
    """Poll until ``predicate()`` is true; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start
