"""Pure logic of the builder: request validation (SSRF, option injection, paths), naming,
.aicoe-ci.yaml, the s2i-equivalent Dockerfile, Job manifests and Job state."""

from __future__ import annotations

import pytest

from aicoe_spawner.builder.backends.kubernetes_job import JobConfig, job_manifest, job_state
from aicoe_spawner.builder.ci_config import parse_ci_config
from aicoe_spawner.builder.imagestream import new_stream, with_status_tag, with_tag
from aicoe_spawner.builder.naming import stream_name_for, tag_for
from aicoe_spawner.builder.requests import (
    BuildDefaults,
    BuildRequestError,
    RepoPolicy,
    parse_build_request,
    resolve_spec,
)
from aicoe_spawner.builder.source import s2i_dockerfile, scripts_dir
from aicoe_spawner.builder.store import Build, parse_record, record_manifest, status_of
from aicoe_spawner.catalog import TagPhase, parse_imagestream

DNS = {
    "github.com": ["140.82.112.3"],
    "gitlab.com": ["172.65.251.78"],
    "evil.github.com": ["127.0.0.1"],
    "git.internal": ["10.1.2.3"],
}
POLICY = RepoPolicy(allowed_hosts=("github.com", "gitlab.com", "*.github.com", "git.internal"))
LOCAL = RepoPolicy(allowed_hosts=("github.com",), private_hosts=("127.0.0.1",), allow_http=True)
SHA = "0123456789abcdef0123456789abcdef01234567"


def resolve(host):
    return DNS.get(host, [])


def parse(body, policy=POLICY):
    return parse_build_request(body, policy, resolve)


def ok(**kw):
    return {"repo": "https://github.com/org/repo", "ref": "v1.0", **kw}


