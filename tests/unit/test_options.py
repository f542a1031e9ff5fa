"""Unit tests for aicoe_spawner.options: form reshaping, validation, policy and quantities."""

from __future__ import annotations

import json
import pickle
import random

import pytest

from aicoe_spawner.catalog import Catalog, build_catalog
from aicoe_spawner.options import (
    DEFAULT_RESERVED_ENV_NAMES,
    DEFAULT_RESERVED_ENV_PREFIXES,
    KNOWN_KEYS,
    OptionsError,
    Policy,
    Size,
    SpawnOptions,
    effective_policy,
    format_cpu,
    format_memory,
    options_from_form,
    parse_cpu,
    parse_memory,
    validate,
)

NS = "hub"
GI = 2**30
MI = 2**20


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}".rjust(64, "0")


def stream(name, tags, *, namespace=NS, hidden=False, order=None):
    """An ImageStream dict; ``tags`` is a list of (name, state, extra spec annotations)."""
    annotations = {"opendatahub.io/notebook-image-name": name.title()}
    if hidden:
        annotations["opendatahub.io/notebook-image-hidden"] = "true"
    if order is not None:
        annotations["opendatahub.io/notebook-image-order"] = str(order)
    spec_tags, status_tags = [], []
    for i, (tag, state, extra) in enumerate(tags):
        ann = dict(extra)
        status: dict = {"tag": tag, "items": []}
        if state == "ready":
            ref = (
                f"registry.example/{namespace}/{name}@{digest(sum(map(ord, name + tag)) * 100 + i)}"
            )
            status["items"] = [{"dockerImageReference": ref}]
        elif state == "building":
            ann["aicoe-spawner.io/build-phase"] = "building"
        elif state == "failed":
            status["conditions"] = [
                {"type": "ImportSuccess", "status": "False", "message": "manifest unknown"}
            ]
        spec_tags.append({"name": tag, "annotations": ann, "from": {"kind": "DockerImage"}})
        status_tags.append(status)
    return {
        "apiVersion": "image.openshift.io/v1",
        "kind": "ImageStream",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"opendatahub.io/notebook-image": "true"},
            "annotations": annotations,
            "resourceVersion": "1",
        },
        "spec": {"tags": spec_tags},
        "status": {"tags": status_tags},
    }


OUTDATED = {"opendatahub.io/image-tag-outdated": "true"}
DEFAULT = {"opendatahub.io/default-image": "true"}

CATALOG = build_catalog(
    [
        stream("minimal", [("2025.2", "ready", DEFAULT), ("2025.1", "ready", OUTDATED)], order=1),
        stream(
            "datascience",
            [("1.0", "building", {}), ("0.9", "failed", {}), ("0.8", "ready", {})],
            order=2,
        ),
        stream("secret-stream", [("1", "ready", DEFAULT)], hidden=True, order=0),
        stream("project", [("v1", "ready", {})], namespace="team-a", order=3),
    ]
)

SIZES = [
    Size.from_config({"name": "small", "cpu_limit": "1", "mem_limit": "2Gi"}),
    Size.from_config(
        {"name": "medium", "cpu_guarantee": 1, "cpu_limit": 2, "mem_limit": "8Gi", "default": True}
    ),
    Size.from_config({"name": "large", "cpu_limit": 8, "mem_limit": "32Gi"}),
]

DEFAULT_POLICY = {
    "images": ["minimal", "hub/datascience", "secret-stream"],
    "sizes": ["small", "medium"],
}
GROUP_POLICIES = {
    "team-a": {"images": ["team-a/*"]},
    "gpu": {"sizes": ["large"], "max_gpus": 2},
}


def make_policy(groups=(), **overrides) -> Policy:
    kwargs = dict(
        sizes=SIZES,
        default_policy=DEFAULT_POLICY,
        group_policies=GROUP_POLICIES,
        groups=groups,
        max_gpus=1,
        allow_custom_resources=True,
        max_cpu="4",
        max_memory="16Gi",
        reserved_env_names=["MY_RESERVED"],
        reserved_env_prefixes=["CORP_"],
        max_env_vars=50,
        max_env_value_bytes=32768,
    )
    kwargs.update(overrides)
    return effective_policy(**kwargs)


POLICIES = {
    "user": make_policy(),
    "nocustom": make_policy(allow_custom_resources=False),
}


