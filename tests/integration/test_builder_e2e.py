"""The builder end to end on this machine: a local Git repo over HTTP, the real API server,
real buildah builds (the job runner's pods, their containers run here by the fake kubelet from
the Job's own command), Debian's docker-registry on loopback, and the ImageStream registered
with the real digest."""

from __future__ import annotations

import asyncio
import html
import re
import time

import pytest
import pytest_asyncio
from harness.builder import local_settings
from harness.git import GitServer
from harness.hub import FakeSingleUser, Hub
from harness.jobs import JobRunner
from harness.kube import user_pods, wait_for
from harness.registry import Registry, push_base_image
from kubernetes_asyncio import client

from aicoe_spawner.builder.__main__ import build_service
from aicoe_spawner.builder.requests import BuildRequestError
from aicoe_spawner.catalog import TagPhase, parse_imagestream

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def infra(tmp_path_factory):
    root = tmp_path_factory.mktemp("builder-infra")
    git = GitServer(root / "git")
    registry = Registry(root / "registry")
    base = push_base_image(registry, root)
    yield git, registry, base, root
    registry.stop()
    git.stop()


@pytest_asyncio.fixture
async def builder(kube, fake_kubelet, namespace, infra, tmp_path):
    registry = infra[1]
    runner = JobRunner(kube, namespace, tmp_path, kubelet=fake_kubelet)
    runner.start()
    settings = local_settings(namespace, registry.host, max_per_user=5, max_total=10)
    service = build_service(kube, settings, log_reader=runner.read_log)
    service.start(0.2)
    yield service, runner
    await service.stop()
    await runner.stop()


async def stream(kube, namespace, name):
    return await client.CustomObjectsApi(kube).get_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams", name
    )


async def finished(service, build_id, timeout=120):
    async def done():
        b = await service.get(build_id)
        return b if b and b.phase in ("ready", "failed", "cancelled") else None

    return await wait_for(done, timeout=timeout, interval=0.2)


async def test_dockerfile_build_end_to_end(kube, namespace, infra, builder):
    git, registry, base, _ = infra
    service, runner = builder
    sha = git.create_repo(
        "dockerfile-nb",
        {
            "Dockerfile": f'FROM {base}\nRUN echo built > /hello.txt\nCMD ["cat", "/hello.txt"]\n',
            "README.md": "hello\n",
        },
        tag="v1.0",
    )
    t0 = time.monotonic()
    runner.paused = True  # hold the Job so that "building" can be seen before it finishes
    try:
        status, build = await service.submit(
            {"repo": git.url("dockerfile-nb"), "ref": "v1.0"}, "alice"
        )
        assert status == 202 and build.spec.commit == sha and build.phase == "pending"
        # the stream carries the record's phase right away (pending until the Job runs; the
        # reconcile marks it building then); it enters the catalog once its tag is ready
        pending = await stream(kube, namespace, "dockerfile-nb")
        assert "opendatahub.io/notebook-image" not in pending["metadata"]["labels"]
        image = parse_imagestream(pending)
        assert image.tag("v1.0").phase is TagPhase.PENDING
        assert (await service.get(build.id)).phase == "pending"
        tags = (await stream(kube, namespace, "dockerfile-nb"))["spec"]["tags"]
        assert tags[0]["annotations"]["aicoe-spawner.io/build-phase"] == "pending"
        # the same repo at the same commit is the same build: the same requester gets it
        # back; another gets a record of their own that follows the same Job
        status2, again = await service.submit(
            {"repo": git.url("dockerfile-nb"), "ref": "v1.0"}, "alice"
        )
        assert (status2, again.id) == (200, build.id)
        status3, bobs = await service.submit(
            {"repo": git.url("dockerfile-nb"), "ref": "v1.0"}, "bob"
        )
        assert status3 == 200 and bobs.id != build.id and bobs.spec.requester == "bob"
        assert bobs.spec.job_id == build.id
    finally:
        runner.paused = False

    async def started():
        b = await service.get(build.id)
        return b if b and b.phase != "pending" else None

    running = await wait_for(started, timeout=120, interval=0.05)
    if running.phase == "building":  # the tag was marked before the record said so
        image = parse_imagestream(await stream(kube, namespace, "dockerfile-nb"))
        assert image.tag("v1.0").phase in (TagPhase.BUILDING, TagPhase.READY)
    done = await finished(service, build.id)
    elapsed = time.monotonic() - t0
    assert done.phase == "ready", done.message + done.log
    digest = registry.manifest_digest(f"{namespace}/dockerfile-nb", "v1.0")
    assert done.digest == digest
    ready = await stream(kube, namespace, "dockerfile-nb")
    assert ready["metadata"]["labels"]["opendatahub.io/notebook-image"] == "true"
    image = parse_imagestream(ready)
    tag = image.tag("v1.0")
    assert tag.phase is TagPhase.READY and tag.digest == digest
    assert tag.image_ref == f"{registry.host}/{namespace}/dockerfile-nb@{digest}"
    assert tag.build_commit == sha and image.creator == "alice"
    assert "==> pushed" in done.log
    print(f"\nDockerfile build: {elapsed:.1f} s end to end, job {runner.durations} s")
    # the job's pod and Job may go; the log stays
    await service.backend.cleanup(done.spec)
    assert "==> pushed" in (await service.get(build.id)).log


