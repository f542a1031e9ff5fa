"""Pure policy of the trustworthy builder (issue 10, part A): stream ownership and naming,
requester identities, generic failure reasons, tags that keep serving through a failed
rebuild, the build pod's isolation, overlays / Containerfile / custom-tag, and the parsers
that answer bad input with a 4xx instead of raising."""

from __future__ import annotations

import pytest

from aicoe_spawner.builder.app import parse_last_event_id, webhook_request
from aicoe_spawner.builder.backends.kubernetes_job import (
    BUILD_SCRIPT,
    KEEP_SCRIPT,
    PUSH_SCRIPT,
    JobConfig,
    job_manifest,
    job_state,
)
from aicoe_spawner.builder.ci_config import parse_ci_configs
from aicoe_spawner.builder.config import settings_from_env
from aicoe_spawner.builder.identity import github_identity, hub_identity
from aicoe_spawner.builder.imagestream import (
    new_stream,
    ownership,
    public_reason,
    with_status_tag,
    with_tag,
)
from aicoe_spawner.builder.naming import hashed_stream_name, stream_name_for
from aicoe_spawner.builder.requests import (
    BuildDefaults,
    BuildRequestError,
    RepoPolicy,
    parse_build_request,
    resolve_spec,
)
from aicoe_spawner.catalog import BUILD_PHASE_ANNOTATION, TagPhase, parse_imagestream

SHA = "b" * 40
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
POLICY = RepoPolicy(allowed_hosts=("github.com",))
DNS = {"github.com": ["140.82.112.3"]}


def spec(repo="https://github.com/org/nb", ref="v1", ci=None, user="alice", **body):
    request = parse_build_request({"repo": repo, "ref": ref, **body}, POLICY, DNS.get)
    defaults = BuildDefaults(namespace="ns", registry="reg.local:5000")
    return resolve_spec(request, SHA, "tag", ci, defaults, user)


# -- who may write what ------------------------------------------------------------------


def test_default_names_of_different_repos_differ_with_the_hash():
    a, b = "https://github.com/a-b/c", "https://github.com/a/b-c"
    assert stream_name_for(a) == stream_name_for(b)  # the short names collide ...
    assert hashed_stream_name(a) != hashed_stream_name(b)  # ... the hashed ones never do
    assert hashed_stream_name(a).startswith("a-b-c-") and len(hashed_stream_name(a)) <= 63
    long = "https://github.com/" + "x" * 200 + "/y"
    assert len(hashed_stream_name(long)) <= 63


def test_ownership():
    s = spec()
    mine = new_stream(s)
    assert ownership(None, s.repo) is None
    assert ownership(mine, s.repo) is None
    assert "another repository" in ownership(mine, "https://github.com/other/nb")
    curated = {"metadata": {"name": "nb", "labels": {"opendatahub.io/notebook-image": "true"}}}
    assert "not managed by the image builder" in ownership(curated, s.repo)
    # an admin stream that merely links the repo is still not the builder's
    curated["metadata"]["annotations"] = {"opendatahub.io/notebook-image-url": s.repo}
    assert ownership(curated, s.repo) is not None


def test_name_field_names_what_chose_the_stream():
    assert spec().name_field == "repo"
    assert spec(name="mine").name_field == "name"
    ci = parse_ci_configs("build:\n  registry-project: curated\n")[0]
    assert spec(ci=ci).name_field == ".aicoe-ci.yaml build.registry-project"


def test_failed_build_publishes_a_generic_reason():
    s = spec()
    secret_log = "build failed (exit code 3)\nAWS_SECRET=hunter2"
    stream = with_tag(new_stream(s), s, "failed", secret_log)
    tag = parse_imagestream(stream).tag("v1")
    assert tag.phase is TagPhase.FAILED and "hunter2" not in tag.message
    assert tag.message == public_reason(secret_log)
    assert public_reason("build timed out\nlog").startswith("build timed out")


def test_failed_rebuild_keeps_the_tag_in_service():
    first, second = spec(), spec(user="bob")
    served = with_status_tag(with_tag(new_stream(first), first, "ready"), first, D1)
    for phase in ("pending", "building", "failed", "cancelled"):
        after = parse_imagestream(with_tag(served, second, phase, "boom")).tag("v1")
        assert after.phase is TagPhase.READY and after.digest == D1, phase
        assert after.build_commit == SHA
    # a successful rebuild replaces it
    rebuilt = with_status_tag(with_tag(served, second, "ready"), second, D2)
    assert parse_imagestream(rebuilt).tag("v1").digest == D2