def check(options, policy: Policy | None = None, catalog: Catalog = CATALOG) -> SpawnOptions:
    return validate(options, catalog, policy or POLICIES["user"], NS)


# -- OptionsError -----------------------------------------------------------------------------


def test_options_error_message_and_pickle():
    e = OptionsError("gpus", "must be an integer from 0 to 2, got 'abc'")
    assert str(e) == "gpus: must be an integer from 0 to 2, got 'abc'"
    assert (e.field, e.reason) == ("gpus", "must be an integer from 0 to 2, got 'abc'")
    assert isinstance(e, ValueError)
    copy = pickle.loads(pickle.dumps(e))
    assert str(copy) == str(e) and copy.field == "gpus"


# -- options_from_form ------------------------------------------------------------------------


def test_form_full_shape():
    form = {
        "_xsrf": ["token"],
        "image": ["minimal:2025.2"],
        "size": ["small"],
        "cpu": [""],
        "memory": ["4Gi"],
        "gpus": ["1"],
        "env_name": ["A", "", "B"],
        "env_value": ["1", "", "hello {username}"],
        "secret_env_name": ["S"],
        "secret_env_value": ["s3cret"],
    }
    assert options_from_form(form) == {
        "image": "minimal:2025.2",
        "size": "small",
        "memory": "4Gi",
        "gpus": 1,
        "env": {"A": "1", "B": "hello {username}"},
        "secret_env": {"S": "s3cret"},
    }


def test_form_query_shape_and_empty_optional_fields():
    query = {"image": ["minimal:2025.2"], "size": ["small"], "cpu": [""], "gpus": [""]}
    assert options_from_form(query) == {"image": "minimal:2025.2", "size": "small"}
    assert options_from_form({}) == {}
    assert options_from_form({"_xsrf": ["x"], "env_name": [""], "env_value": [""]}) == {}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(["0"], 0), (["2"], 2), ([" 3 "], 3), (["abc"], "abc"), (["-1"], "-1"), (["1.5"], "1.5")],
)
def test_form_gpus(raw, expected):
    assert options_from_form({"gpus": raw}) == {"gpus": expected}


def test_form_gpus_non_ascii_digits_stay_text():
    assert options_from_form({"gpus": ["\uff11"]}) == {"gpus": "\uff11"}
    with pytest.raises(OptionsError) as e:
        check(options_from_form({"gpus": ["\uff11"]}))
    assert e.value.field == "gpus"


def test_form_value_without_name_is_kept_for_validate_to_reject():
    assert options_from_form({"env_name": [""], "env_value": ["x"]}) == {"env": {"": "x"}}
    with pytest.raises(OptionsError) as e:
        check(options_from_form({"env_name": [""], "env_value": ["x"]}))
    assert e.value.field == "env"


def test_form_env_values_are_literal_and_names_stripped():
    form = {"env_name": [" A "], "env_value": ["  spaced  "]}
    assert options_from_form(form) == {"env": {"A": "  spaced  "}}


def test_form_single_field_twice_is_kept_as_list_and_rejected():
    options = options_from_form({"image": ["minimal:2025.2", "datascience:0.8"]})
    assert options == {"image": ["minimal:2025.2", "datascience:0.8"]}
    with pytest.raises(OptionsError) as e:
        check(options)
    assert e.value.field == "image"


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"env_name": ["A", "B"], "env_value": ["1"]}, "env"),
        ({"env_name": ["A"]}, "env"),
        ({"secret_env_value": ["x"]}, "secret_env"),
    ],
)
def test_form_mismatched_pairs(form, field):
    with pytest.raises(OptionsError) as e:
        options_from_form(form)
    assert e.value.field == field


def test_form_duplicate_names():
    with pytest.raises(OptionsError) as e:
        options_from_form({"env_name": ["A", "A"], "env_value": ["1", "2"]})
    assert str(e.value) == "env: duplicate name 'A'"
    with pytest.raises(OptionsError) as e:
        options_from_form({"secret_env_name": ["S", "S"], "secret_env_value": ["1", "2"]})
    assert e.value.field == "secret_env"


def test_form_unknown_key_passes_through_and_validate_rejects_it():
    options = options_from_form({"flavor": ["x"], "image": ["minimal:2025.2"]})
    assert options == {"flavor": "x", "image": "minimal:2025.2"}
    with pytest.raises(OptionsError) as e:
        check(options)
    assert e.value.field == "flavor"
    assert "unknown option" in e.value.reason


