"""Per-project destinations (aicoe_spawner/builder/destinations.py): which entry a repository
gets, what its .aicoe-ci.yaml keys may choose within it, and the refusals (403 naming the key
and the repository); then the same rules through resolve_spec and the Job manifest."""

from __future__ import annotations

import json

import pytest

from aicoe_spawner.builder.backends.kubernetes_job import PUSH_AUTH_FILE, JobConfig, job_manifest
from aicoe_spawner.builder.ci_config import parse_ci_configs
from aicoe_spawner.builder.config import ImageBuilder
from aicoe_spawner.builder.destinations import (
    decide,
    match,
    parse_destinations,
    repository_of,
)
from aicoe_spawner.builder.requests import (
    BuildDefaults,
    BuildRequest,
    BuildRequestError,
    resolve_spec,
)

SHA = "a" * 40
DEFAULT = "reg.local:5000/nb"
MAPPING = [
    {
        "repositories": ["github.com/team-a/*"],
        "registry": "quay.io/team-a",
        "pushSecret": "team-a-push",
        "pullSecret": "team-a-pull",
        "allow": ["registry", "registry-org", "registry-project"],
    },
    {
        "repositories": ["github.com/team-b/special", "github.com/team-b/*"],
        "registry": "quay.io/team-b",
        "pushSecret": "team-b-push",
    },
    # never reached for team-a: the first match wins
    {"repositories": ["github.com/*"], "registry": "ghcr.io/all", "pushSecret": "all"},
]
DESTINATIONS = parse_destinations(MAPPING)


def ci(text: str = "", i: int = 0):
    return parse_ci_configs(text or None)[i]


def where(url: str, text: str = "", i: int = 0):
    return decide(url, ci(text, i), DESTINATIONS, DEFAULT)


def refusal(url: str, text: str, i: int = 0) -> BuildRequestError:
    with pytest.raises(BuildRequestError) as info:
        where(url, text, i)
    assert info.value.status == 403
    return info.value


def test_repositories_are_host_org_name_and_the_first_match_wins():
    assert repository_of("https://GitHub.com/Team-A/NB.git") == "github.com/team-a/nb"
    assert repository_of("http://git.local:8080/x/y/") == "git.local:8080/x/y"
    assert match("https://github.com/team-a/nb", DESTINATIONS).registry == "quay.io/team-a"
    assert match("https://github.com/Team-B/Special", DESTINATIONS).registry == "quay.io/team-b"
    assert match("https://github.com/other/x", DESTINATIONS).registry == "ghcr.io/all"
    assert match("https://gitlab.com/team-a/nb", DESTINATIONS) is None
    # a glob over the whole org does not match a look-alike org
    assert match("https://github.com/team-a-evil/nb", DESTINATIONS[:1]) is None


def test_an_unmapped_repository_goes_where_the_builder_pushes():
    t = decide("https://gitlab.com/x/y", ci(), DESTINATIONS, DEFAULT)
    assert (t.path, t.name, t.push_secret, t.pull_secret, t.mapped) == (
        DEFAULT,
        None,
        None,
        "",
        False,
    )
    # registry-project names the stream (today's rule), never the push
    assert decide("https://gitlab.com/x/y", ci("build:\n  registry-project: p\n"), (), DEFAULT) == t


@pytest.mark.parametrize(
    "text, key",
    [
        ("build:\n  registry: quay.io\n", "registry"),
        ("build:\n  registry-org: someone-else\n", "registry-org"),
        ("build:\n  registry: reg.local:5000\n  registry-org: nb\n", "registry"),
    ],
)
def test_an_unmapped_repository_that_names_a_registry_is_refused(text, key):
    e = decide_refused("https://gitlab.com/x/y", text)
    assert e.field == f".aicoe-ci.yaml build.{key}"
    assert "https://gitlab.com/x/y" in str(e) and "ImageBuilder.destinations" in str(e)


def decide_refused(url, text):
    with pytest.raises(BuildRequestError) as info:
        decide(url, ci(text), DESTINATIONS, DEFAULT)
    assert info.value.status == 403
    return info.value


