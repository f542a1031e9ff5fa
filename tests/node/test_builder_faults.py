"""Faults on the real node (issue 20): two builder replicas in the test process against the
node's API server run 20 real builds (Jobs whose pods run buildah in containerd, clone from a
git server on the node IP and push to the node's registry) for four users under a per-user
limit. While the builds run the leader is killed (its Lease is not released and nothing it
does reaches the API server any more), a replacement replica starts, and the kube-apiserver
restarts. In the end every build is ready, having got there exactly once (no record moved
backwards or ended twice, as the API server's watch saw them and as the replicas' writes
did), each build had exactly one Job, the registry holds every image at the record's digest,
no user ever had more builds than the limit, and the quota ledger is empty."""

from __future__ import annotations

import asyncio
import datetime
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

import aiohttp
import pytest
import pytest_asyncio
from kubernetes_asyncio import client

from aicoe_devcluster import api_client, delete_namespace
from aicoe_devcluster.gitserver import GitServer
from aicoe_devcluster.images import registry_digest
from aicoe_spawner.builder.__main__ import Settings, build_service
from aicoe_spawner.builder.informer import Informer
from aicoe_spawner.builder.quota import GIT, LimitError, QuotaLedger
from aicoe_spawner.builder.service import BuildService
from aicoe_spawner.builder.store import ACTIVE_LABEL, GROUP, PLURAL, SELECTOR, VERSION
from aicoe_spawner.builder.vocabulary import ACTIVE, MANAGED_SELECTOR, TERMINAL, L, parse_stamp

pytestmark = pytest.mark.node

USERS = ("ann", "bob", "cyd", "dee")
PER_USER_BUILDS = 5  # 4 users x 5 repositories: 20 builds, 20 Jobs
PER_USER = 2  # the per-user limit of active builds
TOTAL = 6  # the service-wide limit of Jobs
# small requests: the node's 2 cores schedule every admitted build at once
RESOURCES = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "2", "memory": "2Gi"},
}
RANK = {"pending": 0, "building": 1, **dict.fromkeys(TERMINAL, 2)}


# -- the replicas ----------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    api: client.ApiClient
    service: BuildService
    killed: bool = False

    @property
    def leads(self) -> bool:
        c = self.service.controller
        return not self.killed and c is not None and c.elector.is_leader


class Phases:
    """An observer of every replica: (build, phase, replica) of each phase a write made."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def of(self, name: str):
        phases = self

        class Observer:
            async def build_changed(self, build, previous: str) -> None:
                phases.seen.append((build.id, build.phase, name))

        return Observer()


async def kill(replica: Replica) -> None:
    """What a killed replica does: nothing more. Its Lease is not released, its requests in
    flight end with a connection error and no later request leaves it (its submissions
    half-way stay half-way, as a killed process leaves them)."""

    async def refused(*args, **kwargs):
        raise aiohttp.ClientConnectionError(f"replica {replica.name} was killed")

    replica.killed = True
    replica.api.rest_client.request = refused
    controller = replica.service.controller
    assert controller is not None
    controller.elector._task.cancel()
    await asyncio.gather(controller.elector._task, return_exceptions=True)
    controller.elector._task = None
    controller.elector.leading.clear()
    await controller._follow()
    await controller.records.stop()
    replica.service.controller = None


# -- what the test watches -------------------------------------------------------------------


@dataclass
class Watched:
    """The build records and Jobs as the API server's watches report them (through the
    builder's own Informer, which relists after the API server restart)."""

    history: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    records: dict[str, dict] = field(default_factory=dict)  # build id -> last record
    deleted_records: list[tuple[str, str, float]] = field(default_factory=list)
    record_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    job_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    ended_at: dict[str, float] = field(default_factory=dict)  # build id -> when seen terminal
    jobs: dict[str, dict] = field(default_factory=dict)
    deleted_jobs: list[str] = field(default_factory=list)

    async def record_changed(self, kind: str, obj: dict) -> None:
        build_id = obj["metadata"]["labels"][f"{L}build-id"]
        if kind == "DELETED":
            self.deleted_records.append((build_id, obj["metadata"]["uid"], time.monotonic()))
            return
        self.records[build_id] = obj
        self.record_uids[build_id].add(obj["metadata"]["uid"])
        version = int(obj["metadata"]["resourceVersion"])
        phase = (obj.get("status") or {}).get("phase") or "pending"
        seen = self.history[build_id]
        if not seen or seen[-1][0] != version:
            seen.append((version, phase))
        if phase in TERMINAL:
            self.ended_at.setdefault(build_id, time.monotonic())

    async def job_changed(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.deleted_jobs.append(name)
            return
        self.jobs[name] = obj
        self.job_uids[name].add(obj["metadata"]["uid"])

    def phases(self) -> dict[str, str]:
        return {i: seen[-1][1] for i, seen in self.history.items()}

    def count(self, *phases: str) -> int:
        return sum(1 for p in self.phases().values() if p in phases)


def job_finished(job: dict) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)