@pytest.mark.parametrize(
    "form",
    [None, [], "image=x", {"image": [3]}, {"image": [b"\xff"]}, {"env_name": [None]}],
)
def test_form_garbage_raises_only_options_error(form):
    with pytest.raises(OptionsError):
        options_from_form(form)


def test_form_bytes_and_bare_strings_are_tolerated():
    assert options_from_form({"image": [b"minimal:2025.2"], "size": "small"}) == {
        "image": "minimal:2025.2",
        "size": "small",
    }


# -- validate: happy paths --------------------------------------------------------------------


def test_defaults_for_empty_options():
    opts = check({})
    assert (opts.image.key, opts.tag.name) == ("hub/minimal", "2025.2")
    assert opts.size.name == "medium"  # default=True wins over configured order
    assert (opts.cpu, opts.memory, opts.gpus, opts.env, opts.secret_env) == (None, None, 0, {}, {})
    assert opts.image_ref == opts.tag.image_ref
    assert "@sha256:" in opts.image_ref


def test_explicit_image_short_and_namespaced_are_the_same():
    short, full = check({"image": "minimal:2025.2"}), check({"image": "hub/minimal:2025.2"})
    assert short == full
    opts = check({"image": "datascience:0.8"})
    assert opts.image_ref == CATALOG.get(NS, "datascience").tag("0.8").image_ref


def test_other_namespace_image_for_group_member():
    opts = check({"image": "team-a/project:v1"}, make_policy(groups=["team-a"]))
    assert (opts.image.namespace, opts.image.name, opts.tag.name) == ("team-a", "project", "v1")
    assert opts.to_user_options(NS)["image"] == "team-a/project:v1"


def test_default_image_is_restricted_to_policy():
    policy = make_policy(default_policy={"images": []}, groups=["team-a"])
    opts = check({}, policy)
    assert opts.image.key == "team-a/project"


def test_hidden_default_is_never_chosen():
    # secret-stream sorts first and has a default tag, but is hidden.
    assert check({}).image.key != "hub/secret-stream"


def test_no_image_available():
    policy = make_policy(default_policy={"images": ["nothing-*"]})
    with pytest.raises(OptionsError) as e:
        check({}, policy)
    assert str(e.value) == "image: no image is available"
    with pytest.raises(OptionsError) as e:
        check({}, catalog=build_catalog([]))
    assert e.value.field == "image"


def test_no_size_available():
    policy = make_policy(default_policy={"sizes": []})
    with pytest.raises(OptionsError) as e:
        check({}, policy)
    assert e.value.field == "size"


def test_size_default_falls_back_to_first_allowed():
    policy = make_policy(default_policy={"sizes": ["small", "large"]})
    assert check({}, policy).size.name == "small"


def test_custom_cpu_and_memory():
    opts = check({"cpu": "1500m", "memory": "8Gi"})
    assert (opts.cpu, opts.memory) == (1.5, 8 * GI)
    opts = check({"cpu": 2, "memory": 512 * MI})
    assert (opts.cpu, opts.memory) == (2.0, 512 * MI)
    assert check({"cpu": 0.5}).cpu == 0.5
    assert check({"cpu": "4", "memory": "16Gi"}).memory == 16 * GI  # bounds are inclusive


def test_gpus_within_group_maximum():
    assert check({"gpus": 1}).gpus == 1
    assert check({"gpus": 0}).gpus == 0
    opts = check({"gpus": 2, "size": "large"}, make_policy(groups=["gpu"]))
    assert (opts.gpus, opts.size.name) == (2, "large")


def test_env_values_are_kept_literally():
    env = {"GREETING": "hello {username}", "EMPTY": "", "_X1": "ünïcode ✓", "X": "{{}}"}
    opts = check({"env": env})
    assert opts.env == env
    assert opts.env is not env  # a copy, the caller's dict is not kept


def test_to_user_options_keeps_no_secret_value():
    opts = check(
        {
            "image": "minimal:2025.2",
            "size": "small",
            "cpu": "1500m",
            "memory": "1.5Gi",
            "gpus": 1,
            "env": {"A": "{username}"},
            "secret_env": {"AWS_SECRET_ACCESS_KEY": "hunter2-very-secret", "TOKEN": "t0k3n"},
        }
    )
    saved = opts.to_user_options(NS)
    assert saved == {
        "image": "minimal:2025.2",
        "size": "small",
        "cpu": "1500m",
        "memory": "1536Mi",
        "gpus": 1,
        "env": {"A": "{username}"},
        "secret_env_names": ["AWS_SECRET_ACCESS_KEY", "TOKEN"],
    }
    text = json.dumps(saved)
    assert "hunter2" not in text and "t0k3n" not in text
    assert "hunter2" not in repr(opts) and "t0k3n" not in repr(opts)
    assert opts.secret_env == {"AWS_SECRET_ACCESS_KEY": "hunter2-very-secret", "TOKEN": "t0k3n"}


