"""profileList means what it means under KubeSpawner (issue 21, item 5): memory as JupyterHub's
ByteSpecification reads it, a profile's own image (pinned through the catalog where it knows
it), unlisted choices checked by the admin's regex, and KubeSpawner's flat form shape."""

from __future__ import annotations

import pytest
from jupyterhub.traitlets import ByteSpecification
from test_options import CATALOG, NS, digest, make_policy, stream
from traitlets import HasTraits, TraitError

from aicoe_spawner.catalog import build_catalog
from aicoe_spawner.options import (
    OptionsError,
    normalize_reference,
    options_from_form,
    parse_byte_specification,
    resolve_own_image,
    sizes_from_profile_list,
    validate,
)
from aicoe_spawner.pod import image_annotations

GI = 2**30


class _Holder(HasTraits):
    value = ByteSpecification()


def jupyterhub_bytes(value):
    """What JupyterHub's own ByteSpecification trait makes of ``value``."""
    return _Holder(value=value).value


# -- memory -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["2G", "1G", "512M", "1.5G", "100K", "1T", "0.5G", "2e0G", 1024, 2 * GI, 1.5, 3.9e9, "0G"],
)
def test_memory_is_read_as_jupyterhub_reads_it(value):
    assert parse_byte_specification(value) == jupyterhub_bytes(value)


@pytest.mark.parametrize(
    ("value", "n"),
    [("512Mi", 512 * 2**20), ("1.5Gi", 3 * 2**29), ("1000", 1000), ("2Ti", 2 * 2**40)],
)
def test_kubernetes_binary_quantities_jupyterhub_refuses_are_read_as_kubernetes_does(value, n):
    with pytest.raises(TraitError):
        jupyterhub_bytes(value)
    assert parse_byte_specification(value) == n


@pytest.mark.parametrize("value", ["2g", "2 Gi", "500m", "lots", "", "-1G", -5, "nanG", True, None])
def test_memory_that_means_nothing_clear_is_refused(value):
    with pytest.raises(ValueError):
        parse_byte_specification(value)


# -- profiles -> sizes: memory and what a profile leaves out ----------------------------------

Z2JH_PROFILE = {
    "display_name": "Small",
    "slug": "small",
    "kubespawner_override": {"mem_limit": "2G", "cpu_limit": 1},
}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"mem_limit": "2G"}, (None, 2 * GI)),
        ({"mem_guarantee": "1G", "mem_limit": "2G"}, (GI, 2 * GI)),
        ({"mem_limit": 512 * 2**20}, (None, 512 * 2**20)),
        ({"mem_limit": "8Gi"}, (None, 8 * GI)),
        ({}, (None, None)),
    ],
)
def test_profile_memory_and_silence(override, expected):
    (size,) = sizes_from_profile_list(
        [{"display_name": "P", "slug": "p", "kubespawner_override": override}]
    )
    # None: the size leaves it to c.KubeSpawner's value (the pod keeps it; see pod.shape_pod).
    assert (size.mem_guarantee, size.mem_limit) == expected


# -- a profile's own image -------------------------------------------------------------------

IMPORTED = build_catalog(
    [
        {
            **stream("pangeo", [("2024.1", "ready", {})]),
            "spec": {
                "tags": [
                    {
                        "name": "2024.1",
                        "from": {"kind": "DockerImage", "name": "pangeo/pangeo-notebook:2024.1"},
                    }
                ]
            },
        },
        stream("waiting", [("1", "building", {})]),
    ]
)


def pinned(catalog, key, tag):
    image = next(i for i in catalog.images if i.key == key)
    return image.tag(tag).image_ref