@dataclass
class QuotaSamples:
    """Most builds of one user (ledger, unfinished records, unfinished Jobs) and most Jobs
    at once, over samples taken while the builds run."""

    samples: int = 0
    ledger_user: int = 0
    ledger_jobs: int = 0
    records_user: int = 0
    records_total: int = 0
    jobs_user: int = 0
    jobs_total: int = 0
    violations: list[str] = field(default_factory=list)

    def take(self, entries: dict[str, list] | None, watched: Watched) -> None:
        self.samples += 1
        checks = []
        if entries is not None:
            by_user = Counter(e[0] for e in entries.values())
            jobs = sum(1 for e in entries.values() if e[2:3] != [GIT])
            self.ledger_user = max(self.ledger_user, *by_user.values(), 0)
            self.ledger_jobs = max(self.ledger_jobs, jobs)
            checks.append(("ledger", by_user, jobs))
        running = [r for r in watched.records.values() if _phase(r) in ACTIVE]
        by_user = Counter(r["spec"]["requester"] for r in running)
        self.records_user = max(self.records_user, *by_user.values(), 0)
        self.records_total = max(self.records_total, len(running))
        checks.append(("records", by_user, len(running)))
        jobs = [j for j in watched.jobs.values() if not job_finished(j)]
        by_user = Counter(j["metadata"]["annotations"][f"{L}requester"] for j in jobs)
        self.jobs_user = max(self.jobs_user, *by_user.values(), 0)
        self.jobs_total = max(self.jobs_total, len(jobs))
        checks.append(("jobs", by_user, len(jobs)))
        for what, users, total in checks:
            if any(n > PER_USER for n in users.values()) or total > TOTAL:
                self.violations.append(f"{what}: {dict(users)}, {total} in all")


def _phase(obj: dict) -> str:
    return (obj.get("status") or {}).get("phase") or "pending"


# -- the test --------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def faults_ns(node_kube):
    ns = f"faults-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(node_kube)
    await core.create_namespace({"metadata": {"name": ns}})
    # the ServiceAccount admission plugin: pods wait for the namespace's default account
    deadline = time.monotonic() + 60
    while not (await core.list_namespaced_service_account(ns)).items:
        assert time.monotonic() < deadline, "no default ServiceAccount"
        await asyncio.sleep(0.2)
    yield ns
    await delete_namespace(node_kube, ns, timeout=120)


@pytest.fixture
def git_server(node_cluster, tmp_path):
    server = GitServer(tmp_path / "git", address=node_cluster.node.node_ip).start()
    yield server
    server.stop()


async def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(interval)