BAD = [
    # (body, field named in the error)
    ({"repo": "file:///etc/passwd", "ref": "v1"}, "repo"),
    ({"repo": "ext::sh -c touch% /tmp/pwned", "ref": "v1"}, "repo"),
    ({"repo": "ext::sh", "ref": "v1"}, "repo"),
    ({"repo": "fd::17", "ref": "v1"}, "repo"),
    ({"repo": "https://127.0.0.1/org/repo", "ref": "v1"}, "repo"),
    ({"repo": "https://localhost/org/repo", "ref": "v1"}, "repo"),
    ({"repo": "https://169.254.169.254/latest/meta-data", "ref": "v1"}, "repo"),
    ({"repo": "https://[::1]/org/repo", "ref": "v1"}, "repo"),
    ({"repo": "https://evil.github.com/org/repo", "ref": "v1"}, "repo"),  # resolves to loopback
    ({"repo": "https://git.internal/org/repo", "ref": "v1"}, "repo"),  # private 10.x
    ({"repo": "http://github.com/org/repo", "ref": "v1"}, "repo"),
    ({"repo": "ssh://git@github.com/org/repo", "ref": "v1"}, "repo"),
    ({"repo": "git@github.com:org/repo.git", "ref": "v1"}, "repo"),
    ({"repo": "https://user:pw@github.com/org/repo", "ref": "v1"}, "repo"),
    ({"repo": "https://token@github.com/org/repo", "ref": "v1"}, "repo"),
    ({"repo": "https://example.org/org/repo", "ref": "v1"}, "repo"),  # not allowlisted
    ({"repo": "https://github.com/org/../../etc", "ref": "v1"}, "repo"),
    ({"repo": "https://github.com/", "ref": "v1"}, "repo"),
    ({"repo": "https://github.com/org/repo?x=1", "ref": "v1"}, "repo"),
    ({"repo": "https://github.com/org/re po", "ref": "v1"}, "repo"),
    ({"repo": "-uhttps://github.com/org/repo", "ref": "v1"}, "repo"),
    ({"repo": 42, "ref": "v1"}, "repo"),
    ({"repo": "https://github.com/" + "a" * 3000, "ref": "v1"}, "repo"),
    (ok(ref="--upload-pack=touch /tmp/pwned"), "ref"),
    (ok(ref="-x"), "ref"),
    (ok(ref="v1..v2"), "ref"),
    (ok(ref="a b"), "ref"),
    (ok(ref="v1;rm -rf /"), "ref"),
    (ok(ref=""), "ref"),
    (ok(ref=None), "ref"),
    (ok(ref="x.lock"), "ref"),
    (ok(strategy="docker-compose"), "strategy"),
    (ok(strategy=1), "strategy"),
    (ok(dockerfile="../Dockerfile"), "dockerfile"),
    (ok(dockerfile="/etc/passwd"), "dockerfile"),
    (ok(dockerfile="a/../../b"), "dockerfile"),
    (ok(context_dir="../.."), "context_dir"),
    (ok(context_dir="-rf"), "context_dir"),
    (ok(name="Not_DNS"), "name"),
    (ok(name="x" * 64), "name"),
    (ok(base_image="UPPER/case image"), "base_image"),
    (ok(display_name="x" * 101), "display_name"),
    (ok(description="bad\x00char"), "description"),
    (ok(unexpected=1), "unexpected"),
    ([1, 2], "body"),
    ("a string", "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_inputs_name_the_field(body, field):
    with pytest.raises(BuildRequestError) as info:
        parse(body)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert info.value.status == 400


def test_bad_input_table_is_big_enough():
    assert len(BAD) >= 20


def test_good_request_normalized():
    r = parse(ok(repo="https://GitHub.com/org/repo/", strategy="Source", context_dir="./app/"))
    assert r.repo == "https://github.com/org/repo"
    assert r.strategy == "source"
    assert r.context_dir == "app"
    assert parse(ok(ref=SHA)).ref == SHA
    assert parse(ok(ref="refs/heads/feature/x")).ref == "refs/heads/feature/x"


def test_loopback_only_when_allowlisted_explicitly():
    body = {"repo": "http://127.0.0.1:8123/repo.git", "ref": "main"}
    with pytest.raises(BuildRequestError):
        parse(body)  # default policy refuses loopback and http
    assert parse(body, LOCAL).repo == "http://127.0.0.1:8123/repo.git"
    with pytest.raises(BuildRequestError):  # http still refused for public hosts
        parse({"repo": "http://github.com/org/repo", "ref": "v1"}, LOCAL)


def test_naming_is_dns_safe_and_deterministic():
    assert stream_name_for("https://github.com/Org/My_Repo.git") == "org-my-repo"
    long = stream_name_for("https://github.com/" + "x" * 100 + "/y")
    assert len(long) <= 63 and long == stream_name_for("https://github.com/" + "x" * 100 + "/y")
    assert tag_for("v1.0", SHA) == "v1.0"
    assert tag_for("refs/heads/feature/x", SHA) == "feature-x"
    assert tag_for(SHA, SHA) == SHA[:12]
    assert len(tag_for("a" * 200, SHA)) <= 63


def spec_for(body=None, ci=None, **defaults):
    request = parse(body or ok())
    d = BuildDefaults(namespace="nb", registry="reg.local:5000", **defaults)
    return resolve_spec(request, SHA, "tag", ci, d, "alice")


def test_same_repo_commit_options_same_id():
    assert spec_for().id == spec_for().id
    assert spec_for().id != spec_for(ok(strategy="source")).id
    s = spec_for()
    assert s.image == "nb/org-repo:v1.0"
    assert s.output_image == "reg.local:5000/nb/org-repo:v1.0"
    assert len(f"imgbuild-{s.id}") <= 63


def test_ci_config_options_and_precedence():
    ci = parse_ci_config(
        "check: [thoth-build]\nbuild:\n  build-stratergy: Source\n"
        "  base-image: quay.io/thoth-station/s2i-thoth-ubi8-py38:v0.29.0\n"
        "  registry-project: my-nb\n"
        "  custom-tag: latest\n"
    )
    assert ci.build_strategy == "source"
    s = spec_for(ci=ci)
    # custom-tag is a second tag of the release's image, not a replacement
    # registry-project names a stream under the repository's default name
    assert (s.strategy, s.stream, s.tag) == ("source", "org-repo---my-nb", "v1.0")
    assert s.extra_tags == ("latest",)
    assert s.base_image == "quay.io/thoth-station/s2i-thoth-ubi8-py38:v0.29.0"
    # the push location is the builder's alone (tests/unit/test_builder_destinations.py)
    assert s.output_image == "reg.local:5000/nb/org-repo---my-nb:v1.0"
    assert s.name_field == ".aicoe-ci.yaml build.registry-project"
    # the request wins over the file
    assert spec_for(ok(strategy="dockerfile"), ci=ci).strategy == "dockerfile"
    assert parse_ci_config(None).build_strategy is None
    assert parse_ci_config("build:\n  dockerfile-path: docker/Dockerfile\n").dockerfile_path == (
        "docker/Dockerfile"
    )


@pytest.mark.parametrize(
    "text",
    [
        "build:\n  build-strategy: Kaniko\n",
        "build:\n  dockerfile-path: ../../etc/passwd\n",
        "build: [1, 2]\n",
        "- a list\n",
        "build: {custom-tag: 'bad tag'}\n",
        "{unclosed",
        "x" * 70000,
    ],
)
def test_bad_ci_config(text):
    with pytest.raises(BuildRequestError) as info:
        parse_ci_config(text)
    assert info.value.field.startswith(".aicoe-ci.yaml")


def test_s2i_dockerfile():
    assert scripts_dir("image:///usr/libexec/s2i") == "/usr/libexec/s2i"
    assert scripts_dir("https://x/y") == "/usr/libexec/s2i"
    text = s2i_dockerfile("base:1", {"io.openshift.build.commit.id": SHA})
    assert text.startswith("FROM base:1\n")
    assert "COPY . /tmp/src" in text and "USER 1001" in text
    assert "/tmp/src/.s2i/bin/assemble" in text and 'CMD ["@S2I_SCRIPTS@/run"]' in text


def test_job_manifest():
    s = spec_for()
    job = job_manifest(s, JobConfig(push_secret="push", timeout_seconds=120))
    meta = job["metadata"]
    assert meta["name"] == f"imgbuild-{s.id}"
    assert meta["labels"]["aicoe-spawner.io/commit"] == SHA
    assert meta["annotations"]["aicoe-spawner.io/requester"] == "alice"
    spec = job["spec"]
    assert spec["activeDeadlineSeconds"] == 120 and spec["backoffLimit"] == 0
    [build] = spec["template"]["spec"]["initContainers"]
    [push] = spec["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in build["env"]}
    assert env["COMMIT"] == SHA and env["OUTPUT_IMAGE"] == s.output_image
    push_env = {e["name"]: e["value"] for e in push["env"]}
    assert push_env["REGISTRY_AUTH_FILE"].startswith("/var/run/secrets/push")
    assert push["terminationMessagePolicy"] == "File"
    # user input never reaches the shell text, only env values
    assert s.repo not in build["command"][2]
    thoth = "quay.io/thoth-station/s2i-thoth-ubi9-py311:v0.35.1"
    src = job_manifest(spec_for(ok(strategy="source", base_image=thoth)), JobConfig())
    [src_build] = src["spec"]["template"]["spec"]["initContainers"]
    env = {e["name"]: e["value"] for e in src_build["env"]}
    assert env["S2I_DOCKERFILE"].startswith(f"FROM {thoth}\n")
    # Thoth's images install the lock without asking the retired Thoth service
    for line in ('ENV THOTH_ADVISE="0"', 'ENV THOTH_DRY_RUN="1"', 'ENV THOTH_ERROR_FALLBACK="1"'):
        assert line in env["S2I_DOCKERFILE"].splitlines()
    other = job_manifest(spec_for(ok(strategy="source", base_image="quay.io/x/y:1")), JobConfig())
    assert "THOTH" not in str(other)


DIGEST = "sha256:" + "a" * 64


def pod(exit_code, message):
    return {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": exit_code, "message": message}}}
            ]
        },
    }


def test_job_state():
    assert job_state(None, []).phase == "pending"
    assert job_state({"status": {}}, []).phase == "pending"
    assert job_state({"status": {"active": 1}}, []).phase == "building"
    done = {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    state = job_state(done, [pod(0, DIGEST)])
    assert (state.phase, state.digest) == ("ready", DIGEST)
    assert job_state(done, [pod(0, "")]).phase == "failed"
    failed = {"status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}}
    state = job_state(failed, [pod(1, "error: no such file")])
    assert (
        state.phase == "failed"
        and "no such file" in state.message
        and "exit code 1" in state.message
    )
    timeout = {
        "status": {
            "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
        }
    }
    assert "timed out" in job_state(timeout, []).message


def test_registration_objects_are_read_by_the_catalog():
    s = spec_for()
    stream = with_tag(new_stream(s), s, "building")
    # in the catalog only once a tag is ready
    assert "opendatahub.io/notebook-image" not in stream["metadata"]["labels"]
    assert with_tag(stream, s, "ready")["metadata"]["labels"]["opendatahub.io/notebook-image"]
    image = parse_imagestream(stream)
    assert image.tag("v1.0").phase is TagPhase.BUILDING
    assert image.creator == "alice" and image.url == s.repo
    failed = parse_imagestream(with_tag(stream, s, "failed", "boom"))
    assert failed.tag("v1.0").phase is TagPhase.FAILED
    assert "boom" not in failed.tag("v1.0").message  # a generic reason, never the log
    ready = with_status_tag(with_tag(stream, s, "ready"), s, DIGEST)
    tag = parse_imagestream(ready).tag("v1.0")
    assert tag.phase is TagPhase.READY and tag.digest == DIGEST
    assert tag.build_commit == SHA
    assert tag.image_ref == f"reg.local:5000/nb/org-repo@{DIGEST}"
    assert len(ready["spec"]["tags"]) == 1  # idempotent per tag


def test_record_round_trip():
    """An ImageBuild: spec from the manifest, state from status (the API server keeps them
    apart), the log never in the record."""
    s = spec_for()
    b = Build(spec=s, phase="building", created="2025-01-01T00:00:00.000000Z", log_tail="line\n")
    obj = record_manifest(b)
    assert obj["kind"] == "ImageBuild" and "status" not in obj and "log" not in str(obj["spec"])
    assert obj["metadata"]["labels"]["aicoe-spawner.io/active"] == "true"
    obj["metadata"]["resourceVersion"] = "7"
    obj["status"] = status_of(b)
    back = parse_record(obj)
    assert back.spec == s and back.phase == "building" and back.log_tail == "line\n"
    assert back.resource_version == "7" and back.created == b.created
    assert back.view()["image"] == "nb/org-repo:v1.0"
    assert parse_record({"metadata": {}, "spec": {"id": 1}}) is None
    done = record_manifest(Build(spec=s, phase="ready"))
    assert done["metadata"]["labels"]["aicoe-spawner.io/active"] == "false"