def test_saved_options_validate_again():
    opts = check({"cpu": "2", "memory": 300_000_001, "secret_env": {"S": "x"}, "env": {"A": "1"}})
    saved = opts.to_user_options(NS)
    assert "cpu" in saved and saved["memory"] == "300000001"
    again = check(saved)
    assert (again.image, again.tag, again.size, again.cpu, again.memory, again.env) == (
        opts.image,
        opts.tag,
        opts.size,
        opts.cpu,
        opts.memory,
        opts.env,
    )
    assert again.secret_env == {}
    assert "cpu" not in check({}).to_user_options(NS)
    no_minimum = make_policy(min_cpu=0)
    tiny = check({"cpu": "100u"}, no_minimum).to_user_options(NS)
    assert tiny["cpu"] == "1m"
    assert check(tiny, no_minimum).cpu == 0.001


# -- validate: rejections ---------------------------------------------------------------------


def bad(options, field, reason="", policy="user", id=None):
    return pytest.param(options, field, reason, policy, id=id)


BAD = [
    bad([], "user_options", "JSON object", id="list"),
    bad("minimal:2025.2", "user_options", id="str"),
    bad(None, "user_options", id="none"),
    bad({"flavor": "x"}, "flavor", "unknown option; allowed: cpu, env", id="unknown-key"),
    bad({"Image": "minimal:2025.2"}, "Image", "unknown option", id="unknown-key-case"),
    bad({"secret_env_names": "S"}, "secret_env_names", id="bad-stored-names"),
    bad({"image": 3}, "image", "must be a string", id="image-int"),
    bad({"image": None}, "image", id="image-none"),
    bad({"image": ["minimal:2025.2"]}, "image", id="image-list"),
    bad({"image": "nope:1"}, "image", "'nope:1': no image hub/nope", id="unknown-image"),
    bad({"image": "other/minimal:2025.2"}, "image", "no image other/minimal", id="wrong-ns"),
    bad({"image": "Not A Ref"}, "image", "Not A Ref", id="bad-ref"),
    bad({"image": "minimal"}, "image", id="ref-without-tag"),
    bad({"image": "a/b/c:1"}, "image", id="ref-two-slashes"),
    bad({"image": ""}, "image", id="ref-empty"),
    bad({"image": "minimal:9.9"}, "image", "has no tag '9.9'", id="unknown-tag"),
    bad({"image": "minimal:2025.1"}, "image", "'minimal:2025.1' is outdated", id="outdated"),
    bad(
        {"image": "datascience:1.0"},
        "image",
        "'datascience:1.0' is building, not ready",
        id="building",
    ),
    bad(
        {"image": "datascience:0.9"},
        "image",
        "is failed, not ready: manifest unknown",
        id="failed",
    ),
    bad({"image": "secret-stream:1"}, "image", "hidden", id="hidden"),
    bad({"image": "team-a/project:v1"}, "image", "not allowed for you", id="not-in-policy"),
    bad({"size": "huge"}, "size", "'huge' is not a configured size", id="unknown-size"),
    bad({"size": "large"}, "size", "'large' is not allowed for you", id="size-not-allowed"),
    bad({"size": 1}, "size", id="size-int"),
    bad({"size": ["small"]}, "size", id="size-list"),
    bad({"cpu": "5"}, "cpu", "at most 4 CPU", id="cpu-over-max"),
    bad({"cpu": 4.001}, "cpu", "at most", id="cpu-float-over-max"),
    bad({"cpu": "0"}, "cpu", "greater than 0", id="cpu-zero"),
    bad({"cpu": "-1"}, "cpu", id="cpu-negative"),
    bad({"cpu": "two"}, "cpu", "cores", id="cpu-words"),
    bad({"cpu": " 2"}, "cpu", id="cpu-space"),
    bad({"cpu": True}, "cpu", id="cpu-bool"),
    bad({"cpu": float("nan")}, "cpu", id="cpu-nan"),
    bad({"cpu": "1"}, "cpu", "custom resources are not enabled", "nocustom", id="cpu-disabled"),
    bad({"memory": "1Gi"}, "memory", "not enabled", "nocustom", id="memory-disabled"),
    bad({"memory": "8 Gi"}, "memory", "'8 Gi'", id="memory-space"),
    bad({"memory": "8GB"}, "memory", id="memory-GB"),
    bad({"memory": "8gi"}, "memory", id="memory-lowercase"),
    bad({"memory": "17Gi"}, "memory", "at most 16 GiB", id="memory-over-max"),
    bad({"memory": 2**80}, "memory", id="memory-huge-int"),
    bad({"memory": "1e999"}, "memory", id="memory-huge-exponent"),
    bad({"memory": 0}, "memory", "greater than 0", id="memory-zero"),
    bad({"memory": 1.5}, "memory", id="memory-float"),
    bad({"memory": None}, "memory", id="memory-none"),
    bad({"gpus": -1}, "gpus", "from 0 to 1", id="gpus-negative"),
    bad({"gpus": 1.5}, "gpus", id="gpus-float"),
    bad({"gpus": 1.0}, "gpus", id="gpus-integral-float"),
    bad({"gpus": "1"}, "gpus", "got '1'", id="gpus-str"),
    bad({"gpus": True}, "gpus", id="gpus-bool"),
    bad({"gpus": None}, "gpus", id="gpus-none"),
    bad({"gpus": 2}, "gpus", "must be an integer from 0 to 1, got 2", id="gpus-over-max"),
    bad({"gpus": 10**100}, "gpus", id="gpus-huge"),
    bad({"env": ["A=1"]}, "env", "must be an object", id="env-list"),
    bad({"env": "A=1"}, "env", id="env-str"),
    bad({"env": None}, "env", id="env-none"),
    bad({"secret_env": ["x"]}, "secret_env", id="secret-env-list"),
    bad({"env": {"1ABC": "x"}}, "env", "invalid variable name '1ABC'", id="name-digit"),
    bad({"env": {"A-B": "x"}}, "env", "'A-B'", id="name-dash"),
    bad({"env": {"": "x"}}, "env", id="name-empty"),
    bad({"env": {"A\n": "x"}}, "env", id="name-newline"),
    bad({"env": {"ÄPFEL": "x"}}, "env", id="name-non-ascii"),
    bad({"env": {"A" * 257: "x"}}, "env", "longer than 256", id="name-too-long"),
    bad({"secret_env": {"a b": "x"}}, "secret_env", id="secret-name-space"),
    bad({"env": {"JUPYTERHUB_API_TOKEN": "x"}}, "env.JUPYTERHUB_API_TOKEN", "reserved"),
    bad({"env": {"JUPYTERHUB_USER": "root"}}, "env.JUPYTERHUB_USER", "reserved"),
    bad({"env": {"JPY_X": "x"}}, "env.JPY_X", "reserved"),
    bad({"env": {"MEM_LIMIT": "1"}}, "env.MEM_LIMIT", "reserved"),
    bad({"env": {"CPU_X": "1"}}, "env.CPU_X", "reserved"),
    bad({"env": {"JUPYTER_IMAGE_SPEC": "x"}}, "env.JUPYTER_IMAGE_SPEC", "reserved"),
    bad({"env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, "env.NVIDIA_VISIBLE_DEVICES", "reserved"),
    bad({"env": {"MY_RESERVED": "x"}}, "env.MY_RESERVED", "reserved", id="admin-name"),
    bad({"env": {"CORP_TOKEN": "x"}}, "env.CORP_TOKEN", "reserved", id="admin-prefix"),
    bad({"secret_env": {"JPY_API_TOKEN": "x"}}, "secret_env.JPY_API_TOKEN", "reserved"),
    bad({"env": {"A": 1}}, "env.A", "value must be a string", id="value-int"),
    bad({"env": {"A": None}}, "env.A", id="value-none"),
    bad({"env": {"A": ["x"]}}, "env.A", id="value-list"),
    bad({"secret_env": {"S": True}}, "secret_env.S", id="secret-value-bool"),
    bad({"env": {"A": "x" * 2**20}}, "env.A", "longer than 32768 bytes", id="value-1mb"),
    bad({"env": {"A": "é" * 16385}}, "env.A", "bytes", id="value-utf8-over"),
    bad({"env": {"A": "a\x00b"}}, "env.A", "NUL", id="value-nul"),
    bad({"env": {"A": "\ud800"}}, "env.A", id="value-lone-surrogate"),
    bad(
        {"env": {f"V{i}": "x" for i in range(30)}, "secret_env": {f"S{i}": "x" for i in range(21)}},
        "env",
        "too many variables: 51",
        id="too-many",
    ),
    bad({"env": {"A": "1"}, "secret_env": {"A": "2"}}, "secret_env.A", "also set in env"),
]


@pytest.mark.parametrize(("options", "field", "reason", "policy"), BAD)
def test_rejected(options, field, reason, policy):
    with pytest.raises(OptionsError) as e:
        check(options, POLICIES[policy])
    assert e.value.field == field, str(e.value)
    assert reason in e.value.reason
    assert str(e.value).startswith(f"{field}: ")
    assert len(str(e.value)) < 500  # user input is shortened in messages


def test_table_is_big_enough():
    assert len(BAD) >= 35


def test_limits_at_the_boundary_are_accepted():
    env = {f"V{i}": "x" for i in range(49)}
    assert len(check({"env": env, "secret_env": {"S": "y" * 32768}}).env) == 49
    assert check({"env": {"A": "é" * 16384}}).env["A"] == "é" * 16384
    assert check({"env": {"A" * 256: "x"}}).env == {"A" * 256: "x"}


def test_error_names_the_image_asked_for():
    with pytest.raises(OptionsError) as e:
        check({"image": "hub/datascience:1.0"})
    assert "'hub/datascience:1.0'" in str(e.value)


def test_long_input_is_shortened_in_messages():
    with pytest.raises(OptionsError) as e:
        check({"x" * 10_000: 1})
    assert len(str(e.value)) < 200
    with pytest.raises(OptionsError) as e:
        check({"size": "s" * 10_000})
    assert len(str(e.value)) < 200


def test_never_raises_anything_but_options_error_for_json_like_input():
    rng = random.Random(1234)
    scalars = [None, True, False, 0, -1, 1, 2, 1.5, float("inf"), "", "x", "1", "500m", "8Gi"]
    scalars += ["minimal:2025.2", "small", "\x00", "\ud800", "A" * 300, 10**30]

    def value(depth=0):
        roll = rng.random()
        if depth < 2 and roll < 0.2:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if depth < 2 and roll < 0.4:
            keys = ["A", "1B", "JPY_X", "", "image", rng.choice(scalars[10:])]
            return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 3))}
        return rng.choice(scalars)

    keys = [*sorted(KNOWN_KEYS), "other"]
    for _ in range(2000):
        options = {k: value() for k in rng.sample(keys, rng.randint(0, 4))}
        try:
            check(options)
        except OptionsError:
            pass
        form = {k: [str(value()) for _ in range(rng.randint(0, 2))] for k in rng.sample(keys, 2)}
        form["env_name"] = [str(value())]
        form["env_value"] = [str(value())]
        try:
            check(options_from_form(form))
        except OptionsError:
            pass


