"""The builder on a shared hub (issue 10, part A), over real HTTP through a real JupyterHub,
against the real API server, with real buildah builds: who may write which ImageStream,
whose builds are whose, what a failed build publishes, the isolation of untrusted builds, and
bad input answered with a clear 4xx that changes nothing."""

from __future__ import annotations

import base64
import json
import secrets
import uuid

import pytest
import pytest_asyncio
from harness.builder import (
    BuilderEnv,
    BuilderStack,
    api_call,
    builder_hub,
    github_signature,
    local_settings,
    user_tokens,
)
from harness.git import GitServer
from harness.jobs import JobRunner
from harness.kube import create_imagestream, wait_for
from harness.registry import Registry, push_base_image
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aicoe_devcluster import delete_namespace
from aicoe_devcluster.controlplane import free_port
from aicoe_spawner.builder.__main__ import build_service
from aicoe_spawner.builder.destinations import parse_destinations
from aicoe_spawner.builder.naming import hashed_stream_name

pytestmark = pytest.mark.integration
PREFIX = "/services/image-builder/"
SECRET = b"trust-webhook-secret"
PUSH_AUTH = "push-auth-marker-7f3a"
ROBOT_PASSWORD = "team-a-robot-7c1e"  # the mapped destination's push credentials
IMAGE_API = ("image.openshift.io", "v1")
USERS = ("alice", "bob", "root", "github:octo")


@pytest_asyncio.fixture(scope="module")
async def env(kube, control_plane, fake_kubelet, tmp_path_factory):
    """One hub, builder (with a push secret), git server and registry for the module."""
    tmp_path = tmp_path_factory.mktemp("builder-trust")
    namespace = f"t-btrust-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube)
    await core.create_namespace({"metadata": {"name": namespace}})
    git = GitServer(tmp_path / "git")
    registry = Registry(tmp_path / "registry")
    base = push_base_image(registry, tmp_path)
    auth = {"auths": {registry.host: {"auth": base64.b64encode(b"u:" + PUSH_AUTH.encode())}}}
    auth["auths"][registry.host]["auth"] = auth["auths"][registry.host]["auth"].decode()
    await core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "push-creds"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json.dumps(auth)},
        },
    )
    # team-a's own registry (basic auth) and robot Secret: builder.destinations
    team = Registry(tmp_path / "team-registry", users={"robot": ROBOT_PASSWORD})
    robot = base64.b64encode(f"robot:{ROBOT_PASSWORD}".encode()).decode()
    await core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "team-a-push"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {
                ".dockerconfigjson": json.dumps({"auths": {team.host: {"auth": robot}}})
            },
        },
    )
    destinations = parse_destinations(
        [
            {
                "repositories": [f"127.0.0.1:{git.port}/team-a/*"],
                "registry": f"{team.host}/team-a",
                "pushSecret": "team-a-push",
                "pullSecret": "team-a-pull",
                "allow": ["registry-project"],
            }
        ]
    )
    token = secrets.token_hex(16)
    port = free_port()
    hub = builder_hub(
        control_plane,
        namespace,
        tmp_path,
        token,
        port,
        builders=("alice", "bob", "github:octo"),
        admins=("root",),
    )
    stack = BuilderStack(
        kube,
        namespace,
        registry.host,
        tmp_path,
        token=token,
        hub_url=hub.url,
        port=port,
        kubelet=fake_kubelet,
        webhook_secret=SECRET,
        max_per_user=10,
        max_total=40,
        push_secret="push-creds",
        destinations=destinations,
    )
    await hub.start()  # the builder listens already: the hub need not wait for it
    tokens = await user_tokens(hub, USERS)
    e = BuilderEnv(
        kube=kube,
        namespace=namespace,
        url=f"http://127.0.0.1:{port}{PREFIX}",
        tokens=tokens,
        git=git,
        base=base,
        service=stack.service,
        runner=stack.runner,
        registry=registry,
        tmp=tmp_path,
        team=team,
    )
    git.create_repo("plain", {"Dockerfile": f"FROM {base}\n"}, tag="v1")
    yield e
    await stack.stop()
    await hub.stop()
    registry.stop()
    team.stop()
    git.stop()
    await delete_namespace(kube, namespace)


async def call(e, method, path, user=None, json_body=None, data=None, headers=None):
    token = e.tokens[user] if user else None
    return await api_call(e.url, method, path, token, json_body, data, headers)


