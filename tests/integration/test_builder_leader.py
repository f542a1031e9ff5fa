"""The builder as a watch-driven controller with one leader, against the real API server: a
Job's completion reaches its record through the watches (no polling: nothing runs while
nothing changes), exactly one of two replicas holds the Lease and the other takes over when it
dies, finishing the running builds once each without a second Job, and the watches recover
from an API server restart. The test plays the Job controller and kubelet."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
import pytest_asyncio
from harness.git import GitServer
from harness.jobs import complete_job, digest_of, start_pod
from harness.kube import wait_for
from kubernetes_asyncio import client
from test_builder_state import Logs, job_names, ledger, record, settings

from aicoe_spawner.builder.__main__ import build_service
from aicoe_spawner.builder.controller import LEASE_NAME
from aicoe_spawner.builder.vocabulary import MANAGED_BY, MANAGED_BY_LABEL

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def git(tmp_path_factory):
    server = GitServer(tmp_path_factory.mktemp("leader-git"))
    yield server
    server.stop()


class Phases:
    """An observer: every (build, phase) a replica's write made, across replicas."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def build_changed(self, build, previous: str) -> None:
        self.seen.append((build.id, build.phase))


@pytest_asyncio.fixture
async def replicas(kube, namespace):
    """``await replicas(n, **settings)``: n started services against the namespace (a short
    Lease, no resync that could hide a missed event); all stopped after the test."""
    started = []
    logs, phases = Logs(), Phases()

    async def make(n: int, retry: float = 1.0, **kw):
        made = []
        for _ in range(n):
            svc = build_service(kube, settings(namespace, **kw), log_reader=logs.read)
            svc.limits.lease_duration_seconds = 3.0
            svc.limits.lease_renew_seconds = 0.5
            svc.limits.resync_interval_seconds = 3600
            svc.observers.append(phases)
            svc.start(retry)
            made.append(svc)
        started.extend(made)
        return made

    make.logs, make.phases = logs, phases
    yield make
    for svc in started:
        await svc.stop()


def leaders(services) -> list:
    return [s for s in services if s.controller and s.controller.elector.is_leader]


async def one_leader(services, timeout: float = 15):
    async def exactly_one():
        return len(leaders(services)) == 1

    await wait_for(exactly_one, timeout=timeout)
    return leaders(services)[0]


async def running(kube, namespace: str, build_id: str) -> None:
    """The Job's pod, labelled as the Job controller labels it (the leader watches those)."""
    await start_pod(kube, namespace, build_id)
    await client.CoreV1Api(kube).patch_namespaced_pod(
        f"imgbuild-{build_id}-run",
        namespace,
        {"metadata": {"labels": {MANAGED_BY_LABEL: MANAGED_BY}}},
    )


async def phase_of(kube, namespace, build_id) -> str:
    return ((await record(kube, namespace, build_id)).get("status") or {}).get("phase", "")


async def released(service) -> bool:
    """Every admission in the quota ledger released (the last step after a build ends)."""
    return await ledger(service) == set()


async def crash(service) -> None:
    """What a killed replica does: nothing more. Its Lease is not released."""
    controller = service.controller
    controller.elector._task.cancel()
    await asyncio.gather(controller.elector._task, return_exceptions=True)
    controller.elector._task = None
    controller.elector.leading.clear()
    await controller._follow()
    await controller.records.stop()
    service.controller = None