# -- effective_policy -------------------------------------------------------------------------


def names(policy: Policy) -> list[str]:
    return [s.name for s in policy.sizes]


def test_policy_without_groups():
    policy = make_policy()
    assert policy.image_patterns == ("minimal", "hub/datascience", "secret-stream")
    assert names(policy) == ["small", "medium"]
    assert policy.max_gpus == 1
    assert policy.max_cpu == 4.0 and policy.max_memory == 16 * GI
    assert policy.configured_sizes == ("small", "medium", "large")


def test_policy_union_of_two_groups():
    policy = make_policy(
        groups=["gpu", "team-a", "not-configured"],
        default_policy={"images": ["minimal"], "sizes": ["medium"], "max_gpus": 0},
        group_policies={
            "team-a": {"images": ["team-a/*", "minimal"], "max_gpus": 3, "sizes": ["large", "s*"]},
            "gpu": {"max_gpus": 2},
            "others": {"images": ["*"], "max_gpus": 8},
        },
    )
    assert policy.image_patterns == ("minimal", "team-a/*")
    assert names(policy) == ["small", "medium", "large"]  # configured order, not pattern order
    assert policy.max_gpus == 3
    assert policy.allows_image(CATALOG.get("team-a", "project"))
    assert policy.allows_image(CATALOG.get(NS, "minimal"))
    assert not policy.allows_image(CATALOG.get(NS, "datascience"))