@pytest.mark.timeout(900)
async def test_builds_end_once_each_through_a_killed_leader_and_an_api_server_restart(
    node_cluster, node_kube, faults_ns, git_server, tmp_path
):
    node, plane, ns = node_cluster.node, node_cluster.plane, faults_ns
    builder_image = await asyncio.to_thread(node.ensure_image, "builder")
    base = node.images["pause"]  # busybox alone: the smallest real build
    repos: dict[tuple[str, int], str] = {}
    for user in USERS:
        for n in range(PER_USER_BUILDS):
            files = tmp_path / "repos" / f"{user}-{n}"
            files.mkdir(parents=True)
            (files / "Dockerfile").write_text(
                f'FROM {base}\nRUN ["/bin/busybox", "sh", "-c", "echo {user} {n} > /n"]\n'
            )
            repos[user, n] = git_server.add_repo(f"faults-{user}-{n}", files)
    settings = Settings(
        namespace=ns,
        registry=node.registry,
        allowed_hosts=(node.node_ip,),
        private_hosts=(node.node_ip,),
        allow_http=True,
        tls_verify=False,
        builder_image=builder_image,
        check_image=False,  # busybox has no jupyterhub
        max_per_user=PER_USER,
        max_total=TOTAL,
        build_storage="512Mi",
        lease_duration=4.0,
        lease_renew=1.0,
        resync_interval=3600,  # the watches alone: no resync hides a missed event
        cleanup_interval=5.0,
        job_retention=3600,
    )

    phases = Phases()
    replicas: list[Replica] = []

    async def start_replica(name: str) -> Replica:
        api = await api_client(plane.kubeconfig)  # a process of its own: its own connections
        service = build_service(api, settings)
        service.backend.config = replace(service.backend.config, resources=RESOURCES)
        # what a killed replica or a request cut by the API server restart left in the ledger
        # (an admission without a record) is pruned soon, not after 300 s
        service.limits.quota_grace_seconds = 10.0
        service.observers.append(phases.of(name))
        service.start(1.0)
        replica = Replica(name, api, service)
        replicas.append(replica)
        await asyncio.wait_for(service.synced.wait(), 30)
        return replica

    def live() -> list[Replica]:
        return [r for r in replicas if not r.killed]

    def leaders() -> list[Replica]:
        return [r for r in replicas if r.leads]

    watched = Watched()
    custom, batch = client.CustomObjectsApi(node_kube), client.BatchV1Api(node_kube)
    informers = [
        Informer(
            "test: records",
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            handler=watched.record_changed,
            label_selector=f"{SELECTOR},{L}build-id",
        ),
        Informer(
            "test: jobs",
            batch.list_namespaced_job,
            ns,
            handler=watched.job_changed,
            label_selector=MANAGED_SELECTOR,
        ),
    ]
    for informer in informers:
        informer.start()
    quota = QuotaSamples()
    ledger = QuotaLedger(node_kube, ns)
    sampling = True

    async def sample() -> None:
        while sampling:
            try:
                entries = await ledger.entries()
            except Exception:  # the API server restarts
                entries = None
            quota.take(entries, watched)
            await asyncio.sleep(0.25)

    submitted: dict[tuple[str, int], str] = {}
    answers: Counter[str] = Counter()

    async def submit(user: str, n: int) -> None:
        """A user's request, as a client retries it: a 429 later, another replica when the
        one asked dies or the API server is down."""
        body = {"repo": repos[user, n], "ref": "v1"}
        while True:
            replica = random.choice(live())
            try:
                status, build = await replica.service.submit(body, user)
            except LimitError:
                answers["429"] += 1
                await asyncio.sleep(0.5 + random.random())
                continue
            except Exception as e:
                answers[type(e).__name__] += 1
                await asyncio.sleep(0.5)
                continue
            answers[str(status)] += 1
            submitted[user, n] = build.id
            return

    started = time.monotonic()
    try:
        a, b = await start_replica("a"), await start_replica("b")
        await wait_until(lambda: len(leaders()) == 1, 15, "one leader")
        submitters = [
            asyncio.create_task(submit(u, n)) for u in USERS for n in range(PER_USER_BUILDS)
        ]
        sampler = asyncio.create_task(sample())

        # builds run: kill the leader
        await wait_until(lambda: watched.count("building") >= 3, 240, "three builds running")
        (leader,) = leaders()
        at_kill = watched.phases()
        killed = time.monotonic()
        await kill(leader)
        await wait_until(lambda: len(leaders()) == 1, 30, "a new leader")
        takeover = time.monotonic() - killed
        (second,) = leaders()
        replacement = await start_replica("c")  # the Deployment's new pod

        # the new leader finishes builds; then the API server restarts while others run
        ready_at_kill = sum(1 for p in at_kill.values() if p == "ready")
        await wait_until(
            lambda: watched.count("ready") >= ready_at_kill + 2, 240, "two more builds ready"
        )
        at_restart = watched.phases()
        restarting = time.monotonic()
        await asyncio.to_thread(plane.restart_apiserver, 1.0)
        downtime = time.monotonic() - restarting

        # every build ends
        await asyncio.wait_for(asyncio.gather(*submitters), 300)
        ids = sorted(submitted.values())
        await wait_until(
            lambda: watched.count(*TERMINAL) == len(ids) == len(repos),
            600,
            "every build terminal",
            interval=0.5,
        )
        total = time.monotonic() - started
        sampling = False
        await sampler

        deadline = time.monotonic() + 60
        while entries := await ledger.entries():  # the last releases, orphans pruned
            assert time.monotonic() < deadline, f"the quota ledger keeps {entries}"
            await asyncio.sleep(0.5)
        await wait_until(
            lambda: all(
                r["metadata"]["labels"][ACTIVE_LABEL] == "false" for r in watched.records.values()
            ),
            30,
            "every record labelled inactive",
        )
        for r in replicas:
            await r.service.observed()
        jobs = await batch.list_namespaced_job(ns, label_selector=MANAGED_SELECTOR)
        pods = await client.CoreV1Api(node_kube).list_namespaced_pod(ns)
        final = {b.id: b for b in await replacement.service.store.list()}
    finally:
        sampling = False
        for informer in informers:
            await informer.stop()
        for r in replicas:
            if not r.killed:
                await r.service.stop()
            await r.api.close()

    builds_per_minute = len(ids) / (total / 60)
    print(
        f"\n{len(ids)} builds in {total:.0f} s ({builds_per_minute:.1f} per minute); "
        f"takeover after the leader ({leader.name}) was killed: {takeover:.2f} s "
        f"(new leader {second.name}); API server down for {downtime:.1f} s; "
        f"at the kill {Counter(at_kill.values())}, at the restart {Counter(at_restart.values())}; "
        f"answers {dict(answers)}; quota samples {quota}; "
        f"builds ended {sum(t < killed for t in watched.ended_at.values())} before the kill, "
        f"{sum(t > restarting + downtime for t in watched.ended_at.values())} after the restart, "
        f"the last {max(watched.ended_at.values()) - restarting - downtime:.0f} s after it"
    )

    # where the time went: the pod's end -> the Job's completion (the Job controller) -> the
    # record's end (the builder)
    pod_end = {
        p.metadata.labels["job-name"]: max(
            s.state.terminated.finished_at
            for s in (p.status.container_statuses or [])
            if s.state and s.state.terminated
        )
        for p in pods.items
    }

    def completed(job) -> datetime.datetime:
        return next(c.last_transition_time for c in job.status.conditions if c.type == "Complete")

    lags = [
        (
            (completed(j) - pod_end[j.metadata.name]).total_seconds(),
            (
                parse_stamp(final[j.metadata.labels[f"{L}build-id"]].finished) - completed(j)
            ).total_seconds(),
        )
        for j in jobs.items
    ]
    print(
        f"pod end -> Job complete: most {max(a for a, _ in lags):.0f} s; "
        f"Job complete -> record ready: most {max(b for _, b in lags):.0f} s (whole seconds)"
    )

    # the faults came while builds ran
    assert Counter(at_kill.values())["building"] >= 3
    assert any(p in ACTIVE for p in at_restart.values()) or len(at_restart) < len(repos)

    # every build is ready, and got there once: no record moved backwards, none was deleted
    assert len(ids) == len(set(ids)) == len(repos) == 20
    assert set(final) == set(ids) == set(watched.history)
    assert {i: b.phase for i, b in final.items()} == dict.fromkeys(ids, "ready"), {
        i: b.message for i, b in final.items() if b.phase != "ready"
    }
    assert watched.deleted_records == [], [(i, t - started) for i, _, t in watched.deleted_records]
    assert {i: len(u) for i, u in watched.record_uids.items()} == dict.fromkeys(ids, 1)
    for build_id, seen in watched.history.items():
        versions = [v for v, _ in seen]
        ranks = [RANK[p] for _, p in seen]
        assert versions == sorted(versions), (build_id, seen)
        assert ranks == sorted(ranks), (build_id, seen)  # never backwards
        terminal = [p for _, p in seen if p in TERMINAL]
        assert set(terminal) == {"ready"}, (build_id, seen)  # terminal once, never changed
    # as the replicas' writes saw it: each build entered ready once, by one replica
    ready = Counter(i for i, phase, _ in phases.seen if phase == "ready")
    assert ready == dict.fromkeys(ids, 1), ready

    # one Job per build, never a second one (a second Job of the same name has another uid)
    assert watched.deleted_jobs == []
    uids = {name: len(uids) for name, uids in watched.job_uids.items()}
    assert uids == {f"imgbuild-{i}": 1 for i in ids}, watched.job_uids
    per_build = Counter(j.metadata.labels[f"{L}build-id"] for j in jobs.items)
    assert per_build == dict.fromkeys(ids, 1)
    assert all(j.status.succeeded == 1 for j in jobs.items)

    # the registry has every image, at the record's digest
    for build in final.values():
        registry, rest = build.spec.output_image.split("/", 1)
        repository, tag = rest.rsplit(":", 1)
        assert registry == node.registry
        assert registry_digest(registry, repository, tag) == build.digest, build.id

    # the quota is exact: never above the limits (and the limits were reached), empty now
    assert quota.samples > 20
    assert quota.violations == [], quota.violations[:5]
    assert quota.ledger_user == PER_USER  # the limit was reached: 429s were answered
    assert answers["429"] > 0
    assert max(quota.records_user, quota.jobs_user) <= PER_USER
    assert max(quota.ledger_jobs, quota.records_total, quota.jobs_total) <= TOTAL
    assert a.killed or b.killed
    assert takeover <= settings.lease_duration + 2 * settings.lease_renew + 2, takeover