async def test_a_job_completion_reaches_the_record_without_polling(kube, namespace, git, replicas):
    (svc,) = await replicas(1, retry=30)  # a failed reconcile is not tried again soon
    await one_leader([svc])
    git.create_repo("ld-fast", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    status, build = await svc.submit({"repo": git.url("ld-fast"), "ref": "v1"}, "alice")
    assert status == 202
    await running(kube, namespace, build.id)

    async def building():
        return await phase_of(kube, namespace, build.id) == "building"

    await wait_for(building, timeout=5)  # the pod's event, not a timer
    calls = []
    state = svc.backend.state

    async def counted(spec, **kw):
        calls.append(spec.id)
        return await state(spec, **kw)

    svc.backend.state = counted
    await asyncio.sleep(2)
    assert calls == []  # nothing changes, nothing is read

    written = time.monotonic()
    await complete_job(kube, namespace, build.id, digest_of("ld-fast"))

    async def ready():
        return await phase_of(kube, namespace, build.id) == "ready"

    await wait_for(ready, timeout=5, interval=0.02)
    took = time.monotonic() - written
    print(f"Job complete -> record ready: {took:.3f} s")
    assert took < 1.5, took
    assert calls  # the completion was read, once it happened


async def test_one_of_two_replicas_leads_and_the_other_takes_over_when_it_dies(
    kube, namespace, git, replicas
):
    services = await replicas(2, max_per_user=10, max_total=10)
    first = await one_leader(services)
    lease = await client.CoordinationV1Api(kube).read_namespaced_lease(LEASE_NAME, namespace)
    assert lease.spec.holder_identity == first.controller.elector.identity
    builds = []
    for i in range(6):
        git.create_repo(f"ld-take{i}", {"Dockerfile": "FROM scratch\n"}, tag="v1")
        status, b = await services[i % 2].submit(
            {"repo": git.url(f"ld-take{i}"), "ref": "v1"}, "alice"
        )
        assert status == 202
        builds.append(b)
    for b in builds[:4]:
        await running(kube, namespace, b.id)

    async def four_building():
        phases = [await phase_of(kube, namespace, b.id) for b in builds]
        return phases.count("building") == 4

    await wait_for(four_building, timeout=10)

    (other,) = [s for s in services if s is not first]
    killed = time.monotonic()
    await crash(first)
    new = await one_leader([other], timeout=10)
    took = time.monotonic() - killed
    print(f"takeover after the leader died: {took:.2f} s")
    assert new is other and took <= 3.0 + 0.5 + 2.0, took  # the Lease's duration, and a poll
    for b in builds[4:]:
        await running(kube, namespace, b.id)
    for b in builds:
        await complete_job(kube, namespace, b.id, digest_of(b.id))

    async def all_ready():
        return [await phase_of(kube, namespace, b.id) for b in builds] == ["ready"] * 6

    await wait_for(all_ready, timeout=15)
    assert await job_names(kube, namespace) == sorted(f"imgbuild-{b.id}" for b in builds)
    await wait_for(lambda: released(other), timeout=5)  # the quota is exact
    await other.observed()
    ready = Counter(i for i, phase in replicas.phases.seen if phase == "ready")
    assert ready == {b.id: 1 for b in builds}  # each build ended once, by one replica
    for b in builds:
        obj = await record(kube, namespace, b.id)
        assert obj["status"]["logConfigMap"]


async def test_a_clean_stop_hands_the_lease_over_at_once(kube, namespace, replicas):
    services = await replicas(2)
    first = await one_leader(services)
    stopped = time.monotonic()
    await first.stop()
    (other,) = [s for s in services if s is not first]
    await one_leader([other], timeout=5)
    assert time.monotonic() - stopped < 2.0  # released, not waited out


async def test_the_watches_recover_from_an_api_server_restart(
    control_plane, kube, namespace, git, replicas
):
    (svc,) = await replicas(1)
    await one_leader([svc])
    git.create_repo("ld-restart", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    git.create_repo("ld-during", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    _, build = await svc.submit({"repo": git.url("ld-restart"), "ref": "v1"}, "alice")
    await running(kube, namespace, build.id)
    await asyncio.to_thread(control_plane.restart_apiserver, 1.0)
    # the Job completed while the builder could not watch (written right after the restart,
    # before its watches are back), and a build submitted after
    await complete_job(kube, namespace, build.id, digest_of("ld-restart"))
    _, later = await svc.submit({"repo": git.url("ld-during"), "ref": "v1"}, "alice")
    await running(kube, namespace, later.id)

    async def recovered():
        return await phase_of(kube, namespace, build.id) == "ready" and (
            await phase_of(kube, namespace, later.id) == "building"
        )

    await wait_for(recovered, timeout=20)
    await complete_job(kube, namespace, later.id, digest_of("ld-during"))

    async def later_ready():
        return await phase_of(kube, namespace, later.id) == "ready"

    await wait_for(later_ready, timeout=5)
    assert svc.controller.elector.is_leader
    await wait_for(lambda: released(svc), timeout=5)


async def test_a_new_leaders_failed_resync_is_tried_again_soon(kube, namespace):
    """A leader's first resync (what finds the builds no event brings) that fails, as on an
    API server still initializing its storage after a restart (429), is tried again after
    ``retry`` seconds, not after the resync interval."""
    svc = build_service(kube, settings(namespace), log_reader=Logs().read)
    svc.limits.lease_duration_seconds = 3.0
    svc.limits.lease_renew_seconds = 0.5
    svc.limits.resync_interval_seconds = 3600
    resyncs = []
    listing = svc.store.list

    async def flaky(**kw):
        if asyncio.current_task().get_name() == "builder-resync":
            resyncs.append(time.monotonic())
            if len(resyncs) == 1:
                raise client.ApiException(status=429, reason="storage is (re)initializing")
        return await listing(**kw)

    svc.store.list = flaky
    svc.start(0.2)
    try:

        async def again():
            return len(resyncs) >= 2

        await wait_for(again, timeout=5)
    finally:
        await svc.stop()
    assert resyncs[1] - resyncs[0] < 2
