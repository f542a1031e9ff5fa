"""Unit tests for sizes with overrides, profile_list read as sizes, KubeSpawner's form names and
REST ``profile``, and the CPU/memory minimums."""

from __future__ import annotations

import pytest
from kubespawner import KubeSpawner
from test_options import CATALOG, NS, make_policy

from aicoe_spawner.form_view import error_slots
from aicoe_spawner.options import (
    OVERRIDE_KEYS,
    OptionsError,
    Size,
    options_from_form,
    sizes_from_profile_list,
    validate,
)

GI = 2**30

PROFILES = [
    {
        "display_name": "Small (shared nodes)",
        "description": "For exploring",
        "default": True,
        "kubespawner_override": {"cpu_limit": 1, "mem_limit": "2G"},
    },
    {
        "display_name": "GPU",
        "slug": "gpu",
        "kubespawner_override": {
            "cpu_guarantee": 2,
            "mem_guarantee": "8Gi",
            "node_selector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "extra_resource_limits": {"nvidia.com/gpu": "1"},
        },
        "profile_options": {
            "gpu_type": {
                "display_name": "GPU type",
                "choices": {
                    "t4": {"display_name": "T4", "kubespawner_override": {}},
                    "a100": {
                        "display_name": "A100",
                        "default": True,
                        "kubespawner_override": {"node_selector": {"gpu": "a100"}},
                    },
                },
            }
        },
    },
]


def test_every_override_key_is_a_kubespawner_setting():
    traits = KubeSpawner.class_traits(config=True)
    assert sorted(k for k in OVERRIDE_KEYS if k not in traits) == []


def test_size_overrides_are_kept_and_resources_become_the_size_fields():
    size = Size.from_config(
        {
            "name": "big",
            "kubespawner_override": {
                "cpu_limit": "4",
                "mem_limit": "16Gi",
                "node_selector": {"pool": "highmem"},
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            },
        }
    )
    assert (size.cpu_limit, size.mem_limit) == (4.0, 16 * GI)
    assert size.overrides == {
        "node_selector": {"pool": "highmem"},
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    }


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"image_spec": "x:1"}, ["'image_spec'", "write 'image'", "size 'big'"]),
        ({"image": ""}, ["'image'", "non-empty string", "size 'big'"]),
        ({"namespace": "other"}, ["'namespace'", "c.KubeSpawner.namespace"]),
        ({"pre_spawn_hook": None}, ["'pre_spawn_hook'", "hub-wide"]),
        ({"no_such_setting": 1}, ["'no_such_setting'", "allowed:", "node_selector"]),
    ],
)
def test_size_override_refused_keys(override, words):
    with pytest.raises(ValueError) as e:
        Size.from_config({"name": "big", "kubespawner_override": override})
    for word in words:
        assert word in str(e.value)


def test_resource_set_twice_is_refused():
    with pytest.raises(ValueError, match="set twice"):
        Size.from_config({"name": "s", "cpu_limit": 1, "kubespawner_override": {"cpu_limit": 2}})


def test_profile_list_becomes_sizes():
    small, gpu = sizes_from_profile_list(PROFILES)
    assert (small.name, small.display_name, small.description, small.default) == (
        "small-shared-nodes",
        "Small (shared nodes)",
        "For exploring",
        True,
    )
    assert (small.cpu_limit, small.mem_limit) == (1.0, 2 * GI)  # ByteSpecification: 2 GiB
    assert small.mem_guarantee is None and small.profile
    assert gpu.name == "gpu" and not gpu.default
    assert gpu.overrides["node_selector"] == {"pool": "gpu"}
    option = gpu.option("gpu_type")
    assert [c.name for c in option.choices] == ["t4", "a100"]
    assert option.default_choice().name == "a100"


def test_profile_dict_is_sorted_by_key_like_kubespawner():
    sizes = sizes_from_profile_list({"b": PROFILES[1], "a": PROFILES[0]})
    assert [s.name for s in sizes] == ["small-shared-nodes", "gpu"]


@pytest.mark.parametrize(
    ("profiles", "words"),
    [
        (
            [
                {
                    "display_name": "Free",
                    "profile_options": {
                        "image": {"unlisted_choice": {"enabled": True, "validation_regex": "("}}
                    },
                }
            ],
            ["profile 'Free'", "unlisted_choice", "'validation_regex'"],
        ),
        (
            [
                {
                    "display_name": "Free",
                    "profile_options": {
                        "image": {"unlisted_choice": {"enabled": True, "colour": "red"}}
                    },
                }
            ],
            ["profile 'Free'", "unlisted_choice", "'colour'"],
        ),
        (
            [
                {
                    "display_name": "Free",
                    "profile_options": {
                        "image": {
                            "unlisted_choice": {
                                "enabled": True,
                                "kubespawner_override": {"image": "x:{value"},
                            }
                        }
                    },
                }
            ],
            ["profile 'Free'", "unlisted_choice", "templates like 'x:{value}'"],
        ),
        (
            [{"display_name": "Ns", "kubespawner_override": {"namespace": "other"}}],
            ["profile 'Ns'", "'namespace'", "c.KubeSpawner.namespace"],
        ),
        (
            [
                {
                    "display_name": "Pick",
                    "profile_options": {
                        "image": {"choices": {"a": {"kubespawner_override": {"image": 3}}}}
                    },
                }
            ],
            ["profile 'Pick'", "profile_options 'image'", "choice 'a'", "'image'"],
        ),
        ([{"display_name": "X", "colour": "red"}], ["profile 'X'", "'colour'"]),
        ([{"slug": "x"}], ["display_name"]),
        ([{"display_name": "A", "slug": "a"}, {"display_name": "B", "slug": "a"}], ["'a'"]),
    ],
)
def test_unmappable_profiles_name_profile_and_setting(profiles, words):
    with pytest.raises(ValueError) as e:
        sizes_from_profile_list(profiles)
    for word in words:
        assert word in str(e.value)


