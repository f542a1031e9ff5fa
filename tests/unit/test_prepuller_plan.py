"""The pre-puller's plan (which digests to keep, in which order) and its DaemonSet patch."""

from __future__ import annotations

import hashlib
import json

import pytest

from aicoe_spawner.catalog import build_catalog
from aicoe_spawner.prepuller.daemonset import (
    APPLIED_ANNOTATION,
    TEMPLATE_ANNOTATION,
    container_name,
    patch_for,
    pulled_images,
)
from aicoe_spawner.prepuller.plan import Limits, plan
from aicoe_spawner.prepuller.sizes import ManifestError, manifest_size

REC = {"opendatahub.io/workbench-image-recommended": "true"}


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def stream(name, tags, *, ready=None, order=None, hidden=False, same_digest_as=None, ns="ns"):
    """An ImageStream dict; ``tags``: name -> annotations; ``ready``: tags with a digest."""
    ann = {}
    if order is not None:
        ann["opendatahub.io/notebook-image-order"] = str(order)
    if hidden:
        ann["opendatahub.io/notebook-image-hidden"] = "true"
    ready = list(tags) if ready is None else ready
    return {
        "metadata": {"namespace": ns, "name": name, "annotations": ann},
        "spec": {"tags": [{"name": t, "annotations": a} for t, a in tags.items()]},
        "status": {
            "tags": [
                {
                    "tag": t,
                    "items": [
                        {
                            "dockerImageReference": f"reg/{ns}/{name}@"
                            + digest(same_digest_as or f"{name}:{t}")
                        }
                    ],
                }
                for t in ready
            ]
        },
    }


def keys(images):
    return [f"{i.stream}:{i.tag}" for i in images]


def test_recommended_tag_of_every_listed_image_in_catalog_order():
    catalog = build_catalog(
        [
            stream("b", {"1": {}, "2": REC}, order=2),
            stream("a", {"x": {}, "y": {"opendatahub.io/default-image": "true"}}, order=1),
        ]
    )
    assert keys(plan(catalog, Limits())) == ["ns/a:y", "ns/b:2"]


def test_images_not_ready_outdated_or_hidden_are_skipped():
    catalog = build_catalog(
        [
            stream("pending", {"1": REC}, ready=[]),
            stream("half", {"new": REC, "old": {}}, ready=["old"]),
            stream("outdated", {"1": {"opendatahub.io/image-tag-outdated": "x"}}),
            stream("hidden", {"1": {}}, hidden=True),
        ]
    )
    # "half": its recommended tag is not ready, so the ready one is kept instead
    assert keys(plan(catalog, Limits())) == ["ns/half:old"]


def test_count_limit_keeps_one_tag_of_each_image_before_second_tags():
    catalog = build_catalog(
        [
            stream("a", {"1": REC, "2": {}}, order=1),
            stream("b", {"1": REC, "2": {}}, order=2),
            stream("c", {"1": REC}, order=3),
        ]
    )
    assert keys(plan(catalog, Limits(max_images=4, tags_per_image=2))) == [
        "ns/a:1",
        "ns/b:1",
        "ns/c:1",
        "ns/a:2",
    ]
    assert keys(plan(catalog, Limits(max_images=2))) == ["ns/a:1", "ns/b:1"]
    assert plan(catalog, Limits(max_images=0)) == []


def test_equal_digests_are_pulled_once():
    catalog = build_catalog(
        [
            stream("a", {"1": REC}, order=1, same_digest_as="shared"),
            stream("b", {"1": REC}, order=2, same_digest_as="shared"),
            stream("c", {"1": REC}, order=3),
        ]
    )
    images = plan(catalog, Limits(max_images=2))
    assert keys(images) == ["ns/a:1", "ns/c:1"]  # the duplicate takes no slot


def test_size_limit_skips_what_does_not_fit_and_unknown_sizes_count_zero():
    catalog = build_catalog([stream(name, {"1": {}}, order=n) for n, name in enumerate("abcd")])
    sizes = {digest("a:1"): 600, digest("b:1"): 500, digest("c:1"): 300}
    assert keys(plan(catalog, Limits(max_bytes=1000), sizes)) == ["ns/a:1", "ns/c:1", "ns/d:1"]


def test_a_removed_stream_drops_its_image():
    both = [stream("a", {"1": {}}, order=1), stream("b", {"1": {}}, order=2)]
    assert keys(plan(build_catalog(both), Limits())) == ["ns/a:1", "ns/b:1"]
    assert keys(plan(build_catalog(both[1:]), Limits())) == ["ns/b:1"]


def daemonset(init=(), annotations=None):
    return {
        "metadata": {"name": "p", "resourceVersion": "7", "annotations": annotations or {}},
        "spec": {"template": {"spec": {"initContainers": list(init), "containers": []}}},
    }


def test_patch_sets_one_init_container_per_image_after_the_charts_own():
    images = plan(build_catalog([stream("Big_Image", {"1": {}})]), Limits())
    copier = {"name": "copy-busybox", "image": "busybox"}
    patch = patch_for(daemonset([copier]), images)
    assert patch is not None
    assert patch["metadata"]["resourceVersion"] == "7"  # conditional on what was read
    init = patch["spec"]["template"]["spec"]["initContainers"]
    assert init[0] == copier
    assert init[1]["name"] == container_name(images[0])
    assert init[1]["name"].startswith("pull-big-image-") and len(init[1]["name"]) <= 63
    assert init[1]["image"] == images[0].image_ref
    assert init[1]["command"] == ["/aicoe-puller/busybox", "true"]


def test_no_patch_when_the_daemonset_already_pulls_the_plan():
    images = plan(build_catalog([stream("a", {"1": {}})]), Limits())
    patch = patch_for(daemonset(), images)
    # the API server adds defaults to what was sent: the stored form still counts as equal
    stored = [
        dict(c, terminationMessagePath="/dev/termination-log")
        for c in patch["spec"]["template"]["spec"]["initContainers"]
    ]
    applied = daemonset(stored, patch["metadata"]["annotations"])
    assert pulled_images(applied) == [images[0].image_ref]
    assert patch_for(applied, images) is None
    # a changed template (the chart's annotation) rewrites the containers
    applied["metadata"]["annotations"][TEMPLATE_ANNOTATION] = json.dumps({"command": ["/x"]})
    again = patch_for(applied, images)
    assert again["spec"]["template"]["spec"]["initContainers"][0]["command"] == ["/x"]
    assert (
        again["metadata"]["annotations"][APPLIED_ANNOTATION]
        != (patch["metadata"]["annotations"][APPLIED_ANNOTATION])
    )


def test_manifest_size_is_config_plus_layers_and_an_index_names_the_platforms_manifest():
    manifest = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": "sha256:c", "size": 10},
        "layers": [{"digest": "sha256:a", "size": 100}, {"digest": "sha256:b", "size": 5}],
    }
    assert manifest_size(json.dumps(manifest).encode()) == 115
    index = {
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    assert manifest_size(json.dumps(index).encode()) == "sha256:amd"
    assert manifest_size(json.dumps(index).encode(), "linux/arm64") == "sha256:arm"
    for bad in (b"[]", b"{", json.dumps({**manifest, "layers": [{"size": "1"}]}).encode()):
        with pytest.raises(ManifestError):
            manifest_size(bad)
    with pytest.raises(ManifestError, match="s390x"):
        manifest_size(json.dumps(index).encode(), "linux/s390x")