async def test_source_strategy_end_to_end(kube, namespace, infra, builder):
    git, registry, base, _ = infra
    service, _ = builder
    git.create_repo(
        "s2i-nb",
        {
            ".aicoe-ci.yaml": f"build:\n  build-stratergy: Source\n  base-image: {base}\n"
            "  custom-tag: latest\n",
            "hello.txt": "from s2i\n",
        },
        tag="v2",
    )
    t0 = time.monotonic()
    status, build = await service.submit({"repo": git.url("s2i-nb"), "ref": "v2"}, "carol")
    assert status == 202 and build.spec.strategy == "source"
    # custom-tag adds a tag next to the release's, as AICoE-CI pushes both
    assert (build.spec.tag, build.spec.extra_tags) == ("v2", ("latest",))
    done = await finished(service, build.id)
    assert done.phase == "ready", done.message + done.log
    assert "s2i assemble" in done.log
    digest = registry.manifest_digest(f"{namespace}/s2i-nb", "v2")
    assert registry.manifest_digest(f"{namespace}/s2i-nb", "latest") == digest
    image = parse_imagestream(await stream(kube, namespace, "s2i-nb"))
    for name in ("v2", "latest"):
        tag = image.tag(name)
        assert tag.ready and tag.digest == digest == done.digest
    print(f"\nsource build: {time.monotonic() - t0:.1f} s end to end")


async def test_overlay_is_built_with_aicoe_cis_copy_in_rule(kube, namespace, infra, builder):
    """An overlay's Dockerfile lives in its folder: detection and the build both see the
    repository after AICoE-CI's rule (root Pipfile and Pipfile.lock removed, overlays/<name>/*
    copied to the root, dot-files not)."""
    git, registry, base, _ = infra
    service, _ = builder
    check = "test ! -e /src/Pipfile && test ! -e /src/Pipfile.lock && test -e /src/only-cpu.txt"
    git.create_repo(
        "overlay-nb",
        {
            ".aicoe-ci.yaml": "overlays:\n- name: cpu\n  build: {}\n",
            "Pipfile": "[packages]\n",
            "Pipfile.lock": "{}\n",
            "overlays/cpu/Dockerfile": f"FROM {base}\nCOPY . /src\nRUN {check} && echo copied-in\n",
            "overlays/cpu/only-cpu.txt": "cpu\n",
            "overlays/cpu/.hidden": "not copied\n",
        },
        tag="v1",
    )
    status, build = await service.submit({"repo": git.url("overlay-nb"), "ref": "v1"}, "olive")
    assert status == 202
    assert (build.spec.strategy, build.spec.dockerfile, build.spec.decided_by) == (
        "dockerfile",
        "Dockerfile",
        ("Dockerfile",),
    )
    done = await finished(service, build.id)
    assert done.phase == "ready", done.message + done.log
    assert "==> overlay cpu: overlays/cpu/* copied to the root" in done.log
    assert "copied-in" in done.log
    assert registry.manifest_digest(f"{namespace}/overlay-nb-cpu", "v1") == done.digest


