"""The test control plane itself: what every other integration test relies on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness.kube import wait_for
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner

from aicoe_devcluster import ControlPlane, ControlPlaneError, api_client

IMAGE_API = ("image.openshift.io", "v1")


async def test_pod_runs_and_is_ready_by_kubespawners_rule(kube, fake_kubelet, namespace):
    core = client.CoreV1Api(kube)
    await core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "probe"},
            "spec": {
                "containers": [{"name": "notebook", "image": "example/notebook@sha256:" + "a" * 64}]
            },
        },
    )

    async def running():
        pod = await core.read_namespaced_pod("probe", namespace, _preload_content=False)
        data = await pod.json()
        return data if data.get("status", {}).get("phase") == "Running" else None

    pod = await wait_for(running)
    # KubeSpawner's own readiness rule, on the dict it gets from its reflector.
    assert KubeSpawner.is_pod_running(None, pod) is True
    assert pod["status"]["podIP"] == "127.0.0.1"
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Ready"] == conditions["ContainersReady"] == "True"

    async def started_event():
        events = await core.list_namespaced_event(namespace)
        return [
            e for e in events.items if e.involved_object.name == "probe" and e.reason == "Started"
        ]

    assert await wait_for(started_event)


async def test_imagestream_status_round_trips_through_status_subresource(kube, namespace):
    custom = client.CustomObjectsApi(kube)
    stream = {
        "apiVersion": "image.openshift.io/v1",
        "kind": "ImageStream",
        "metadata": {"name": "demo", "labels": {"opendatahub.io/notebook-image": "true"}},
        "spec": {"tags": [{"name": "v1", "annotations": {"opendatahub.io/default-image": "true"}}]},
        "status": {"tags": [{"tag": "v1", "items": [{"dockerImageReference": "ignored"}]}]},
    }
    created = await custom.create_namespaced_custom_object(
        *IMAGE_API, namespace, "imagestreams", stream
    )
    # status is a subresource: a create cannot set it.
    assert "tags" not in created.get("status", {})
    ref = "registry.local/demo@sha256:" + "b" * 64
    await custom.patch_namespaced_custom_object_status(
        *IMAGE_API,
        namespace,
        "imagestreams",
        "demo",
        {
            "status": {
                "tags": [
                    {
                        "tag": "v1",
                        "items": [{"dockerImageReference": ref, "image": "sha256:" + "b" * 64}],
                    }
                ]
            }
        },
        _content_type="application/merge-patch+json",
    )
    read = await custom.get_namespaced_custom_object(*IMAGE_API, namespace, "imagestreams", "demo")
    assert read["status"]["tags"][0]["items"][0]["dockerImageReference"] == ref
    assert read["spec"]["tags"][0]["annotations"]["opendatahub.io/default-image"] == "true"


@pytest.mark.parametrize(
    "spec",
    [
        {"tags": {"name": "v1"}},  # tags must be a list
        {"tags": [{"annotations": {"a": "b"}}]},  # a tag needs a name
        {"tags": [{"name": "v1", "annotations": {"a": 1}}]},  # annotation values are strings
        {"lookupPolicy": {"local": "yes"}},  # a boolean
    ],
)
async def test_imagestream_schema_violations_are_rejected(kube, namespace, spec):
    custom = client.CustomObjectsApi(kube)
    body = {
        "apiVersion": "image.openshift.io/v1",
        "kind": "ImageStream",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    with pytest.raises(ApiException) as err:
        await custom.create_namespaced_custom_object(*IMAGE_API, namespace, "imagestreams", body)
    assert err.value.status == 422
    with pytest.raises(ApiException) as missing:
        await custom.get_namespaced_custom_object(*IMAGE_API, namespace, "imagestreams", "bad")
    assert missing.value.status == 404


async def test_read_only_service_account_cannot_create_pods(
    kube, namespace, role_token, token_kubeconfig
):
    token = await role_token(
        "reader", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    )
    api = await api_client(token_kubeconfig(token, namespace))
    try:
        core = client.CoreV1Api(api)
        listed = await core.list_namespaced_pod(namespace)
        assert listed.items == []
        with pytest.raises(ApiException) as err:
            await core.create_namespaced_pod(
                namespace,
                {
                    "metadata": {"name": "nope"},
                    "spec": {"containers": [{"name": "c", "image": "x"}]},
                },
            )
        assert err.value.status == 403
        with pytest.raises(ApiException) as other_ns:
            await core.list_namespaced_pod("default")
        assert other_ns.value.status == 403
    finally:
        await api.close()


async def test_namespace_deletion_completes(kube):
    from aicoe_devcluster import delete_namespace

    core = client.CoreV1Api(kube)
    await core.create_namespace({"metadata": {"name": "t-deleteme"}})
    await core.create_namespaced_config_map(
        "t-deleteme", {"metadata": {"name": "cm"}, "data": {"a": "b"}}
    )
    await client.CustomObjectsApi(kube).create_namespaced_custom_object(
        *IMAGE_API,
        "t-deleteme",
        "imagestreams",
        {"apiVersion": "image.openshift.io/v1", "kind": "ImageStream", "metadata": {"name": "s"}},
    )
    await delete_namespace(kube, "t-deleteme")
    with pytest.raises(ApiException) as err:
        await core.read_namespace("t-deleteme")
    assert err.value.status == 404
    # The name can be used again at once.
    await core.create_namespace({"metadata": {"name": "t-deleteme"}})
    await delete_namespace(kube, "t-deleteme")


async def test_data_survives_apiserver_restart_and_clients_reconnect(
    control_plane, kube, namespace
):
    core = client.CoreV1Api(kube)
    await core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "keep"}, "data": {"k": "v"}}
    )
    old_pid = control_plane.apiserver.pid
    await asyncio.to_thread(control_plane.restart_apiserver, 0.5)
    assert control_plane.apiserver.pid != old_pid
    # The same client object reconnects on its own.
    cm = await core.read_namespaced_config_map("keep", namespace)
    assert cm.data == {"k": "v"}
    await core.create_namespaced_config_map(namespace, {"metadata": {"name": "after"}, "data": {}})
    names = {c.metadata.name for c in (await core.list_namespaced_config_map(namespace)).items}
    assert {"keep", "after"} <= names


async def test_fake_kubelet_recovers_after_apiserver_restart(
    control_plane, kube, fake_kubelet, namespace
):
    await asyncio.to_thread(control_plane.restart_apiserver, 0.2)
    core = client.CoreV1Api(kube)
    await core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "after-restart"},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        },
    )

    async def running():
        pod = await core.read_namespaced_pod("after-restart", namespace)
        return pod.status.phase == "Running"

    await wait_for(running, timeout=15)


def test_missing_binaries_raise_not_skip(tmp_path, monkeypatch):
    monkeypatch.setenv("AICOE_TOOLS_BIN", str(tmp_path))
    with pytest.raises(ControlPlaneError, match=r"tools/build\.sh"):
        ControlPlane(tmp_path / "work")


def test_suite_fails_when_control_plane_cannot_start(tmp_path):
    """Run pytest on a test that needs the control plane with no binaries: the run must fail
    (exit code 1) with an error, never pass or skip."""
    # a tests/ folder of its own, with the suite's conftest and the test in its tier folder
    (tmp_path / "integration").mkdir()
    test_file = tmp_path / "integration" / "test_needs_kube.py"
    test_file.write_text(
        textwrap.dedent(
            """
            async def test_needs(kube):
                assert kube is not None
            """
        )
    )
    conftest = Path(__file__).resolve().parents[1] / "conftest.py"
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    env = dict(os.environ, AICOE_TOOLS_BIN=str(tmp_path / "no-binaries"))
    env.pop("PYTEST_ADDOPTS", None)  # the outer run's options (e.g. -q) would change the output
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "-o",
            "asyncio_default_fixture_loop_scope=session",
            "-o",
            "asyncio_default_test_loop_scope=session",
            str(test_file),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout, result.stdout
    assert "skipped" not in result.stdout
    assert "tools/build.sh" in result.stdout
