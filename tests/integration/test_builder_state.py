"""Build state as a controller keeps it, against the real API server: ImageBuild records with a
status subresource, optimistic concurrency (a cancel during a reconcile stays cancelled),
terminal phases that never change, a missing Job that fails the build instead of rebuilding
it, refused Jobs that fail after bounded retries, bounded log writes, retention, restarts. The
test plays the Job controller and kubelet where a build has to finish (no real build runs)."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio
from harness.git import GitServer
from harness.jobs import complete_job, digest_of, start_pod
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aicoe_spawner.builder.__main__ import Settings, build_service
from aicoe_spawner.builder.store import GROUP, PLURAL, TAIL_LIMIT, VERSION, record_name

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def git(tmp_path_factory):
    server = GitServer(tmp_path_factory.mktemp("state-git"))
    yield server
    server.stop()


def settings(namespace: str, **kw) -> Settings:
    kw.setdefault("max_per_user", 10)
    return Settings(
        namespace=namespace,
        registry="registry.local:5000",
        allowed_hosts=(),
        private_hosts=("127.0.0.1",),
        allow_http=True,
        **kw,
    )


class Logs:
    """A pod log reader whose text the test sets (the kubelet's log API)."""

    def __init__(self) -> None:
        self.text: dict[str, str] = {}

    async def read(self, namespace: str, pod: str, container: str | None = None) -> str | None:
        """The text set for the pod, as its build container's log (its push step's is empty)."""
        if container not in (None, "build"):
            return None
        return self.text.get(pod.removesuffix("-run"))


async def record(kube, namespace: str, build_id: str) -> dict:
    return await client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, record_name(build_id)
    )


async def job_names(kube, namespace) -> list[str]:
    jobs = await client.BatchV1Api(kube).list_namespaced_job(namespace)
    return sorted(j.metadata.name for j in jobs.items if j.metadata.deletion_timestamp is None)


async def ledger(service) -> set[str]:
    return set(await service.ledger.entries())


@pytest_asyncio.fixture
async def logs():
    return Logs()


@pytest_asyncio.fixture
async def service(kube, namespace, logs):
    # no background loop: the test calls reconcile_once / cleanup_once itself
    return build_service(kube, settings(namespace), log_reader=logs.read)