async def test_an_environment_step_that_fails_says_why_in_the_record(
    kube, namespace, infra, builder
):
    """A repository without environment files on a base image without Python: the
    generated build's own check fails, and its reason is the record's message."""
    git, _, base, _ = infra
    service, _ = builder
    git.create_repo("content-nb", {"nb.ipynb": "{}\n"}, tag="v1")
    body = {"repo": git.url("content-nb"), "ref": "v1", "base_image": base}
    status, build = await service.submit(body, "paula")
    assert status == 202 and build.spec.strategy == "environment"
    assert build.spec.decided_by == ()
    done = await finished(service, build.id)
    assert done.phase == "failed"
    assert f"the base image {base} has no Python" in done.message, done.message + done.log
    assert "decided by: (no environment files)" in done.log


async def test_failed_first_build_leaves_nothing_in_the_catalog(kube, namespace, infra, builder):
    git, _, base, _ = infra
    service, _ = builder
    git.create_repo("broken-nb", {"Dockerfile": f"FROM {base}\nRUN echo oops-marker && exit 3\n"})
    status, build = await service.submit({"repo": git.url("broken-nb"), "ref": "main"}, "dave")
    assert status == 202 and build.spec.ref_kind == "branch"
    done = await finished(service, build.id)
    assert done.phase == "failed"
    assert "oops-marker" in done.log
    # everyone sees the catalog: a failed first build leaves nothing there (no stream); its
    # requester reads the log in the builder
    names = await client.CustomObjectsApi(kube).list_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams"
    )
    assert "broken-nb" not in {s["metadata"]["name"] for s in names["items"]}


async def test_an_image_without_jupyterhub_fails_the_check_and_the_tag_keeps_its_image(
    kube, fake_kubelet, namespace, infra, tmp_path
):
    """The image check in the build step (the real script, buildah on this machine): the
    busybox image has no jupyterhub-singleuser, runs as root and has no home. Built without
    the check it is served; rebuilt with the check, the build fails with what is missing in
    its record's message, and the tag keeps serving the first digest."""
    git, registry, base, _ = infra
    runner = JobRunner(kube, namespace, tmp_path, kubelet=fake_kubelet)
    runner.start()
    unchecked = build_service(
        kube, local_settings(namespace, registry.host), log_reader=runner.read_log
    )
    checked = build_service(
        kube,
        local_settings(namespace, registry.host, check_image=True, hub_version="6.1.1"),
        log_reader=runner.read_log,
    )
    git.create_repo("checked-nb", {"Dockerfile": f"FROM {base}\nRUN true\n"})
    body = {"repo": git.url("checked-nb"), "ref": "main"}
    try:
        unchecked.start(0.2)
        _, first = await unchecked.submit(body, "fay")
        served = await finished(unchecked, first.id)
        assert served.phase == "ready", served.message
        await unchecked.stop()
        git.update_repo("checked-nb", {"Dockerfile": f"FROM {base}\nRUN echo v2 > /v2\n"})
        checked.start(0.2)
        _, second = await checked.submit(body, "fay")
        done = await finished(checked, second.id)
        assert done.phase == "failed"
        message = " ".join(done.message.split())
        assert "the image cannot be offered as a notebook" in message, done.message
        assert (
            "the image has no jupyterhub-singleuser, the program JupyterHub starts: add "
            "`jupyterhub==6.*` to requirements.txt" in message
        )
        assert "the image runs as root (uid 0)" in message
        assert "==> checking the image" in done.log
        tag = parse_imagestream(await stream(kube, namespace, "checked-nb")).tag("main")
        assert tag.ready and tag.digest == served.digest
        assert tag.build_commit == first.spec.commit
    finally:
        await unchecked.stop()
        await checked.stop()
        await runner.stop()


async def test_unknown_ref_and_restart(kube, namespace, infra, builder, tmp_path):
    git, _, base, _ = infra
    service, runner = builder
    git.create_repo("restart-nb", {"Dockerfile": f"FROM {base}\nRUN true\n"}, tag="v1")
    with pytest.raises(BuildRequestError) as info:
        await service.submit({"repo": git.url("restart-nb"), "ref": "nope"}, "erin")
    assert info.value.field == "ref"
    runner.paused = True  # the build is not running yet when the builder "restarts"
    status, build = await service.submit({"repo": git.url("restart-nb"), "ref": "v1"}, "erin")
    assert status == 202
    await service.stop()
    # a new builder process (no memory of the first) picks the build up and finishes it
    settings = local_settings(namespace, infra[1].host)
    second = build_service(kube, settings, log_reader=runner.read_log)
    second.start(0.2)
    try:
        runner.paused = False
        done = await finished(second, build.id)
        assert done.phase == "ready"
        assert len([j for j in runner.seen if build.id in j]) == 1
    finally:
        await second.stop()