def test_callable_profile_list_is_refused_with_what_to_write():
    with pytest.raises(ValueError, match=r"c\.AICoESpawner\.sizes"):
        sizes_from_profile_list(lambda spawner: [])


def policy_with_profiles(**kwargs):
    return make_policy(
        sizes=sizes_from_profile_list(PROFILES),
        default_policy={"images": ["*"], "sizes": ["*"]},
        **kwargs,
    )


def test_rest_profile_means_that_size_with_default_choices():
    chosen = validate({"profile": "gpu"}, CATALOG, policy_with_profiles(), NS)
    assert chosen.size.name == "gpu"
    assert chosen.choices["gpu_type"].name == "a100"
    saved = chosen.to_user_options(NS)
    assert saved["size"] == "gpu" and saved["size_options"] == {"gpu_type": "a100"}
    assert saved["profile"] == "gpu"  # as KubeSpawner's hooks read it
    again = validate(saved, CATALOG, policy_with_profiles(), NS)
    assert again.choices["gpu_type"].name == "a100"


def test_rest_kubespawner_flat_option_and_size_options():
    policy = policy_with_profiles()
    flat = validate({"profile": "gpu", "gpu_type": "t4"}, CATALOG, policy, NS)
    assert flat.choices["gpu_type"].name == "t4"
    ours = validate({"size": "gpu", "size_options": {"gpu_type": "t4"}}, CATALOG, policy, NS)
    assert ours.choices == flat.choices


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"profile": "nope"}, "profile"),
        ({"profile": "gpu", "size": "small-shared-nodes"}, "profile"),
        ({"size": "gpu", "size_options": {"gpu_type": "h100"}}, "size_options.gpu_type"),
        ({"size": "gpu", "size_options": {"colour": "red"}}, "size_options.colour"),
        ({"size": "gpu", "size_options": "t4"}, "size_options"),
        ({"profile": "small-shared-nodes", "gpu_type": "t4"}, "gpu_type"),
    ],
)
def test_profile_and_size_options_rejections_name_the_field(options, field):
    with pytest.raises(OptionsError) as e:
        validate(options, CATALOG, policy_with_profiles(), NS)
    assert e.value.field == field


def test_kubespawner_form_field_names():
    form = {
        "profile": ["gpu"],
        "profile-option-gpu--gpu_type": ["t4"],
        "profile-option-other--gpu_type": ["a100"],
        "_xsrf": ["x"],
    }
    assert options_from_form(form) == {"profile": "gpu", "gpu_type": "t4"}  # KubeSpawner's
    ours = options_from_form({"size": ["gpu"], "profile-option-gpu--gpu_type": ["t4"]})
    assert ours == {"size": "gpu", "size_options": {"gpu_type": "t4"}}
    chosen = validate(options_from_form(form), CATALOG, policy_with_profiles(), NS)
    assert (chosen.size.name, chosen.choices["gpu_type"].name) == ("gpu", "t4")


@pytest.mark.parametrize(
    ("options", "field", "reason"),
    [
        ({"memory": "1"}, "memory", "at least 256 MiB"),
        ({"memory": "100m"}, "memory", "at least 256 MiB"),
        ({"memory": 255 * 2**20}, "memory", "at least 256 MiB"),
        ({"cpu": "0.05"}, "cpu", "at least 0.1 CPU"),
        ({"cpu": "50m"}, "cpu", "at least 0.1 CPU"),
    ],
)
def test_minimums(options, field, reason):
    with pytest.raises(OptionsError) as e:
        validate(options, CATALOG, make_policy(), NS)
    assert e.value.field == field and reason in e.value.reason


def test_minimums_and_fine_cpu_values_are_accepted():
    chosen = validate({"cpu": "2.25", "memory": "256Mi"}, CATALOG, make_policy(), NS)
    assert (chosen.cpu, chosen.memory) == (2.25, 256 * 2**20)
    assert validate({"cpu": "0.1"}, CATALOG, make_policy(), NS).cpu == 0.1
    custom = make_policy(min_memory="1Gi", min_cpu="500m")
    with pytest.raises(OptionsError, match="at least 1 GiB"):
        validate({"memory": "512Mi"}, CATALOG, custom, NS)
    with pytest.raises(ValueError, match="min_cpu"):
        make_policy(min_cpu=8)


@pytest.mark.parametrize(
    ("field", "reason", "slots"),
    [
        ("memory", "too small", {"memory": "memory: too small", "env_name": ""}),
        (
            "env.FOO",
            "is a reserved name",
            {"env": "env.FOO: is a reserved name", "env_name": "FOO"},
        ),
        ("secret_env", "bad", {"env": "secret_env: bad", "env_name": ""}),
        (
            "size_options.gpu_type",
            "x",
            {"size": "size_options.gpu_type: x", "env_name": "gpu_type"},
        ),
        ("colour", "unknown option", {"form": "colour: unknown option"}),
    ],
)
def test_error_messages_go_next_to_their_field(field, reason, slots):
    assert error_slots(OptionsError(field, reason)) == slots