@pytest.mark.parametrize(
    ("requested", "resolution", "ref"),
    [
        # the registry reference a catalog tag imports: pinned by the catalog
        ("pangeo/pangeo-notebook:2024.1", "catalog", pinned(IMPORTED, "hub/pangeo", "2024.1")),
        (
            "docker.io/pangeo/pangeo-notebook:2024.1",
            "catalog",
            pinned(IMPORTED, "hub/pangeo", "2024.1"),
        ),
        # an ImageStream reference of the catalog
        ("pangeo:2024.1", "catalog", pinned(IMPORTED, "hub/pangeo", "2024.1")),
        # a digest is started as it is; anything else as given
        (f"quay.io/x/y@{digest(7)}", "pinned", f"quay.io/x/y@{digest(7)}"),
        ("quay.io/jupyter/scipy-notebook:2025", "as-given", "quay.io/jupyter/scipy-notebook:2025"),
        ("pangeo/pangeo-notebook:2023.1", "as-given", "pangeo/pangeo-notebook:2023.1"),
    ],
)
def test_own_image_resolution(requested, resolution, ref):
    own = resolve_own_image(requested, "profile", IMPORTED, NS, "size")
    assert (own.resolution, own.ref, own.requested) == (resolution, ref, requested)
    assert own.reason
    if resolution == "catalog":
        assert own.digest and own.image.key == "hub/pangeo" and own.tag.name == "2024.1"


def test_own_image_in_the_catalog_but_not_ready_is_refused_naming_the_field():
    with pytest.raises(OptionsError) as e:
        resolve_own_image("waiting:1", "profile", IMPORTED, NS, "size_options.image")
    assert e.value.field == "size_options.image" and "building" in e.value.reason


@pytest.mark.parametrize(
    ("ref", "normal"),
    [
        ("jupyter/base-notebook", "docker.io/jupyter/base-notebook:latest"),
        ("python:3.12", "docker.io/library/python:3.12"),
        ("docker.io/python", "docker.io/library/python:latest"),
        ("index.docker.io/jupyter/x:1", "docker.io/jupyter/x:1"),
        ("quay.io/org/img:tag", "quay.io/org/img:tag"),
        ("localhost:5000/img", "localhost:5000/img:latest"),
    ],
)
def test_normalize_reference(ref, normal):
    assert normalize_reference(ref) == normal


# -- KubeSpawner's own test profiles, through validate ---------------------------------------

KS_PROFILES = [
    {
        "display_name": "Training Env - Python",
        "slug": "training-python",
        "default": True,
        "kubespawner_override": {
            "image": "training/python:label",
            "cpu_limit": 1,
            "mem_limit": 512 * 1024 * 1024,
        },
    },
    {
        "display_name": "Test choices",
        "slug": "test-choices",
        "profile_options": {
            "image": {
                "display_name": "Image",
                "unlisted_choice": {
                    "enabled": True,
                    "display_name": "Image Location",
                    "validation_regex": "^pangeo/.*$",
                    "validation_message": "Must be a pangeo image, matching ^pangeo/.*$",
                    "kubespawner_override": {"image": "{value}", "extra_labels": {"i": "{value}"}},
                },
                "choices": {
                    "pytorch": {
                        "display_name": "Python 3 Training Notebook",
                        "kubespawner_override": {"image": "pangeo/pytorch-notebook:master"},
                    },
                    "tf": {
                        "display_name": "R 4.2 Training Notebook",
                        "default": True,
                        "kubespawner_override": {"image": "training/r:label"},
                    },
                },
            },
        },
    },
    {"display_name": "Catalog", "slug": "catalog"},
]


def policy():
    return make_policy(
        sizes=sizes_from_profile_list(KS_PROFILES),
        default_policy={"images": ["*"], "sizes": ["*"]},
    )


def check(options):
    return validate(options, CATALOG, policy(), NS)