async def test_two_replicas_never_build_the_same_commit_twice(
    kube, fake_kubelet, namespace, infra, tmp_path
):
    git, registry, base, _ = infra
    runner = JobRunner(kube, namespace, tmp_path, kubelet=fake_kubelet)
    settings = local_settings(namespace, registry.host)
    replicas = [build_service(kube, settings, log_reader=runner.read_log) for _ in range(2)]
    git.create_repo("twin-nb", {"Dockerfile": f"FROM {base}\nRUN true\n"}, tag="v1")
    body = {"repo": git.url("twin-nb"), "ref": "v1"}
    results = await asyncio.gather(*(r.submit(body, "a") for r in replicas for _ in range(2)))
    assert sorted(status for status, _ in results) == [200, 200, 200, 202]
    assert len({b.id for _, b in results}) == 1
    # another requester, on either replica: a record of their own, the same Job
    others = [await r.submit(body, "b") for r in replicas]
    assert [status for status, _ in others] == [200, 200]
    assert len({b.id for _, b in others}) == 1 and others[0][1].id != results[0][1].id
    assert others[0][1].spec.job_id == results[0][1].id
    for r in replicas:
        r.start(0.2)
    runner.start()
    try:
        for build_id in (results[0][1].id, others[0][1].id):
            done = await finished(replicas[1], build_id)
            assert done.phase == "ready"
        jobs = await client.BatchV1Api(kube).list_namespaced_job(namespace)
        assert len(jobs.items) == 1 and len(runner.seen) == 1
    finally:
        for r in replicas:
            await r.stop()
        await runner.stop()


def _image_options(page: str) -> dict[str, str]:
    """value -> phase (+ " disabled") of every image option of the spawn form."""
    found = {}
    for m in re.finditer(r'<option value="([^"]+)" data-phase="(\w+)"([^>]*)>', page):
        found[html.unescape(m.group(1))] = m.group(2) + (
            " disabled" if "disabled" in m.group(3) else ""
        )
    return found


async def test_built_image_is_offered_and_spawned_on_its_digest(
    kube, namespace, infra, builder, control_plane, fake_kubelet, tmp_path
):
    """The issue's Show item: a real Dockerfile build -> the spawner's form lists the image
    as ready, and a spawn runs the pod on exactly the registered digest reference."""
    git, registry, base, _ = infra
    service, _ = builder
    git.create_repo(
        "spawn-nb", {"Dockerfile": f"FROM {base}\nRUN echo spawned > /hello.txt\n"}, tag="v1"
    )
    status, build = await service.submit({"repo": git.url("spawn-nb"), "ref": "v1"}, "alice")
    assert status == 202
    done = await finished(service, build.id)
    assert done.phase == "ready", done.message + done.log
    digest = registry.manifest_digest(f"{namespace}/spawn-nb", "v1")
    registered = f"{registry.host}/{namespace}/spawn-nb@{digest}"
    assert done.digest == digest
    await service.backend.cleanup(done.spec)  # the build pod is gone; the image stays ready

    singleuser = FakeSingleUser()
    hub = Hub(
        tmp_path / "hub",
        control_plane.kubeconfig,
        namespace,
        singleuser.port,
        f"c.AICoESpawner.image_namespaces = [{namespace!r}]\n",
    )
    await hub.start()
    web = None
    try:
        user = "spawner-of-built"
        await hub.ensure_user(user)
        web = await hub.login(user)
        page = await web.spawn_page(user)
        assert _image_options(page).get("spawn-nb:v1") == "ready", _image_options(page)
        status, reply = await hub.api(
            "POST", f"/users/{user}/server", json={"image": "spawn-nb:v1"}
        )
        assert status in (201, 202), (status, reply, hub.log_tail(30))
        await hub.wait_ready(user)
        pods = await user_pods(kube, namespace, user)
        assert len(pods) == 1
        assert pods[0]["spec"]["containers"][0]["image"] == registered
        await hub.stop_server(user)
    finally:
        if web is not None:
            await web.close()
        await hub.stop()
        singleuser.stop()