def test_policy_max_gpus_argument_is_a_floor():
    assert make_policy(max_gpus=4, groups=["gpu"]).max_gpus == 4
    assert make_policy(max_gpus=0).max_gpus == 0
    assert make_policy(max_gpus=0, default_policy={"max_gpus": 1}).max_gpus == 1


def test_policy_missing_default_keys_mean_everything():
    policy = make_policy(default_policy={})
    assert policy.image_patterns == ("*",)
    assert names(policy) == ["small", "medium", "large"]
    assert all(policy.allows_image(i) for i in CATALOG.images)


def test_policy_group_dict_accepts_group_objects():
    class Group:
        name = "gpu"

    assert make_policy(groups=[Group()]).max_gpus == 2


def test_policy_matches_namespaced_and_short_names():
    policy = Policy(image_patterns=("team-a/*", "mini*"), sizes=(), max_gpus=0)
    assert policy.allows_image(CATALOG.get("team-a", "project"))
    assert policy.allows_image(CATALOG.get(NS, "minimal"))
    assert not policy.allows_image(CATALOG.get(NS, "datascience"))
    assert Policy(image_patterns=("*",), sizes=(), max_gpus=0).allows_image(
        CATALOG.get("team-a", "project")
    )
    assert not Policy(image_patterns=(), sizes=(), max_gpus=0).allows_image(
        CATALOG.get(NS, "minimal")
    )