def test_a_mapped_repository_gets_its_entrys_path_and_secrets():
    t = where("https://github.com/team-a/nb")
    assert (t.path, t.name, t.push_secret, t.pull_secret, t.mapped) == (
        "quay.io/team-a",
        None,
        "team-a-push",
        "team-a-pull",
        True,
    )


@pytest.mark.parametrize(
    "text, path, name",
    [
        ("build:\n  registry-project: my-nb\n", "quay.io/team-a", "my-nb"),
        ("build:\n  registry: quay.io\n  registry-org: team-a\n", "quay.io/team-a", None),
        ("build:\n  registry-org: team-a/sub\n", "quay.io/team-a/sub", None),
        ("build:\n  registry: quay.io/team-a/x\n", "quay.io/team-a/x", None),
    ],
)
def test_allowed_keys_choose_within_the_entry(text, path, name):
    t = where("https://github.com/team-a/nb", text)
    assert (t.path, t.name, t.push_secret) == (path, name, "team-a-push")


@pytest.mark.parametrize(
    "text, key, said",
    [
        ("build:\n  registry: docker.io\n", "registry", "'docker.io' is not"),
        ("build:\n  registry: quay.io/team-ab\n", "registry", "is not"),
        ("build:\n  registry-org: team-b\n", "registry-org", "outside"),
        ("build:\n  registry-org: team-a/../team-b\n", "registry-org", "outside"),
        ("build:\n  registry: quay.io/team-a/x\n  registry-org: team-b\n", "registry-org", ""),
    ],
)
def test_a_path_outside_the_entry_is_refused(text, key, said):
    e = refusal("https://github.com/team-a/nb", text)
    assert e.field == f".aicoe-ci.yaml build.{key}"
    assert said in e.why and "https://github.com/team-a/nb" in e.why


@pytest.mark.parametrize(
    "key", ["registry: quay.io", "registry-org: team-b", "registry-project: x"]
)
def test_a_key_the_entry_does_not_allow_is_refused(key):
    e = refusal("https://github.com/team-b/nb", f"build:\n  {key}\n")
    assert e.field == f".aicoe-ci.yaml build.{key.split(':')[0]}"
    assert "not allowed for https://github.com/team-b/nb" in e.why and "allows: none" in e.why


def test_overlays_name_their_keys_and_images():
    text = (
        "build:\n  registry-project: nb\n"
        "overlays:\n  - name: cpu\n  - name: gpu\n    build:\n      registry-project: nb-cuda\n"
    )
    assert where("https://github.com/team-a/nb", text, 0).name == "nb-cpu"
    assert where("https://github.com/team-a/nb", text, 1).name == "nb-cuda"
    e = refusal(
        "https://github.com/team-b/nb",
        "overlays:\n  - name: x\n    build:\n      registry-org: o\n",
    )
    assert e.field == ".aicoe-ci.yaml overlays[0].build.registry-org"


@pytest.mark.parametrize(
    "entry, said",
    [
        (
            {"repositories": ["https://github.com/a/*"], "registry": "quay.io/a"},
            "entry 0.repositories",
        ),
        ({"repositories": ["github.com"], "registry": "quay.io/a"}, "entry 0.repositories"),
        ({"repositories": [], "registry": "quay.io/a"}, "entry 0.repositories"),
        ({"repositories": ["github.com/a/*"]}, "entry 0.registry: missing"),
        ({"repositories": ["github.com/a/*"], "registry": "quay.io/a:latest"}, "entry 0.registry"),
        ({"repositories": ["github.com/a/*"], "registry": "https://quay.io"}, "entry 0.registry"),
        (
            {
                "repositories": ["github.com/a/*"],
                "registry": "q.io/a",
                "allow": ["registry-secret"],
            },
            "entry 0.allow: unknown key 'registry-secret'",
        ),
        (
            {"repositories": ["github.com/a/*"], "registry": "q.io/a", "pushSecret": "A B"},
            "pushSecret",
        ),
        (
            {"repositories": ["github.com/a/*"], "registry": "q.io/a", "secret": "x"},
            "unknown field",
        ),
    ],
)
def test_a_bad_mapping_stops_the_builder_naming_the_entry_and_field(entry, said):
    with pytest.raises(ValueError, match=said.replace("(", r"\(")):
        parse_destinations([entry])
    app = ImageBuilder()
    with pytest.raises(SystemExit) as info:
        app.update_config(app.env_config({"AICOE_BUILDER_DESTINATIONS": json.dumps([entry])}))
    assert "AICOE_BUILDER_DESTINATIONS" in str(info.value) and said.split(":")[0] in str(info.value)