async def get_stream(e, name):
    try:
        return await client.CustomObjectsApi(e.kube).get_namespaced_custom_object(
            *IMAGE_API, e.namespace, "imagestreams", name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise


async def state(e):
    """What a request could change: build records, Jobs, and every ImageStream's version."""
    records = sorted(b.id for b in await e.service.store.list())
    jobs = await client.BatchV1Api(e.kube).list_namespaced_job(e.namespace)
    streams = await client.CustomObjectsApi(e.kube).list_namespaced_custom_object(
        *IMAGE_API, e.namespace, "imagestreams"
    )
    return (
        records,
        sorted(j.metadata.name for j in jobs.items),
        {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in streams["items"]},
    )


async def finished(e, build_id, user="alice", timeout=120):
    async def done():
        status, b = await call(e, "GET", f"api/builds/{build_id}", user)
        assert status == 200, b
        return b if b["phase"] in ("ready", "failed", "cancelled") else None

    return await wait_for(done, timeout=timeout, interval=0.2)


async def settle(e, timeout=180):
    """Wait until no build is pending or building (so nothing changes behind a test)."""

    async def idle():
        return not any(b.active for b in await e.service.store.list())

    await wait_for(idle, timeout=timeout, interval=0.2)


async def images(e, user="alice"):
    status, body = await call(e, "GET", "api/images", user)
    assert status == 200
    return {i["image"]: i for i in body["images"]}


# -- who may write what ------------------------------------------------------------------


async def test_a_build_never_writes_a_stream_it_does_not_own(env):
    e = env
    # the admin's, named like a name alice may ask for and like a repository's registry-project
    # (chosen names live under a prefix: "<requester>--<name>", "<repo>---<project>")
    await create_imagestream(e.kube, e.namespace, "alice--curated", {"v1": {}})
    await create_imagestream(e.kube, e.namespace, "own-b---curated", {"v1": {}})
    curated = await get_stream(e, "alice--curated")
    e.git.create_repo("own-a", {"Dockerfile": f"FROM {e.base}\n"}, tag="v1")
    e.git.create_repo(
        "own-b",
        {
            "Dockerfile": f"FROM {e.base}\n",
            ".aicoe-ci.yaml": "build:\n  registry-project: curated\n  custom-tag: v1\n",
        },
        tag="v2",
    )
    before = await state(e)
    body = {"repo": e.git.url("own-a"), "ref": "v1", "name": "curated"}
    status, reply = await call(e, "POST", "api/builds", "alice", body)
    assert (status, reply["field"]) == (409, "name"), reply
    assert "curated" in reply["message"] and "not managed by the image builder" in reply["message"]
    status, reply = await call(
        e, "POST", "api/builds", "bob", {"repo": e.git.url("own-b"), "ref": "v2"}
    )
    assert (status, reply["field"]) == (409, ".aicoe-ci.yaml build.registry-project"), reply
    assert await state(e) == before
    assert await get_stream(e, "alice--curated") == curated

    # another repository's stream: refused; the same repository's: any user may rebuild it
    status, first = await call(e, "POST", "api/builds", "alice", {**body, "name": "by-a"})
    assert status == 202 and first["image"] == f"{e.namespace}/alice--by-a:v1", first
    assert (await finished(e, first["id"]))["phase"] == "ready"
    e.git.create_repo("own-c", {"Dockerfile": f"FROM {e.base}\nRUN exit 1\n"}, tag="v1")
    before = await state(e)
    other = {"repo": e.git.url("own-c"), "ref": "v1", "name": "by-a"}
    status, reply = await call(e, "POST", "api/builds", "alice", other)
    assert status == 409 and "belongs to another repository" in reply["message"], reply
    assert await state(e) == before
    # bob's name lives under his prefix: never alice's stream
    status, again = await call(e, "POST", "api/builds", "bob", {**body, "name": "by-a"})
    assert status == 202 and again["image"] == f"{e.namespace}/bob--by-a:v1", again
    assert (await call(e, "DELETE", f"api/builds/{again['id']}", "bob"))[0] == 200
    await settle(e)


async def test_default_stream_names_never_collide(env):
    e = env
    for name in ("a-b/c", "a/b-c"):
        e.git.create_repo(name, {"Dockerfile": f"FROM {e.base}\n"}, tag="v1")
    builds = []
    for name in ("a-b/c", "a/b-c"):
        status, b = await call(
            e, "POST", "api/builds", "alice", {"repo": e.git.url(name), "ref": "v1"}
        )
        assert status == 202, b
        builds.append(b)
    first, second = (b["image"] for b in builds)
    assert first == f"{e.namespace}/a-b-c:v1"
    assert second == f"{e.namespace}/{hashed_stream_name(e.git.url('a/b-c'))}:v1"
    for b in builds:
        assert (await finished(e, b["id"]))["phase"] == "ready"
        stream = await get_stream(e, b["image"].split("/")[1].split(":")[0])
        assert stream["metadata"]["annotations"]["aicoe-spawner.io/source-repo"] == b["repo"]


async def test_failed_rebuild_keeps_the_tag_and_publishes_no_log(env):
    e = env
    e.git.create_repo("flaky", {"Dockerfile": f"FROM {e.base}\n"})
    body = {"repo": e.git.url("flaky"), "ref": "main"}
    status, good = await call(e, "POST", "api/builds", "alice", body)
    assert status == 202, good
    assert good["output_image"] == f"{e.registry.host}/{e.namespace}/flaky:main"
    good = await finished(e, good["id"])
    assert good["phase"] == "ready"
    assert e.registry.manifest_digest(f"{e.namespace}/flaky", "main") == good["digest"]

    e.git.update_repo(
        "flaky", {"Dockerfile": f"FROM {e.base}\nRUN echo secret-log-marker && exit 4\n"}
    )
    status, bad = await call(e, "POST", "api/builds", "alice", body)
    assert status == 202 and bad["commit"] != good["commit"]
    bad = await finished(e, bad["id"])
    assert bad["phase"] == "failed"
    served = (await images(e, "bob"))[f"{e.namespace}/flaky:main"]
    assert served["phase"] == "ready" and served["digest"] == good["digest"]
    assert served["build_commit"] == good["commit"]

    # a new tag that fails leaves nothing in the catalog (nor a stream); its requester reads
    # the log in the builder
    e.git.create_repo(
        "broken", {"Dockerfile": f"FROM {e.base}\nRUN echo secret-log-marker && exit 5\n"}, tag="v1"
    )
    status, b = await call(
        e, "POST", "api/builds", "alice", {"repo": e.git.url("broken"), "ref": "v1"}
    )
    assert (await finished(e, b["id"]))["phase"] == "failed"
    assert f"{e.namespace}/broken:v1" not in await images(e, "bob")
    assert await get_stream(e, "broken") is None
    assert "secret-log-marker" not in json.dumps(await images(e, "bob"))
    status, log = await call(e, "GET", f"api/builds/{b['id']}/logs", "alice")
    assert status == 200 and "secret-log-marker" in log
    for path in ("", "/logs", "/events"):
        assert (await call(e, "GET", f"api/builds/{b['id']}{path}", "bob"))[0] == 404
    assert (await call(e, "GET", f"api/builds/{b['id']}/logs", "root"))[0] == 200


async def test_builds_and_identities_are_per_requester(env):
    e = env
    e.git.create_repo("dedup", {"Dockerfile": f"FROM {e.base}\n"}, tag="v1")
    e.git.create_repo("nodockerfile", {"README.md": "no Dockerfile\n"}, tag="v1")
    e.git.create_repo("hooked", {"Dockerfile": f"FROM {e.base}\n"}, tag="v3")
    body = {"repo": e.git.url("dedup"), "ref": "v1"}
    e.runner.paused = True
    try:
        status, a = await call(e, "POST", "api/builds", "alice", body)
        assert status == 202
        assert (await call(e, "POST", "api/builds", "alice", body))[1]["id"] == a["id"]
        status, b = await call(e, "POST", "api/builds", "bob", body)
        # bob gets a build of his own, never alice's; it shares her Job (no second build)
        assert status == 200 and b["id"] != a["id"] and b["requester"] == "bob"
        jobs = (await state(e))[1]
        assert f"imgbuild-{a['id']}" in jobs and f"imgbuild-{b['id']}" not in jobs
        assert (await call(e, "GET", f"api/builds/{a['id']}", "bob"))[0] == 404
        listed = (await call(e, "GET", "api/builds", "bob"))[1]["builds"]
        assert a["id"] not in {x["id"] for x in listed}

        # a webhook sender and the hub user named like it are different requesters
        payload = json.dumps(
            {
                "action": "published",
                "release": {"tag_name": "v3"},
                "repository": {"clone_url": e.git.url("hooked")},
                "sender": {"login": "octo"},
            }
        ).encode()
        headers = {
            "X-GitHub-Event": "release",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": github_signature(payload, SECRET),
        }
        status, hooked = await call(e, "POST", "api/webhooks/github", data=payload, headers=headers)
        assert status == 202 and hooked["requester"] == "github:octo", hooked
        assert (await call(e, "GET", f"api/builds/{hooked['id']}", "github:octo"))[0] == 404
        listed = (await call(e, "GET", "api/builds", "github:octo"))[1]["builds"]
        assert hooked["id"] not in {x["id"] for x in listed}
        status, own = await call(
            e, "POST", "api/builds", "github:octo", {"repo": e.git.url("hooked"), "ref": "v3"}
        )
        assert status == 200 and own["requester"] == "user:github:octo"
        assert own["id"] != hooked["id"]

        # bob cancelling his (he follows alice's build) leaves hers running: their Job stays
        # (alice publishes the stream: her cancel would end it for bob too)
        status, cancelled = await call(e, "DELETE", f"api/builds/{b['id']}", "bob")
        assert status == 200 and cancelled["phase"] == "cancelled"
        assert f"imgbuild-{a['id']}" in (await state(e))[1]
    finally:
        e.runner.paused = False
    assert (await finished(e, a["id"], "alice"))["phase"] == "ready"
    assert (await call(e, "GET", f"api/builds/{b['id']}", "bob"))[1]["phase"] == "cancelled"

    # resubmitting someone else's failed build leaves their record alone
    nodf = {"repo": e.git.url("nodockerfile"), "ref": "v1"}
    status, failed = await call(e, "POST", "api/builds", "alice", nodf)
    assert (await finished(e, failed["id"]))["phase"] == "failed"
    status, retry = await call(e, "POST", "api/builds", "bob", nodf)
    assert status == 202 and retry["id"] != failed["id"]
    status, still = await call(e, "GET", f"api/builds/{failed['id']}", "alice")
    assert status == 200 and still["phase"] == "failed" and still["requester"] == "alice"
    await settle(e)


# -- isolation of untrusted builds --------------------------------------------------------


async def test_build_pod_keeps_credentials_away_from_user_content(env):
    e = env
    e.git.create_repo(
        "nosy",
        {
            "Dockerfile": f"FROM {e.base}\n"
            "RUN cat /var/run/secrets/push/.dockerconfigjson 2>&1 || echo no-creds-here\n"
        },
        tag="v1",
    )
    status, b = await call(
        e, "POST", "api/builds", "alice", {"repo": e.git.url("nosy"), "ref": "v1"}
    )
    assert status == 202
    job = await client.BatchV1Api(e.kube).read_namespaced_job(
        f"imgbuild-{b['id']}", e.namespace, _preload_content=False
    )
    pod = (await job.json())["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    [build], [push] = pod["initContainers"], pod["containers"]
    assert {m["name"] for m in build["volumeMounts"]} == {"workspace", "build-storage"}
    assert "push-secret" in {m["name"] for m in push["volumeMounts"]}
    for c in (build, push):
        assert c["resources"]["limits"]["ephemeral-storage"]
    assert all(v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v)
    done = await finished(e, b["id"])
    assert done["phase"] == "ready"  # pushed with the credentials, by the push step
    status, log = await call(e, "GET", f"api/builds/{b['id']}/logs", "alice")
    assert "no-creds-here" in log and PUSH_AUTH not in log
    ran = e.runner.environments[f"imgbuild-{b['id']}"]
    assert "REGISTRY_AUTH_FILE" not in ran["build"] and "REGISTRY_AUTH_FILE" in ran["push"]


async def test_a_mapped_repository_pushes_to_its_own_path_with_its_own_secret(env):
    """builder.destinations: team-a's repositories push to team-a's registry path (which asks
    for the robot's password) with team-a's Secret, mounted in the push step only."""
    e = env
    e.git.create_repo(
        "team-a/nb",
        {
            "Dockerfile": f"FROM {e.base}\n"
            "RUN cat /var/run/secrets/push/.dockerconfigjson 2>&1 || echo no-robot-here\n",
            ".aicoe-ci.yaml": "build:\n  registry-project: team-nb\n",
        },
        tag="v1",
    )
    status, b = await call(
        e, "POST", "api/builds", "alice", {"repo": e.git.url("team-a/nb"), "ref": "v1"}
    )
    assert status == 202, b
    assert b["output_image"] == f"{e.team.host}/team-a/team-nb:v1", b
    job = await client.BatchV1Api(e.kube).read_namespaced_job(
        f"imgbuild-{b['id']}", e.namespace, _preload_content=False
    )
    pod = (await job.json())["spec"]["template"]["spec"]
    [build], [push] = pod["initContainers"], pod["containers"]
    secrets_ = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert list(secrets_.values()) == ["team-a-push"]  # never the builder's push-creds
    assert set(secrets_) <= {m["name"] for m in push["volumeMounts"]}
    assert not set(secrets_) & {m["name"] for m in build["volumeMounts"]}
    assert not [v for v in build["env"] if "AUTH" in v["name"] or "secrets" in v.get("value", "")]
    assert pod["imagePullSecrets"] == [{"name": "team-a-pull"}]
    done = await finished(e, b["id"])
    assert done["phase"] == "ready", done["message"]
    # it reached team-a's registry, which refuses anonymous pushes
    assert e.team.manifest_digest("team-a/team-nb", "v1") == done["digest"]
    status, log = await call(e, "GET", f"api/builds/{b['id']}/logs", "alice")
    assert "no-robot-here" in log and ROBOT_PASSWORD not in log
    ran = e.runner.environments[f"imgbuild-{b['id']}"]
    assert "REGISTRY_AUTH_FILE" not in ran["build"] and "REGISTRY_AUTH_FILE" in ran["push"]
    stream = await get_stream(e, done["image"].split("/")[1].split(":")[0])
    [tag] = [t for t in stream["status"]["tags"] if t["tag"] == "v1"]
    pushed = f"{e.team.host}/team-a/team-nb@{done['digest']}"
    assert tag["items"][0]["dockerImageReference"] == pushed


async def test_registry_keys_a_repository_may_not_use_are_refused_and_change_nothing(env):
    e = env
    cases = [
        # unmapped: the builder's registry only
        ("steer", "build:\n  registry-org: someone-else\n", ".aicoe-ci.yaml build.registry-org"),
        ("steer-host", "build:\n  registry: quay.io\n", ".aicoe-ci.yaml build.registry"),
        # mapped, with a key its entry does not allow
        ("team-a/steer", "build:\n  registry-org: team-a\n", ".aicoe-ci.yaml build.registry-org"),
    ]
    for name, ci, _ in cases:
        e.git.create_repo(name, {"Dockerfile": f"FROM {e.base}\n", ".aicoe-ci.yaml": ci}, tag="v1")
    await settle(e)
    before = await state(e)
    for name, _, key in cases:
        repo = e.git.url(name)
        status, reply = await call(e, "POST", "api/builds", "alice", {"repo": repo, "ref": "v1"})
        assert (status, reply["field"]) == (403, key), reply
        assert repo in reply["message"], reply
    assert await state(e) == before  # no ImageBuild, no Job, no stream


async def test_symlinks_out_of_the_checkout_fail_the_build(env):
    e = env
    e.git.create_repo(
        "links",
        {"Dockerfile": f"FROM {e.base}\n", "sub/Dockerfile": f"FROM {e.base}\n"},
        tag="v1",
        symlinks={"ctx": "/", "evil/Dockerfile": "/etc/hostname", "inner": "sub"},
    )
    repo = e.git.url("links")
    cases = [
        ({"context_dir": "ctx", "name": "links-ctx"}, "context_dir 'ctx' is not a directory"),
        ({"dockerfile": "evil/Dockerfile", "name": "links-df"}, "Dockerfile 'evil/Dockerfile'"),
    ]
    for options, message in cases:
        status, b = await call(
            e, "POST", "api/builds", "bob", {"repo": repo, "ref": "v1", **options}
        )
        assert status == 202, b
        assert (await finished(e, b["id"], "bob"))["phase"] == "failed"
        log = (await call(e, "GET", f"api/builds/{b['id']}/logs", "bob"))[1]
        assert message in log and "==> building" not in log
    # a symlink that stays inside the checkout is fine
    status, b = await call(
        e,
        "POST",
        "api/builds",
        "bob",
        {
            "repo": repo,
            "ref": "v1",
            "context_dir": "inner",
            "name": "links-in",
            "strategy": "dockerfile",
        },
    )
    done = await finished(e, b["id"], "bob")
    assert done["phase"] == "ready", done["message"]


async def test_base_image_label_never_reaches_a_shell_or_sed(env):
    e = env
    marker = e.tmp / "sed-executed"
    label = f"image:///usr/libexec/s2i#;e touch {marker};#"
    evil = push_base_image(e.registry, e.tmp, scripts_url=label, name="base/evil:1")
    e.git.create_repo(
        "s2i-evil",
        {
            ".aicoe-ci.yaml": f"build:\n  build-strategy: Source\n  base-image: {evil}\n",
            "hello.txt": "hi\n",
        },
        tag="v1",
    )
    status, b = await call(
        e, "POST", "api/builds", "alice", {"repo": e.git.url("s2i-evil"), "ref": "v1"}
    )
    assert status == 202, b
    done = await finished(e, b["id"])
    log = (await call(e, "GET", f"api/builds/{b['id']}/logs", "alice"))[1]
    assert not marker.exists()
    assert "unsafe scripts-url label" in log
    assert done["phase"] == "ready", log  # built with the default scripts directory


async def test_builds_may_run_in_their_own_namespace(env, kube, fake_kubelet, namespace, tmp_path):
    """Records and ImageStreams in the builder's namespace; Jobs and pods in the build
    namespace, where the job runner and the fake kubelet run them."""
    e = env
    builds_ns = f"{namespace}-builds"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": builds_ns}})
    runner = JobRunner(kube, builds_ns, tmp_path, kubelet=fake_kubelet)
    runner.start()
    settings = local_settings(namespace, e.registry.host, build_namespace=builds_ns)
    service = build_service(kube, settings, log_reader=runner.read_log)
    service.start(0.2)
    batch = client.BatchV1Api(kube)
    try:
        e.git.create_repo("elsewhere", {"Dockerfile": f"FROM {e.base}\nRUN echo away\n"}, tag="v1")
        status, build = await service.submit({"repo": e.git.url("elsewhere"), "ref": "v1"}, "al")
        assert status == 202
        jobs = [j.metadata.name for j in (await batch.list_namespaced_job(builds_ns)).items]
        assert jobs == [f"imgbuild-{build.id}"]
        assert (await batch.list_namespaced_job(namespace)).items == []

        async def done():
            b = await service.get(build.id)
            return b if b.phase in ("ready", "failed") else None

        finished_build = await wait_for(done, timeout=120, interval=0.2)
        assert finished_build.phase == "ready" and "away" in finished_build.log
        stream = await client.CustomObjectsApi(kube).get_namespaced_custom_object(
            *IMAGE_API, namespace, "imagestreams", "elsewhere"
        )
        assert stream["status"]["tags"][0]["items"][0]["image"] == finished_build.digest

        # (without the reconcile loop: a cancel racing a reconcile is the store's concern)
        await service.stop()
        runner.paused = True
        e.git.create_repo("elsewhere-2", {"Dockerfile": f"FROM {e.base}\n"}, tag="v1")
        _, second = await service.submit({"repo": e.git.url("elsewhere-2"), "ref": "v1"}, "al")
        await service.cancel(second)
        names = [j.metadata.name for j in (await batch.list_namespaced_job(builds_ns)).items]
        assert names == [f"imgbuild-{build.id}"]
    finally:
        await service.stop()
        await runner.stop()
        await delete_namespace(kube, builds_ns)


# -- real .aicoe-ci.yaml files ----------------------------------------------------------


async def test_overlays_build_one_image_each_and_containerfile_is_a_strategy(env):
    e = env
    e.git.create_repo(
        "overlaid",
        {
            ".aicoe-ci.yaml": "build:\n  build-stratergy: Containerfile\n  custom-tag: latest\n"
            "overlays:\n"
            "  - name: cpu\n    build:\n      registry-project: overlaid-cpu-image\n"
            "  - name: gpu\n    build:\n      dockerfile-path: gpu/Containerfile\n",
            "Containerfile": f"FROM {e.base}\nRUN echo cpu-overlay\n",
            "gpu/Containerfile": f"FROM {e.base}\nRUN echo gpu-overlay\n",
        },
        tag="v5",
    )
    status, reply = await call(
        e, "POST", "api/builds", "alice", {"repo": e.git.url("overlaid"), "ref": "v5"}
    )
    assert status == 202, reply
    builds = reply["builds"]
    assert [b["image"] for b in builds] == [
        f"{e.namespace}/overlaid---overlaid-cpu-image:v5",
        f"{e.namespace}/overlaid-gpu:v5",
    ]
    assert reply["id"] == builds[0]["id"]
    for b, line in zip(builds, ("cpu-overlay", "gpu-overlay"), strict=True):
        done = await finished(e, b["id"])
        assert done["phase"] == "ready", done["message"]
        log = (await call(e, "GET", f"api/builds/{b['id']}/logs", "alice"))[1]
        assert line in log
    shown = await images(e)
    for stream in ("overlaid---overlaid-cpu-image", "overlaid-gpu"):
        # custom-tag: a second tag of the same image
        release, custom = (shown[f"{e.namespace}/{stream}:{t}"] for t in ("v5", "latest"))
        assert release["phase"] == custom["phase"] == "ready"
        assert release["digest"] == custom["digest"]
        assert e.registry.manifest_digest(f"{e.namespace}/{stream}", "latest") == custom["digest"]
    # asking again is the same builds
    status, again = await call(
        e, "POST", "api/builds", "alice", {"repo": e.git.url("overlaid"), "ref": "v5"}
    )
    assert status == 200 and [b["id"] for b in again["builds"]] == [b["id"] for b in builds]


async def test_a_tag_only_in_status_is_a_version(env):
    e = env
    digest = "sha256:" + "5" * 64
    custom = client.CustomObjectsApi(e.kube)
    await custom.create_namespaced_custom_object(
        *IMAGE_API,
        e.namespace,
        "imagestreams",
        {
            "apiVersion": "image.openshift.io/v1",
            "kind": "ImageStream",
            "metadata": {"name": "bc-pushed", "labels": {"opendatahub.io/notebook-image": "true"}},
            "spec": {"lookupPolicy": {"local": True}},
        },
    )
    await custom.patch_namespaced_custom_object_status(
        *IMAGE_API,
        e.namespace,
        "imagestreams",
        "bc-pushed",
        {
            "status": {
                "tags": [
                    {
                        "tag": "latest",
                        "items": [
                            {
                                "dockerImageReference": f"registry.local/x/bc@{digest}",
                                "image": digest,
                            }
                        ],
                    }
                ]
            }
        },
        _content_type="application/merge-patch+json",
    )

    async def offered():
        return (await images(e)).get(f"{e.namespace}/bc-pushed:latest")

    shown = await wait_for(offered, timeout=10)
    assert shown["phase"] == "ready" and shown["digest"] == digest


# -- bad input: a clear 4xx, nothing changed --------------------------------------------

DEEP_JSON = b"[" * 30_000 + b"]" * 30_000  # under the 64 KiB a build request may have


def ci_repo(text: str) -> dict:
    return {"files": {"Dockerfile": "FROM scratch\n", ".aicoe-ci.yaml": text}}


# (id, kind, input, status, field) -- kind: api (JSON body), raw (bytes body), repo (a repo
# with these files, built at v1), events (Last-Event-ID), hook (signed payload), hookraw
BAD = [
    ("repo-loopback", "api", {"repo": "http://127.0.0.2/x.git", "ref": "v1"}, 400, "repo"),
    ("repo-metadata-ip", "api", {"repo": "https://169.254.169.254/x", "ref": "v1"}, 400, "repo"),
    ("repo-file", "api", {"repo": "file:///etc/passwd", "ref": "v1"}, 400, "repo"),
    ("repo-ext", "api", {"repo": "ext::sh -c id", "ref": "v1"}, 400, "repo"),
    ("repo-ssh", "api", {"repo": "ssh://git@127.0.0.1/x", "ref": "v1"}, 400, "repo"),
    ("repo-credentials", "api", {"repo": "http://u:p@127.0.0.1/x", "ref": "v1"}, 400, "repo"),
    ("repo-not-string", "api", {"repo": 7, "ref": "v1"}, 400, "repo"),
    ("repo-query", "api", {"repo": "PLAIN?x=1", "ref": "v1"}, 400, "repo"),
    ("ref-option", "api", {"repo": "PLAIN", "ref": "--upload-pack=touch /tmp/x"}, 400, "ref"),
    ("ref-dotdot", "api", {"repo": "PLAIN", "ref": "a..b"}, 400, "ref"),
    ("ref-space", "api", {"repo": "PLAIN", "ref": "v 1"}, 400, "ref"),
    ("ref-long", "api", {"repo": "PLAIN", "ref": "v" * 300}, 400, "ref"),
    ("ref-missing", "api", {"repo": "PLAIN"}, 400, "ref"),
    ("ref-unknown", "api", {"repo": "PLAIN", "ref": "no-such-tag"}, 422, "ref"),
    ("ref-pull-request", "api", {"repo": "PLAIN", "ref": "refs/pull/1/head"}, 422, "ref"),
    (
        "ref-merge-request",
        "api",
        {"repo": "PLAIN", "ref": "refs/merge-requests/1/head"},
        422,
        "ref",
    ),
    ("ref-unadvertised-commit", "api", {"repo": "PLAIN", "ref": "0" * 40}, 422, "ref"),
    ("strategy", "api", {"repo": "PLAIN", "ref": "v1", "strategy": "magic"}, 400, "strategy"),
    (
        "dockerfile-up",
        "api",
        {"repo": "PLAIN", "ref": "v1", "dockerfile": "../x"},
        400,
        "dockerfile",
    ),
    (
        "dockerfile-abs",
        "api",
        {"repo": "PLAIN", "ref": "v1", "dockerfile": "/etc/passwd"},
        400,
        "dockerfile",
    ),
    (
        "context-up",
        "api",
        {"repo": "PLAIN", "ref": "v1", "context_dir": "a/../../b"},
        400,
        "context_dir",
    ),
    (
        "unknown-field",
        "api",
        {"repo": "PLAIN", "ref": "v1", "registry": "evil.io"},
        400,
        "registry",
    ),
    ("name-not-dns", "api", {"repo": "PLAIN", "ref": "v1", "name": "Bad_Name"}, 400, "name"),
    (
        "base-image",
        "api",
        {"repo": "PLAIN", "ref": "v1", "base_image": "NO SPACES"},
        400,
        "base_image",
    ),
    (
        "display-name-ctrl",
        "api",
        {"repo": "PLAIN", "ref": "v1", "display_name": "a\x00b"},
        400,
        "display_name",
    ),
    ("body-list", "api", [], 400, "body"),
    ("body-not-json", "raw", b"{not json", 400, "body"),
    ("body-deep-json", "raw", DEEP_JSON, 400, "body"),
    ("body-over-64k", "raw", b"{" + b" " * (64 << 10), 413, "body"),
    ("ci-over-64k", "repo", ci_repo("#" * (64 << 10) + "\n"), 422, ".aicoe-ci.yaml"),
    ("ci-a-directory", "repo", {"files": {".aicoe-ci.yaml/x": "x"}}, 422, ".aicoe-ci.yaml"),
    ("ci-deep", "repo", ci_repo("a: " + "[" * 3000 + "]" * 3000 + "\n"), 400, ".aicoe-ci.yaml"),
    (
        "ci-huge-int",
        "repo",
        ci_repo("build:\n  custom-tag: " + "9" * 5000 + "\n"),
        400,
        ".aicoe-ci.yaml",
    ),
    (
        "ci-strategy",
        "repo",
        ci_repo("build:\n  build-strategy: Kaniko\n"),
        400,
        ".aicoe-ci.yaml build.build-strategy",
    ),
    (
        "ci-dockerfile-up",
        "repo",
        ci_repo("build:\n  dockerfile-path: ../../etc/passwd\n"),
        400,
        ".aicoe-ci.yaml build.dockerfile-path",
    ),
    (
        "ci-custom-tag",
        "repo",
        ci_repo("build: {custom-tag: 'bad tag'}\n"),
        400,
        ".aicoe-ci.yaml build.custom-tag",
    ),
    ("ci-not-yaml", "repo", ci_repo("{unclosed"), 400, ".aicoe-ci.yaml"),
    ("ci-overlays-dict", "repo", ci_repo("overlays: {a: 1}\n"), 400, ".aicoe-ci.yaml overlays"),
    ("ci-build-list", "repo", ci_repo("build: [1, 2]\n"), 400, ".aicoe-ci.yaml build"),
    ("last-event-id-word", "events", "abc", 400, "Last-Event-ID"),
    ("last-event-id-superscript", "events", "²:ready", 400, "Last-Event-ID"),
    (
        "hook-repository-string",
        "hook",
        {"repository": "x", "release": {"tag_name": "v1"}},
        400,
        "repository",
    ),
    (
        "hook-release-list",
        "hook",
        {"repository": {"clone_url": "PLAIN"}, "release": [1]},
        400,
        "release",
    ),
    (
        "hook-sender-number",
        "hook",
        {"repository": {"clone_url": "PLAIN"}, "release": {"tag_name": "v1"}, "sender": 5},
        400,
        "sender",
    ),
    (
        "hook-tag-not-string",
        "hook",
        {
            "repository": {"clone_url": "PLAIN"},
            "release": {"tag_name": 1},
            "sender": {"login": "o"},
        },
        400,
        "release.tag_name",
    ),
    (
        "hook-clone-url-file",
        "hook",
        {
            "repository": {"clone_url": "file:///etc"},
            "release": {"tag_name": "v1"},
            "sender": {"login": "o"},
        },
        400,
        "repo",
    ),
    (
        "hook-sender-login",
        "hook",
        {
            "repository": {"clone_url": "PLAIN"},
            "release": {"tag_name": "v1"},
            "sender": {"login": "a b"},
        },
        400,
        "sender.login",
    ),
    ("hook-deep-json", "hookraw", DEEP_JSON, 400, "body"),
    ("hook-array", "hookraw", b"[1, 2]", 400, "body"),
    ("hook-no-event-header", "hookraw-noevent", b"{}", 400, None),
    ("hook-signature-not-hex", "hookraw-badsig", b"{}", 401, None),
]


@pytest.mark.parametrize(
    ("kind", "value", "code", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
async def test_bad_input_is_a_clear_4xx_and_changes_nothing(env, kind, value, code, field):
    e = env
    plain = e.git.url("plain")

    def fill(v):
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return v.replace("PLAIN", plain) if isinstance(v, str) else v

    if kind == "repo":
        name = f"bad-ci-{uuid.uuid4().hex[:6]}"
        e.git.create_repo(name, value["files"], tag="v1")
    elif kind == "events":
        # a finished build of alice's to stream
        status, b = await call(e, "POST", "api/builds", "alice", {"repo": plain, "ref": "v1"})
        assert status in (200, 202)
        await finished(e, b["id"])
    await settle(e)
    before = await state(e)
    if kind == "api":
        status, reply = await call(e, "POST", "api/builds", "alice", fill(value))
    elif kind == "raw":
        status, reply = await call(e, "POST", "api/builds", "alice", data=value)
    elif kind == "repo":
        status, reply = await call(
            e, "POST", "api/builds", "alice", {"repo": e.git.url(name), "ref": "v1"}
        )
    elif kind == "events":
        status, reply = await call(
            e, "GET", f"api/builds/{b['id']}/events", "alice", headers={"Last-Event-ID": value}
        )
    else:
        payload = (
            json.dumps({"action": "published", **fill(value)}).encode() if kind == "hook" else value
        )
        headers = {
            "X-GitHub-Event": "release",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": github_signature(payload, SECRET),
        }
        if kind == "hookraw-noevent":
            del headers["X-GitHub-Event"]
        if kind == "hookraw-badsig":
            headers["X-Hub-Signature-256"] = "sha256=zz"
        status, reply = await call(e, "POST", "api/webhooks/github", data=payload, headers=headers)
    assert status == code, reply
    assert isinstance(reply, dict) and reply["message"], reply
    if field is not None:
        assert reply["field"] == field, reply
        assert reply["message"].startswith(f"{field}: ") or field == "body", reply
    assert await state(e) == before


def test_bad_input_table_is_big_enough():
    assert len(BAD) >= 30