def test_policy_reserved_names_are_added_to_the_defaults():
    policy = make_policy(reserved_env_names=["EXTRA"], reserved_env_prefixes=["CORP_", "JPY_"])
    assert policy.reserved_env_names == DEFAULT_RESERVED_ENV_NAMES | {"EXTRA"}
    assert policy.reserved_env_prefixes == (*DEFAULT_RESERVED_ENV_PREFIXES, "CORP_")
    assert make_policy(reserved_env_prefixes=[]).reserved_env_prefixes == (
        "JUPYTERHUB_",
        "JPY_",
        "JUPYTER_IMAGE",
        "MEM_",
        "CPU_",
    )


def test_policy_default_size():
    assert make_policy().default_size().name == "medium"
    assert make_policy(default_policy={"sizes": ["large", "small"]}).default_size().name == "small"
    assert make_policy(default_policy={"sizes": []}).default_size() is None


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"default_policy": {"image": ["*"]}}, ["default_policy", "'image'"]),
        ({"group_policies": {"g": {"maxgpus": 1}}}, ["group_policies['g']", "'maxgpus'"]),
        ({"default_policy": {"images": "*"}}, ["default_policy", "'images'"]),
        ({"default_policy": {"sizes": [1]}}, ["'sizes'"]),
        ({"group_policies": {"g": {"max_gpus": -1}}}, ["'max_gpus'"]),
        ({"group_policies": {"g": {"max_gpus": True}}}, ["'max_gpus'"]),
        ({"group_policies": {"g": ["*"]}}, ["group_policies['g']"]),
        ({"default_policy": None}, ["default_policy"]),
        ({"sizes": [SIZES[0], SIZES[0]]}, ["duplicate", "'small'"]),
        ({"sizes": [{"name": "small"}]}, ["Size"]),
        ({"max_gpus": -1}, ["max_gpus"]),
        ({"max_cpu": "lots"}, ["max_cpu"]),
        ({"max_memory": "16 Gi"}, ["max_memory"]),
        ({"reserved_env_names": "ABC"}, ["reserved_env_names"]),
        ({"reserved_env_prefixes": [""]}, ["reserved_env_prefixes"]),
    ],
)
def test_policy_config_errors(overrides, words):
    with pytest.raises(ValueError) as e:
        make_policy(**overrides)
    for word in words:
        assert word in str(e.value)


# -- Size.from_config -------------------------------------------------------------------------