# -- through resolve_spec and the Job --------------------------------------------------------


def spec(url: str, text: str = "", **body):
    request = BuildRequest(repo=url, ref="v1", **body)
    defaults = BuildDefaults(
        namespace="nb", registry="reg.local:5000", destinations=DESTINATIONS, layer_cache=True
    )
    return resolve_spec(request, SHA, "tag", ci(text), defaults, "alice")


def test_a_mapped_build_pushes_to_its_path_with_its_secret_and_only_in_the_push_step():
    s = spec(
        "https://github.com/team-a/nb",
        "build:\n  registry-project: my-nb\n",
        strategy="environment",
    )
    assert s.output_image == "quay.io/team-a/my-nb:v1"
    assert s.layer_cache == "quay.io/team-a/my-nb-cache"
    assert (s.push_secret, s.pull_secret, s.mapped_destination) == (
        "team-a-push",
        "team-a-pull",
        True,
    )
    pod = job_manifest(s, JobConfig(push_secret="builders-own"))["spec"]["template"]["spec"]
    (build,), (push,) = pod["initContainers"], pod["containers"]
    secret_volumes = [v["name"] for v in pod["volumes"] if "secret" in v]
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == ["team-a-push"]
    assert {m["name"] for m in push["volumeMounts"]} >= set(secret_volumes)
    assert not {m["name"] for m in build["volumeMounts"]} & set(secret_volumes)
    assert {"name": "REGISTRY_AUTH_FILE", "value": PUSH_AUTH_FILE} in push["env"]
    assert not [e for e in build["env"] if "secrets" in e["value"] or "AUTH" in e["name"]]
    assert pod["imagePullSecrets"] == [{"name": "team-a-pull"}]
    env = {e["name"]: e["value"] for e in push["env"]}
    assert env["OUTPUT_IMAGE"] == "quay.io/team-a/my-nb:v1"
    assert env["CACHE_REPO"] == "quay.io/team-a/my-nb-cache"


def test_a_requesters_name_never_takes_the_projects_image():
    s = spec("https://github.com/team-a/nb", "build:\n  registry-project: my-nb\n", name="mine")
    assert s.output_image == "quay.io/team-a/alice--mine:v1"


def test_an_unmapped_build_keeps_the_builders_registry_and_secret():
    s = spec("https://gitlab.com/x/y")
    assert s.output_image == "reg.local:5000/nb/x-y:v1" and s.push_secret is None
    pod = job_manifest(s, JobConfig(push_secret="builders-own"))["spec"]["template"]["spec"]
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == ["builders-own"]
    assert "imagePullSecrets" not in pod
    # an entry without a pushSecret pushes without credentials, never with the builder's
    bare = parse_destinations([{"repositories": ["gitlab.com/x/*"], "registry": "r.local/x"}])
    request = BuildRequest(repo="https://gitlab.com/x/y", ref="v1")
    s = resolve_spec(request, SHA, "tag", ci(), BuildDefaults(destinations=bare), "alice")
    pod = job_manifest(s, JobConfig(push_secret="builders-own"))["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "secret" in v]


def test_the_openshift_backend_refuses_a_mapped_repository():
    """Its Builds push to the cluster's ImageStreams: a destination it cannot honour is a 400
    before anything is created, never a push elsewhere."""
    from aicoe_spawner.builder.backends.openshift import validate_spec

    with pytest.raises(BuildRequestError) as info:
        validate_spec(spec("https://github.com/team-a/nb"))
    assert info.value.field == "repo" and "kubernetes backend" in info.value.why
    validate_spec(spec("https://gitlab.com/x/y"))  # unmapped: as before