def test_builds_are_per_requester():
    alice, bob = spec(user="alice"), spec(user="bob")
    assert alice.id != bob.id and alice.id == spec(user="alice").id
    # the same content: one Job can serve both
    assert alice.content_id == bob.content_id and alice.job_id == alice.id


def test_identities_never_collide():
    assert hub_identity("user", "alice") == "alice"
    assert hub_identity("service", "alice") == "service:alice"
    assert github_identity("octo") == "github:octo"
    # a hub user named like a webhook sender is someone else
    assert hub_identity("user", "github:octo") != github_identity("octo")
    assert hub_identity("user", "service:alice") != hub_identity("service", "alice")
    for bad in (None, 7, "", "a b", "x" * 40, {"login": "x"}):
        with pytest.raises(BuildRequestError) as info:
            github_identity(bad)
        assert info.value.field == "sender.login"


def test_push_location_is_the_builders_alone():
    s = spec(ci=parse_ci_configs("build:\n  registry-project: nb\n")[0])
    assert s.output_image == "reg.local:5000/ns/org-nb---nb:v1"
    for key in ("registry: quay.io", "registry-org: admin"):
        with pytest.raises(BuildRequestError) as refused:
            spec(ci=parse_ci_configs(f"build:\n  {key}\n")[0])
        assert refused.value.status == 403
        assert refused.value.field == f".aicoe-ci.yaml build.{key.split(':')[0]}"


# -- isolation ------------------------------------------------------------------------


def test_build_pod_isolation():
    s = spec(repo="https://github.com/org/nb")
    job = job_manifest(s, JobConfig(push_secret="push-creds", namespace="builds"))
    assert job["metadata"]["namespace"] == "builds"
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [build], [push] = pod["initContainers"], pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # the credentials reach only the push step, which runs no user content
    assert volumes["push-secret"]["secret"]["secretName"] == "push-creds"
    assert "push-secret" not in {m["name"] for m in build["volumeMounts"]}
    assert "REGISTRY_AUTH_FILE" not in {e["name"] for e in build["env"]}
    assert "push-secret" in {m["name"] for m in push["volumeMounts"]}
    assert "bud" in build["command"][2] and "bud" not in push["command"][2]
    for c in (build, push):
        assert c["resources"]["limits"]["ephemeral-storage"] == "20Gi"
        assert c["securityContext"]["privileged"] is False
    for name in ("workspace", "build-storage", "push-storage"):
        assert volumes[name]["emptyDir"]["sizeLimit"] == "20Gi"


def test_no_user_text_reaches_a_shell_or_sed_program():
    assert "sed" not in BUILD_SCRIPT.split() and "eval" not in BUILD_SCRIPT.split()
    assert "realpath" in BUILD_SCRIPT  # symlinks resolved, required inside the checkout
    job = job_manifest(spec(ref="v1"), JobConfig())
    for c in job["spec"]["template"]["spec"]["initContainers"] + [
        job["spec"]["template"]["spec"]["containers"][0]
    ]:
        assert c["command"][2] in (BUILD_SCRIPT, PUSH_SCRIPT)  # constant programs


# -- .aicoe-ci.yaml ----------------------------------------------------------------------


def test_overlays_give_one_image_each():
    configs = parse_ci_configs(
        "build:\n  build-stratergy: Source\n  base-image: quay.io/org/base:1\n"
        "overlays:\n"
        "  - name: ubi9\n    build:\n      registry-project: nb-ubi9\n"
        "  - name: cuda\n    build:\n      build-strategy: Containerfile\n"
        "      dockerfile-path: cuda/Containerfile\n"
    )
    assert [c.overlay for c in configs] == ["ubi9", "cuda"]
    specs = [spec(ci=c) for c in configs]
    assert [s.stream for s in specs] == ["org-nb---nb-ubi9", "org-nb-cuda"]
    assert specs[0].strategy == "source" and specs[0].base_image == "quay.io/org/base:1"
    assert specs[1].strategy == "dockerfile" and specs[1].dockerfile == "cuda/Containerfile"
    assert specs[0].name_field == ".aicoe-ci.yaml overlays[0].build.registry-project"
    assert len({s.id for s in specs}) == 2


def test_containerfile_strategy_builds_the_containerfile():
    [ci] = parse_ci_configs("build:\n  build-strategy: Containerfile\n")
    s = spec(ci=ci)
    assert (s.strategy, s.dockerfile) == ("dockerfile", "Containerfile")