@pytest.mark.parametrize(
    ("form", "options"),
    [
        ({"profile": ["training-python"]}, {"profile": "training-python"}),
        (
            {"profile": ["test-choices"], "profile-option-test-choices--image": ["pytorch"]},
            {"profile": "test-choices", "image": "pytorch"},
        ),
        (
            {
                "profile": ["test-choices"],
                "profile-option-test-choices--image--unlisted-choice": ["pangeo/test:latest"],
            },
            {"profile": "test-choices", "image--unlisted-choice": "pangeo/test:latest"},
        ),
        (
            # our form posts the catalog picker too: the profile's option takes "image"
            {
                "profile": ["test-choices"],
                "image": ["minimal:2025.2"],
                "profile-option-test-choices--image": ["unlisted-choice"],
                "profile-option-test-choices--image--unlisted-choice": ["pangeo/x:1"],
                "profile-option-training-python--image": ["ignored"],
                "_xsrf": ["t"],
            },
            {
                "profile": "test-choices",
                "image": "unlisted-choice",
                "image--unlisted-choice": "pangeo/x:1",
            },
        ),
        (
            # an empty "Other" box is no value
            {
                "profile": ["test-choices"],
                "profile-option-test-choices--image": ["tf"],
                "profile-option-test-choices--image--unlisted-choice": [""],
            },
            {"profile": "test-choices", "image": "tf"},
        ),
    ],
)
def test_the_form_result_has_kubespawner_flat_shape(form, options):
    assert options_from_form(form) == options


@pytest.mark.parametrize(
    ("options", "image", "source", "labels"),
    [
        ({"profile": "training-python"}, "training/python:label", "profile", None),
        ({}, "training/python:label", "profile", None),  # the default profile
        ({"profile": "test-choices"}, "training/r:label", "profile", None),
        (
            {"profile": "test-choices", "image": "pytorch"},
            "pangeo/pytorch-notebook:master",
            "profile",
            None,
        ),
        (
            {"profile": "test-choices", "image--unlisted-choice": "pangeo/test:1.2.3"},
            "pangeo/test:1.2.3",
            "unlisted",
            {"i": "pangeo/test:1.2.3"},
        ),
        (
            {
                "profile": "test-choices",
                "image": "unlisted-choice",
                "image--unlisted-choice": "pangeo/t:2",
            },
            "pangeo/t:2",
            "unlisted",
            {"i": "pangeo/t:2"},
        ),
        (
            {"size": "test-choices", "size_options": {"image--unlisted-choice": "pangeo/t:3"}},
            "pangeo/t:3",
            "unlisted",
            {"i": "pangeo/t:3"},
        ),
    ],
)
def test_profile_images_start(options, image, source, labels):
    chosen = check(options)
    assert chosen.image_ref == image
    assert chosen.own_image.source == source and chosen.own_image.resolution == "as-given"
    assert chosen.image is None and chosen.tag is None
    typed = [c for c in chosen.choices.values() if c.unlisted]
    assert (typed[0].overrides["extra_labels"] if typed else None) == labels
    saved = chosen.to_user_options(NS)
    assert "image" not in saved and saved["profile"] == chosen.size.name
    assert check(saved).image_ref == image  # saved options validate again to the same image
    notes = image_annotations(chosen)
    assert notes["aicoe-spawner.io/image-source"] == source
    assert notes["aicoe-spawner.io/image-requested"] == image
    assert notes["aicoe-spawner.io/image-resolution"].startswith("as-given: ")
    assert "aicoe-spawner.io/image-stream" not in notes


def test_a_profile_without_image_starts_the_catalog_choice():
    chosen = check({"profile": "catalog", "image": "minimal:2025.2"})
    assert chosen.own_image is None and chosen.image_ref.endswith(chosen.tag.digest)
    notes = image_annotations(chosen)
    assert notes["aicoe-spawner.io/image-stream"] == "hub/minimal"
    assert "aicoe-spawner.io/image-source" not in notes