def test_size_from_config():
    size = Size.from_config(
        {
            "name": "m",
            "display_name": "Medium",
            "description": "for most work",
            "cpu_guarantee": "500m",
            "cpu_limit": 2,
            "mem_guarantee": "1.5Gi",
            "mem_limit": 4 * GI,
            "default": True,
        }
    )
    assert size == Size("m", "Medium", "for most work", 0.5, 2.0, 1536 * MI, 4 * GI, True)
    minimal = Size.from_config({"name": "tiny"})
    assert minimal == Size("tiny", "tiny", "", None, None, None, None, False)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({}, ["name"]),
        ({"name": ""}, ["name"]),
        ({"name": 3}, ["name"]),
        ({"name": "s", "cpu": 1}, ["'s'", "'cpu'"]),
        ({"name": "s", "cpu_limit": "lots"}, ["'s'", "'cpu_limit'"]),
        ({"name": "s", "cpu_limit": -1}, ["'s'", "'cpu_limit'"]),
        ({"name": "s", "mem_limit": "8 Gi"}, ["'s'", "'mem_limit'"]),
        ({"name": "s", "mem_limit": -1}, ["'s'", "'mem_limit'"]),
        ({"name": "s", "mem_limit": "2g"}, ["'s'", "'mem_limit'"]),
        ({"name": "s", "mem_limit": "500m"}, ["'s'", "'mem_limit'"]),
        ({"name": "s", "mem_guarantee": "2Gi", "mem_limit": "1Gi"}, ["'s'", "'mem_guarantee'"]),
        ({"name": "s", "cpu_guarantee": 2, "cpu_limit": "1"}, ["'s'", "'cpu_guarantee'"]),
        ({"name": "s", "default": "yes"}, ["'s'", "'default'"]),
        ({"name": "s", "display_name": 1}, ["'s'", "'display_name'"]),
        ("small", ["dict"]),
    ],
)
def test_size_from_config_errors(config, words):
    with pytest.raises(ValueError) as e:
        Size.from_config(config)
    for word in words:
        assert word in str(e.value)


# -- quantities -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "cores"),
    [
        ("500m", 0.5),
        ("2", 2.0),
        ("1.5", 1.5),
        (".5", 0.5),
        ("0", 0.0),
        ("100m", 0.1),
        ("1k", 1000.0),
        ("2e0", 2.0),
        ("25e-2", 0.25),
        (0.5, 0.5),
        (2, 2.0),
        (0, 0.0),
    ],
)
def test_parse_cpu(value, cores):
    assert parse_cpu(value) == pytest.approx(cores)
    assert isinstance(parse_cpu(value), float)


@pytest.mark.parametrize(
    "value",
    [
        "",
        " 1",
        "1 ",
        "-1",
        "+1",
        "1.",
        "1.2.3",
        "abc",
        "1e",
        "1e1000",
        "inf",
        "nan",
        "1_000",
        "\u0663",
        "2 cores",
        "1" * 100,
        -0.5,
        float("nan"),
        float("inf"),
        True,
        None,
        [1],
        10**400,
    ],
)
def test_parse_cpu_rejects(value):
    with pytest.raises(ValueError):
        parse_cpu(value)


@pytest.mark.parametrize(
    ("value", "n"),
    [
        ("512Mi", 512 * MI),
        ("2G", 2_000_000_000),
        ("1.5Gi", 1536 * MI),
        ("1Ki", 1024),
        ("1k", 1000),
        ("1e3", 1000),
        ("128974848", 128974848),
        ("0.5", 1),  # rounded up like Kubernetes
        ("100m", 1),
        ("1Ei", 2**60),
        (1024, 1024),
        (0, 0),
    ],
)
def test_parse_memory(value, n):
    assert parse_memory(value) == n


@pytest.mark.parametrize(
    "value",
    [
        "",
        "8 Gi",
        "8gi",
        "8GB",
        "8Gib",
        "-1",
        "-1Gi",
        "Gi",
        "1e999",
        "1e9999",
        "99999999999Ei",
        "0x10",
        -1,
        2**64,
        1.5,
        1e9,
        True,
        None,
        {"Gi": 1},
    ],
)
def test_parse_memory_rejects(value):
    with pytest.raises(ValueError):
        parse_memory(value)


@pytest.mark.parametrize(
    ("cores", "text"),
    [(0.5, "0.5 CPU"), (2, "2 CPU"), (2.0, "2 CPU"), (0.25, "0.25 CPU"), (1.5, "1.5 CPU")],
)
def test_format_cpu(cores, text):
    assert format_cpu(cores) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (512 * MI, "512 MiB"),
        (8 * GI, "8 GiB"),
        (1536 * MI, "1.5 GiB"),
        (100, "100 B"),
        (2048, "2 KiB"),
        (2 * 2**40, "2 TiB"),
    ],
)
def test_format_memory(n, text):
    assert format_memory(n) == text