def test_custom_tag_registers_both_tags_at_one_digest():
    [ci] = parse_ci_configs("build:\n  custom-tag: latest\n")
    s = spec(ci=ci)
    assert (s.tag, s.extra_tags) == ("v1", ("latest",))
    stream = with_status_tag(with_tag(new_stream(s), s, "ready"), s, D1)
    image = parse_imagestream(stream)
    assert image.tag("v1").digest == image.tag("latest").digest == D1
    env = {
        e["name"]: e["value"]
        for e in job_manifest(s, JobConfig())["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["EXTRA_IMAGES"] == "reg.local:5000/ns/org-nb:latest"


def test_status_only_tag_is_a_version():
    stream = {
        "metadata": {"name": "bc", "namespace": "ns"},
        "spec": {"tags": []},
        "status": {"tags": [{"tag": "latest", "items": [{"dockerImageReference": f"r/x@{D1}"}]}]},
    }
    [tag] = parse_imagestream(stream).tags
    assert tag.name == "latest" and tag.phase is TagPhase.READY and tag.digest == D1


# -- bad input is a field-named error, never an exception ---------------------------------

BAD_CI = [
    ("deep", "a: " + "[" * 5000 + "]" * 5000 + "\n", ".aicoe-ci.yaml"),
    ("huge-int", "build:\n  custom-tag: " + "9" * 5000 + "\n", ".aicoe-ci.yaml"),
    ("overlays-not-list", "overlays: {a: 1}\n", ".aicoe-ci.yaml overlays"),
    ("overlay-not-mapping", "overlays: [x]\n", ".aicoe-ci.yaml overlays[0]"),
    ("overlay-bad-name", "overlays: [{name: 'A B'}]\n", ".aicoe-ci.yaml overlays[0].name"),
    ("overlay-twice", "overlays: [{name: a}, {name: a}]\n", ".aicoe-ci.yaml overlays[1].name"),
    (
        "overlay-build-list",
        "overlays: [{name: a, build: [1]}]\n",
        ".aicoe-ci.yaml overlays[0].build",
    ),
    ("strategy-kaniko", "build: {build-strategy: Kaniko}\n", ".aicoe-ci.yaml build.build-strategy"),
]


@pytest.mark.parametrize(("text", "field"), [b[1:] for b in BAD_CI], ids=[b[0] for b in BAD_CI])
def test_bad_ci_config_names_the_field(text, field):
    with pytest.raises(BuildRequestError) as info:
        parse_ci_configs(text)
    assert info.value.field == field and info.value.status == 400


@pytest.mark.parametrize(
    "payload",
    [
        {"action": "published", "repository": "x", "release": {"tag_name": "v1"}},
        {"action": "published", "repository": {"clone_url": "u"}, "release": [1]},
        {"action": "published", "repository": {}, "release": {}, "sender": 3},
        {"action": "published", "repository": {"clone_url": 1}, "release": {"tag_name": "v"}},
        {"action": "published", "repository": {"clone_url": "u"}, "release": {"tag_name": 1}},
        [1, 2],
    ],
)
def test_bad_webhook_payloads_name_the_field(payload):
    with pytest.raises(BuildRequestError):
        webhook_request("release", payload)


@pytest.mark.parametrize("header", ["abc", "²:ready", "1", "1:evil", "-1:ready", "9" * 20 + ":"])
def test_bad_last_event_ids(header):
    with pytest.raises(BuildRequestError) as info:
        parse_last_event_id(header)
    assert info.value.field == "Last-Event-ID"


def test_good_last_event_ids():
    assert parse_last_event_id("") == (0, "")
    assert parse_last_event_id("12:building") == (12, "building")
    assert parse_last_event_id("3:") == (3, "")


def test_build_storage_size_sets_limits_and_a_request_within_them():
    small = job_manifest(spec(), JobConfig(storage_size="512Mi"))["spec"]["template"]["spec"]
    for c in small["initContainers"] + small["containers"]:
        assert c["resources"]["requests"]["ephemeral-storage"] == "512Mi"
        assert c["resources"]["limits"]["ephemeral-storage"] == "512Mi"
    assert {v["emptyDir"]["sizeLimit"] for v in small["volumes"]} == {"512Mi"}
    with pytest.raises(SystemExit):
        settings_from_env({"AICOE_BUILDER_BUILD_STORAGE": "lots"})


def test_the_node_image_store_is_writable_by_the_keep_step_only():
    """build_node_image_store: a hostPath the build step (repository content) mounts
    read-only and the keep step (beside the push step, which has no such mount) writable,
    for environment builds whose images go to the builder's own registry; never for a
    project's own destination (its push Secret): its environment must not lie where another
    project's build could read it."""
    from dataclasses import replace

    env_spec = replace(spec(), strategy="environment", layer_cache="reg.local:5000/ns/nb-cache")
    store = "/var/lib/aicoe-builder/images"
    pod = job_manifest(env_spec, JobConfig(node_image_store=store))["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "node-images"]
    assert volume["hostPath"] == {"path": store, "type": "DirectoryOrCreate"}
    (build,), (push, keep) = pod["initContainers"], pod["containers"]
    assert keep["name"] == "keep" and keep["command"][2] == KEEP_SCRIPT
    build_mount = {m["name"]: m for m in build["volumeMounts"]}["node-images"]
    keep_mount = {m["name"]: m for m in keep["volumeMounts"]}["node-images"]
    assert build_mount["readOnly"] is True and not keep_mount.get("readOnly")
    assert "node-images" not in {m["name"] for m in push["volumeMounts"]}
    assert "push-secret" not in {m["name"] for m in keep["volumeMounts"]}
    for c in (build, keep):
        assert {"name": "NODE_IMAGES", "value": build_mount["mountPath"]} in c["env"]

    def has_store(s, config) -> bool:
        pod = job_manifest(s, config)["spec"]["template"]["spec"]
        keeps = [c["name"] for c in pod["containers"]] == ["push", "keep"]
        assert keeps == any("hostPath" in v for v in pod["volumes"])
        return keeps

    assert not has_store(env_spec, JobConfig())  # off by default
    assert not has_store(spec(), JobConfig(node_image_store=store))  # no environment image
    mapped = replace(env_spec, push_secret="team-a-push")
    assert not has_store(mapped, JobConfig(node_image_store=store))
    assert (
        settings_from_env({"AICOE_BUILDER_BUILD_NODE_IMAGE_STORE": store}).build_node_image_store
        == store
    )
    for bad in ("relative/path", "/a/../etc", "/a b"):
        with pytest.raises(SystemExit):
            settings_from_env({"AICOE_BUILDER_BUILD_NODE_IMAGE_STORE": bad})


def test_a_build_with_a_keep_step_ends_with_its_pod_and_reads_the_push_steps_digest():
    """The keep step runs beside the push step: the build is not ready while it runs (the
    build limits count the whole pod), and once the Job completes the digest is the push
    step's, never what another container's termination says."""

    def pod(*containers):
        statuses = [
            {"name": name, "state": state}
            for name, state in (
                ("build", {"terminated": {"exitCode": 0, "message": ""}}),
                *containers,
            )
        ]
        return {
            "status": {"initContainerStatuses": statuses[:1], "containerStatuses": statuses[1:]}
        }

    active = {"status": {"active": 1, "startTime": "2026-12-04T00:00:00Z"}}
    complete = {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    pushed = ("push", {"terminated": {"exitCode": 0, "message": f'{{"digest":"{D1}"}}'}})
    keeping = ("keep", {"running": {"startedAt": "2026-12-04T00:00:01Z"}})
    kept = ("keep", {"terminated": {"exitCode": 0, "message": f'{{"digest":"{D2}"}}'}})
    assert job_state(active, [pod(pushed, keeping)]).phase == "building"
    state = job_state(complete, [pod(kept, pushed)])  # in any order
    assert state.phase == "ready" and state.digest == D1


def test_custom_tag_on_openshift_follows_the_built_image():
    """On OpenShift the build output writes the release tag; the custom tag points at the
    same image (ImageStreamImage by digest), which the image controller resolves."""
    [ci] = parse_ci_configs("build:\n  custom-tag: latest\n")
    s = spec(ci=ci)
    stream = with_tag(new_stream(s), s, "ready", image_from=False, digest=D1)
    tags = {t["name"]: t for t in stream["spec"]["tags"]}
    assert "from" not in tags["v1"]
    assert tags["latest"]["from"] == {"kind": "ImageStreamImage", "name": f"org-nb@{D1}"}


def test_the_tag_reads_the_phase_of_its_build():
    """Pending while the build is queued, building once it runs: as the builder page says."""
    s = spec()
    for phase, shown in (
        ("pending", TagPhase.PENDING),
        ("building", TagPhase.BUILDING),
        ("failed", TagPhase.FAILED),
    ):
        stream = with_tag(new_stream(s), s, phase, "boom")
        assert stream["spec"]["tags"][0]["annotations"][BUILD_PHASE_ANNOTATION] == phase
        assert parse_imagestream(stream).tag("v1").phase is shown, phase
    # a failed tag rebuilt: pending again, not failed
    failed = with_tag(new_stream(s), s, "failed", "boom")
    assert parse_imagestream(with_tag(failed, s, "pending")).tag("v1").phase is TagPhase.PENDING