def test_a_profile_image_the_catalog_knows_is_pinned():
    profiles = [
        {
            "display_name": "Minimal",
            "slug": "m",
            "kubespawner_override": {"image": "minimal:2025.2"},
        }
    ]
    chosen = validate(
        {"profile": "m"},
        CATALOG,
        make_policy(sizes=sizes_from_profile_list(profiles), default_policy={}),
        NS,
    )
    assert chosen.own_image.resolution == "catalog"
    assert chosen.image_ref == pinned(CATALOG, "hub/minimal", "2025.2")
    notes = image_annotations(chosen)
    assert notes["aicoe-spawner.io/image-stream"] == "hub/minimal"
    assert notes["aicoe-spawner.io/image-digest"] == chosen.own_image.digest


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        (
            {"profile": "test-choices", "image--unlisted-choice": "invalid/foo:latest"},
            "size_options.image--unlisted-choice",
            ["Must be a pangeo image", "invalid/foo:latest"],
        ),
        (
            {"profile": "test-choices", "image--unlisted-choice": "pangeo/{username}"},
            "size_options.image--unlisted-choice",
            ["'{'"],
        ),
        (
            {"profile": "test-choices", "image--unlisted-choice": "pangeo/x\n"},
            "size_options.image--unlisted-choice",
            ["control characters"],
        ),
        (
            {"profile": "test-choices", "image--unlisted-choice": "pangeo/" + "x" * 600},
            "size_options.image--unlisted-choice",
            ["at most"],
        ),
        (
            {"profile": "test-choices", "image": "unlisted-choice"},
            "size_options.image--unlisted-choice",
            ["type a value"],
        ),
        (
            {"profile": "test-choices", "image--unlisted-choice": 5},
            "size_options.image--unlisted-choice",
            ["must be text"],
        ),
        (
            {"profile": "test-choices", "image": "keras"},
            "size_options.image",
            ["pytorch, tf", "image--unlisted-choice"],
        ),
        (
            {"size": "training-python", "size_options": {"image--unlisted-choice": "x"}},
            "size_options.image--unlisted-choice",
            ["no option"],
        ),
    ],
)
def test_bad_unlisted_choices_name_the_field(options, field, words):
    with pytest.raises(OptionsError) as e:
        check(options)
    assert e.value.field == field
    for word in words:
        assert word in e.value.reason


def test_an_option_without_listed_choices_needs_a_typed_value():
    profiles = [
        {
            "display_name": "Any",
            "slug": "any",
            "profile_options": {
                "tag": {
                    "unlisted_choice": {
                        "enabled": True,
                        "kubespawner_override": {"image": "quay.io/org/nb:{value}"},
                    }
                }
            },
        }
    ]
    p = make_policy(sizes=sizes_from_profile_list(profiles), default_policy={})
    with pytest.raises(OptionsError) as e:
        validate({"profile": "any"}, CATALOG, p, NS)
    assert e.value.field == "size_options.tag--unlisted-choice"
    chosen = validate({"profile": "any", "tag--unlisted-choice": "v2"}, CATALOG, p, NS)
    assert chosen.image_ref == "quay.io/org/nb:v2"


def test_unlisted_value_fills_every_string_and_leaves_other_placeholders_as_kubespawner():
    override = {
        "image": "{value}",
        "environment": {"CUSTOM_IMAGE": "{value}", "USER": "${JUPYTER_USER}", "T": "${{X}}"},
        "init_containers": [{"name": "seed", "image": "{value}", "securityContext": {"a": 1}}],
        "extra_labels": {"img-{value}": "yes"},
    }
    profiles = [
        {
            "display_name": "CPU",
            "slug": "cpu",
            "profile_options": {
                "image": {
                    "unlisted_choice": {
                        "enabled": True,
                        "validation_regex": "^pangeo/.*$",
                        "kubespawner_override": override,
                    }
                }
            },
        }
    ]
    p = make_policy(sizes=sizes_from_profile_list(profiles), default_policy={})
    image = "pangeo/pangeo-notebook:latest"
    chosen = validate({"profile": "cpu", "image--unlisted-choice": image}, CATALOG, p, NS)
    assert chosen.image_ref == image
    overrides = chosen.choices["image"].overrides
    assert overrides["environment"] == {
        "CUSTOM_IMAGE": image,
        "USER": "${JUPYTER_USER}",
        "T": "${X}",
    }
    assert overrides["init_containers"] == [
        {"name": "seed", "image": image, "securityContext": {"a": 1}}
    ]
    assert overrides["extra_labels"] == {f"img-{image}": "yes"}