async def test_a_build_is_an_imagebuild_with_status_and_a_kept_log(
    kube, namespace, git, service, logs
):
    git.create_repo("st-nb", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    status, build = await service.submit({"repo": git.url("st-nb"), "ref": "v1"}, "alice")
    assert status == 202
    obj = await record(kube, namespace, build.id)
    assert obj["kind"] == "ImageBuild" and obj["spec"]["repo"] == git.url("st-nb")
    assert obj["spec"]["image"] == f"{namespace}/st-nb:v1"
    assert obj["metadata"]["labels"]["aicoe-spawner.io/active"] == "true"
    assert obj["status"]["submitted"] is True  # the Job exists
    assert await job_names(kube, namespace) == [f"imgbuild-{build.id}"]
    assert await ledger(service) == {build.id}

    # kubectl get columns
    crd = await client.ApiextensionsV1Api(kube).read_custom_resource_definition(
        "imagebuilds.aicoe-spawner.io"
    )
    (version,) = crd.spec.versions
    assert [c.name for c in version.additional_printer_columns] == [
        "Repo",
        "Ref",
        "Phase",
        "Image",
        "Age",
    ]
    assert version.subresources.status is not None
    # what `kubectl get imagebuilds` prints (the API server's Table rendering)
    response = await kube.call_api(
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
        "GET",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    table = await response.json()
    columns = [c["name"] for c in table["columnDefinitions"]]
    (row,) = table["rows"]
    cells = dict(zip(columns, row["cells"], strict=True))
    assert cells["Repo"] == git.url("st-nb") and cells["Ref"] == "v1"
    assert cells["Image"] == f"{namespace}/st-nb:v1" and cells["Age"]

    logs.text[f"imgbuild-{build.id}"] = "".join(f"step {i}\n" for i in range(5000))
    await complete_job(kube, namespace, build.id, digest_of("st-nb"))
    await service.reconcile_once()
    done = await service.get(build.id)
    assert done.phase == "ready" and done.digest == digest_of("st-nb")
    obj = await record(kube, namespace, build.id)
    assert obj["metadata"]["labels"]["aicoe-spawner.io/active"] == "false"
    assert len(obj["status"]["logTail"].encode()) <= TAIL_LIMIT
    assert obj["status"]["logTail"].endswith("step 4999\n")
    # the full log is kept once, outside the record, and served after the pod is gone
    assert done.log.startswith("step 0\n") and done.log.endswith("step 4999\n")
    logs.text.clear()
    assert (await service.get(build.id)).log == done.log
    assert await ledger(service) == set()  # the quota is free again


async def test_terminal_phase_never_changes(kube, namespace, git, service):
    git.create_repo("st-term", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    _, build = await service.submit({"repo": git.url("st-term"), "ref": "v1"}, "alice")
    cancelled = await service.cancel(build)
    assert cancelled.phase == "cancelled"
    # the API server itself refuses to move a terminal phase
    with pytest.raises(ApiException) as err:
        await client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            record_name(build.id),
            {"status": {"phase": "building"}},
            _content_type="application/merge-patch+json",
        )
    assert err.value.status == 422 and "never changes" in err.value.body
    # and so does the service: a decision made on an older copy is re-made on the current
    # record, where a terminal phase stays
    after = await service._write(build, lambda b: {"phase": "building", "message": "late"})
    assert after.phase == "cancelled" and after.message == "cancelled"
    await service.reconcile_once()
    assert (await service.get(build.id)).phase == "cancelled"


async def test_cancel_during_a_reconcile_stays_cancelled(kube, namespace, git, service):
    """The reconcile decided on a record read before the cancel: its write is refused (409),
    it reads again, sees the cancel, and takes back the Job it had just created."""
    git.create_repo("st-race", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    git.create_repo("st-race2", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    _, build = await service.submit({"repo": git.url("st-race"), "ref": "v1"}, "alice")
    stale = await service.record(build.id)  # read by a reconcile ...
    await service.cancel(stale)  # ... then the cancel lands
    after = await service._reconcile(stale)  # ... and the reconcile goes on with its copy
    assert after.phase == "cancelled"
    assert (await service.record(build.id)).phase == "cancelled"
    assert await job_names(kube, namespace) == []

    # the same before the Job exists: the reconcile creates it, then must delete it again
    from aicoe_spawner.builder.store import Build, now

    _, other = await service.submit({"repo": git.url("st-race2"), "ref": "v1"}, "alice")
    await service.cancel(other)
    await service.store.delete(other.id)
    fresh, _ = await service.store.create(Build(spec=other.spec, created=now()))
    assert not fresh.submitted
    await service.cancel(fresh)
    after = await service._reconcile(fresh)  # stale: not submitted, not cancelled
    assert after.phase == "cancelled"
    assert await job_names(kube, namespace) == []
    await service.reconcile_once()
    assert await job_names(kube, namespace) == []


async def test_missing_job_is_a_failure_not_a_rebuild(kube, namespace, git, logs):
    """The builder is down longer than the Job TTL: the finished Job is gone. A running
    build whose Job is gone fails; a finished build stays finished; nothing is rebuilt."""
    first = build_service(kube, settings(namespace), log_reader=logs.read)
    git.create_repo("st-ttl", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    git.create_repo("st-ttl2", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    _, done = await first.submit({"repo": git.url("st-ttl"), "ref": "v1"}, "alice")
    await complete_job(kube, namespace, done.id, digest_of("ttl"))
    await first.reconcile_once()
    assert (await first.record(done.id)).phase == "ready"
    _, running = await first.submit({"repo": git.url("st-ttl2"), "ref": "v1"}, "alice")
    # the builder stops; the build finishes and its Job expires (TTL) meanwhile
    await complete_job(kube, namespace, running.id, digest_of("ttl2"))
    batch = client.BatchV1Api(kube)
    for b in (done, running):
        await batch.delete_namespaced_job(
            f"imgbuild-{b.id}", namespace, propagation_policy="Background"
        )
    await client.CoreV1Api(kube).delete_collection_namespaced_pod(namespace)
    # a new builder process starts
    second = build_service(kube, settings(namespace), log_reader=logs.read)
    for _ in range(3):
        await second.reconcile_once()
        await second.cleanup_once()
    assert (await second.record(done.id)).phase == "ready"
    lost = await second.record(running.id)
    assert lost.phase == "failed" and "gone" in lost.message
    assert await job_names(kube, namespace) == []
    assert await ledger(second) == set()


async def test_refused_job_fails_after_bounded_retries(kube, namespace, git, logs):
    """A Job the API server refuses (here: a ResourceQuota of zero Jobs) is retried a few
    times, then the build fails and frees its quota."""
    core = client.CoreV1Api(kube)
    await core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}}
    )
    await core.patch_namespaced_resource_quota_status(
        "no-jobs",
        namespace,
        {
            "status": {
                "hard": {"count/jobs.batch": "0"},
                "used": {"count/jobs.batch": "0"},
            }
        },
        _content_type="application/merge-patch+json",
    )
    svc = build_service(kube, settings(namespace, max_per_user=1), log_reader=logs.read)
    git.create_repo("st-refused", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    status, build = await svc.submit({"repo": git.url("st-refused"), "ref": "v1"}, "alice")
    assert status == 202 and build.phase == "pending" and build.submit_attempts == 1
    for _ in range(5):
        await svc.reconcile_once()
    failed = await svc.get(build.id)
    assert failed.phase == "failed" and failed.submit_attempts == 3
    assert "refused the build job 3 times" in failed.message
    assert await ledger(svc) == set()  # the user may build again
    await core.delete_namespaced_resource_quota("no-jobs", namespace)
    git.create_repo("st-after", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    assert (await svc.submit({"repo": git.url("st-after"), "ref": "v1"}, "alice"))[0] == 202


async def test_reconcile_reads_only_active_builds_and_writes_the_log_rarely(
    kube, namespace, git, logs
):
    svc = build_service(kube, settings(namespace, max_per_user=30), log_reader=logs.read)
    finished = []
    for i in range(20):
        git.create_repo(f"st-many{i}", {"Dockerfile": "FROM scratch\n"}, tag="v1")
        _, b = await svc.submit({"repo": git.url(f"st-many{i}"), "ref": "v1"}, "alice")
        finished.append(await svc.cancel(b))
    git.create_repo("st-live", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    _, live = await svc.submit({"repo": git.url("st-live"), "ref": "v1"}, "alice")
    seen = []
    state = svc.backend.state

    async def counted(spec):
        seen.append(spec.id)
        return await state(spec)

    svc.backend.state = counted
    svc.limits.log_tail_interval_seconds = 3600  # however slow this machine is today
    await start_pod(kube, namespace, live.id)
    versions = set()
    for i in range(30):  # a running build whose log grows on every reconcile
        logs.text[f"imgbuild-{live.id}"] = "".join(f"line {n}\n" for n in range(i + 1))
        await svc.reconcile_once()
        versions.add((await record(kube, namespace, live.id))["metadata"]["resourceVersion"])
    assert set(seen) == {live.id}  # 20 finished records were never looked at
    assert len(svc.log_lines[live.id]) == 30  # every line is served from memory ...
    assert len(versions) <= 2  # ... while the record was written once at most (the tail)
    assert len(await svc.store.list()) == 21


async def test_records_expire_after_the_retention(kube, namespace, git, logs):
    svc = build_service(
        kube, settings(namespace, record_retention=1, job_retention=0), log_reader=logs.read
    )
    git.create_repo("st-exp", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    git.create_repo("st-keep", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    _, old = await svc.submit({"repo": git.url("st-exp"), "ref": "v1"}, "alice")
    await complete_job(kube, namespace, old.id, digest_of("exp"))
    await svc.reconcile_once()
    _, running = await svc.submit({"repo": git.url("st-keep"), "ref": "v1"}, "alice")
    await asyncio.sleep(1.5)
    result = await svc.cleanup_once()
    assert result["records"] == [old.id]
    assert await svc.record(old.id) is None
    cms = await client.CoreV1Api(kube).list_namespaced_config_map(namespace)
    assert f"imgbuild-{old.id}-log" not in {c.metadata.name for c in cms.items}
    assert (await svc.record(running.id)).phase == "pending"  # active builds never expire


async def test_restart_loses_nothing(kube, namespace, git, logs):
    """State lives in the cluster: a new service instance (a restarted or second replica)
    picks up a build, its quota and its log where the first left them."""
    first = build_service(kube, settings(namespace, max_per_user=1), log_reader=logs.read)
    git.create_repo("st-restart", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    git.create_repo("st-restart2", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    _, build = await first.submit({"repo": git.url("st-restart"), "ref": "v1"}, "alice")
    logs.text[f"imgbuild-{build.id}"] = "building...\n"
    await first.reconcile_once()
    second = build_service(kube, settings(namespace, max_per_user=1), log_reader=logs.read)
    # the quota holds for the new instance too
    with pytest.raises(Exception) as err:
        await second.submit({"repo": git.url("st-restart2"), "ref": "v1"}, "alice")
    assert getattr(err.value, "status", None) == 429
    logs.text[f"imgbuild-{build.id}"] = "building...\ndone\n"
    await complete_job(kube, namespace, build.id, digest_of("restart"))
    await second.reconcile_once()
    await first.reconcile_once()  # the old instance, still running, agrees
    done = await first.get(build.id)
    assert done.phase == "ready" and done.log == "building...\ndone\n"
    status, again = await second.submit({"repo": git.url("st-restart"), "ref": "v1"}, "alice")
    assert (status, again.id) == (200, build.id)
    # another requester gets a record of their own for the same build: ready, no new Job
    status, bobs = await second.submit({"repo": git.url("st-restart"), "ref": "v1"}, "bob")
    assert status == 200 and bobs.id != build.id and bobs.spec.job_id == build.id
    assert bobs.phase == "ready" and bobs.digest == done.digest
    assert await job_names(kube, namespace) == [f"imgbuild-{build.id}"]
    obj = await record(kube, namespace, build.id)
    assert json.loads(json.dumps(obj["status"]))["phase"] == "ready"


async def test_a_shared_job_lives_while_any_record_follows_it(kube, namespace, git, logs):
    """Records are per requester; identical builds follow one Job (``spec.job_id``). Neither a
    cancel of the record that started it (by someone other than the stream's publisher) nor
    the cleanup of finished Jobs takes it from a record still following it, and the quota is
    each requester's own."""
    svc = build_service(kube, settings(namespace, job_retention=0), log_reader=logs.read)
    git.create_repo("st-shared", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    body = {"repo": git.url("st-shared"), "ref": "v1"}
    # carol publishes the stream (the publisher's cancel would end the build for everyone)
    await client.CustomObjectsApi(kube).create_namespaced_custom_object(
        "image.openshift.io",
        "v1",
        namespace,
        "imagestreams",
        {
            "apiVersion": "image.openshift.io/v1",
            "kind": "ImageStream",
            "metadata": {
                "name": "st-shared",
                "labels": {"app.kubernetes.io/managed-by": "aicoe-image-builder"},
                "annotations": {
                    "aicoe-spawner.io/source-repo": body["repo"],
                    "aicoe-spawner.io/publisher": "carol",
                },
            },
            "spec": {"tags": []},
        },
    )
    status, alices = await svc.submit(body, "alice")
    assert status == 202
    status, bobs = await svc.submit(body, "bob")
    assert status == 200 and bobs.id != alices.id and bobs.spec.job_id == alices.id
    assert await job_names(kube, namespace) == [f"imgbuild-{alices.id}"]
    assert await ledger(svc) == {alices.id, bobs.id}
    await svc.reconcile_once()
    assert (await svc.record(bobs.id)).submitted  # it follows the Job that exists

    cancelled = await svc.cancel(await svc.record(alices.id))
    assert cancelled.phase == "cancelled"
    assert await job_names(kube, namespace) == [f"imgbuild-{alices.id}"]  # bob's still runs
    assert await ledger(svc) == {bobs.id}

    await complete_job(kube, namespace, alices.id, digest_of("shared"))
    result = await svc.cleanup_once()  # finished, but bob's record has not read it yet
    assert result["objects"] == [] and await job_names(kube, namespace) == [f"imgbuild-{alices.id}"]
    await svc.reconcile_once()
    done = await svc.record(bobs.id)
    assert (done.phase, done.digest) == ("ready", digest_of("shared"))
    assert (await svc.record(alices.id)).phase == "cancelled"  # a terminal phase stays
    assert await ledger(svc) == set()
    result = await svc.cleanup_once()
    assert result["objects"] == [f"imgbuild-{alices.id}"]


async def test_a_phase_two_replicas_reconcile_at_once_is_counted_once(kube, namespace, git, logs):
    """The replica that took the request and the leader both reconcile a new build; the one
    whose write loses finds the phase already changed: only the write that made it counts it
    (the builds metric summed over replicas is one per build and phase)."""
    first = build_service(kube, settings(namespace), log_reader=logs.read)
    second = build_service(kube, settings(namespace), log_reader=logs.read)
    git.create_repo("st-count", {"Dockerfile": "FROM scratch\n"}, tag="v1")
    _, build = await first.submit({"repo": git.url("st-count"), "ref": "v1"}, "alice")
    await start_pod(kube, namespace, build.id)
    read = await first.store.get(build.id)  # what both read: pending, its Job created
    assert (read.phase, read.submitted) == ("pending", True)
    assert (await first._reconcile(read)).phase == "building"
    assert (await second._reconcile(read)).phase == "building"  # its write conflicted

    def counted(service, phase: str) -> float:
        value = service.metrics.registry.get_sample_value(
            "aicoe_builder_builds_total", {"phase": phase}
        )
        return value or 0.0

    assert counted(first, "building") + counted(second, "building") == 1
