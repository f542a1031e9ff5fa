"""Unit tests for aicoe_spawner.catalog (pure ImageStream parsing)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from aicoe_spawner.catalog import (
    BUILD_MESSAGE_ANNOTATION,
    BUILD_PHASE_ANNOTATION,
    DEFAULT_ORDER,
    Catalog,
    ImageRefError,
    ImageTag,
    NotebookImage,
    Package,
    TagPhase,
    build_catalog,
    format_image_ref,
    parse_image_ref,
    parse_imagestream,
)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "imagestreams"  # from ../shared
DIGEST = "sha256:" + "ab" * 32
A = "opendatahub.io/"


def load_fixture(filename: str, namespace: str | None = "odh") -> dict:
    """The single ImageStream in a fixture file, with a namespace as the API server returns it."""
    docs = [d for d in yaml.safe_load_all((FIXTURES / filename).read_text()) if d]
    assert len(docs) == 1
    obj = docs[0]
    if namespace is not None:
        obj["metadata"]["namespace"] = namespace
    return obj


def minimal_2025(namespace: str = "odh") -> dict:
    return load_fixture("odh-notebooks-jupyter-minimal-2025.yaml", namespace)


def legacy_2021(namespace: str = "odh") -> dict:
    return load_fixture("odh-manifests-minimal-notebook-2021.yaml", namespace)


def set_ready(obj: dict, tag: str, ref: str | None = None) -> dict:
    """Add a status.tags entry pinned by digest, as the image controller would."""
    ref = ref or f"image-registry.svc:5000/{obj['metadata']['name']}@{DIGEST}"
    status = obj.setdefault("status", {}).setdefault("tags", [])
    status.append({"tag": tag, "items": [{"dockerImageReference": ref, "image": DIGEST}]})
    return obj


def tag_spec(name: Any, **annotations: Any) -> dict:
    return {"name": name, "annotations": dict(annotations)}


def stream(
    name: str = "img",
    namespace: str = "ns",
    annotations: dict | None = None,
    tags: list | None = None,
    ready: tuple[str, ...] = (),
) -> dict:
    obj: dict = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": annotations or {},
            "resourceVersion": "42",
        },
        "spec": {"tags": tags if tags is not None else [tag_spec("t1")]},
    }
    for tag in ready:
        set_ready(obj, tag)
    return obj


def parse(obj: dict) -> NotebookImage:
    image = parse_imagestream(obj)
    assert image is not None
    return image


# -- the upstream fixtures ---------------------------------------------------------------------


def test_fixture_2025_parses_as_upstream_intends() -> None:
    image = parse(minimal_2025())
    assert image.namespace == "odh"
    assert image.name == "jupyter-minimal-notebook"
    assert image.key == "odh/jupyter-minimal-notebook"
    assert image.display_name == "Jupyter | Minimal | CPU | Python 3.12"
    assert image.description.startswith("Jupyter notebook image with minimal dependency set")
    assert image.url == "https://github.com/opendatahub-io/notebooks/tree/main/jupyter/minimal"
    assert image.order == 4
    assert image.hidden is False
    assert image.recommended_accelerators == ()
    assert image.creator is None
    assert image.resource_version == ""
    assert [t.name for t in image.tags] == ["2025.2", "2025.1"]

    new, old = image.tags
    assert new.software == (Package("Python", "v3.12"),)
    assert new.python_dependencies == (Package("JupyterLab", "4.5"),)
    assert old.software == (Package("Python", "v3.11"),)
    assert old.python_dependencies == (Package("JupyterLab", "4.4"),)
    assert (new.recommended, new.default, new.outdated) == (True, True, False)
    assert (old.recommended, old.default, old.outdated) == (False, False, False)
    assert new.build_commit == "odh-workbench-jupyter-minimal-cpu-py312-ubi9-commit-n_PLACEHOLDER"

    for tag in image.tags:  # no status yet: nothing is ready
        assert (tag.phase, tag.ready, tag.image_ref, tag.digest, tag.message) == (
            TagPhase.PENDING,
            False,
            None,
            None,
            "",
        )


def test_fixture_2025_tag_ready_after_status_added() -> None:
    ref = f"quay.io/opendatahub/workbench-images@{DIGEST}"
    image = parse(set_ready(minimal_2025(), "2025.1", ref))
    old = image.tag("2025.1")
    assert old is not None and old.ready and old.phase is TagPhase.READY
    assert old.image_ref == ref
    assert old.digest == DIGEST
    assert old.message == ""
    assert image.tag("2025.2").phase is TagPhase.PENDING
    assert image.tag("2024.2") is None


def test_fixture_2021_parses_as_upstream_intends() -> None:
    image = parse(legacy_2021())
    assert image.name == "s2i-minimal-notebook"
    assert image.display_name == "Minimal Python"
    assert image.url == "https://github.com/thoth-station/s2i-minimal-notebook"
    assert image.order == DEFAULT_ORDER == 100
    assert [t.name for t in image.tags] == ["v0.0.14", "v0.0.7"]
    latest, older = image.tags
    assert latest.software == (Package("Python", "v3.8.3"),)
    assert latest.python_dependencies == (
        Package("JupyterLab", "3.0.14"),
        Package("Notebook", "6.3.0"),
    )
    assert older.software == (Package("Python", "v3.6.8"),)
    assert older.python_dependencies == (
        Package("JupyterLab", "2.2.4"),
        Package("Notebook", "6.2.0"),
    )
    for tag in image.tags:
        assert not (tag.recommended or tag.default or tag.outdated)
        assert tag.build_commit is None
        assert tag.phase is TagPhase.PENDING
    # Nothing annotated: the first tag in spec order is preferred.
    assert image.preferred_tag() is latest


def test_fixture_without_namespace_is_skipped_with_one_warning(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="aicoe_spawner.catalog")
    assert parse_imagestream(load_fixture("odh-manifests-minimal-notebook-2021.yaml", None)) is None
    records = [r for r in caplog.records if r.name == "aicoe_spawner.catalog"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "\n" not in records[0].getMessage()


def test_fixtures_catalog_order_and_default_choice() -> None:
    catalog = build_catalog([set_ready(legacy_2021(), "v0.0.14"), minimal_2025()])
    assert [i.name for i in catalog.images] == ["jupyter-minimal-notebook", "s2i-minimal-notebook"]
    # The 2025 default tag is not ready yet; the only ready tag is the legacy one.
    image, tag = catalog.default_choice()
    assert (image.name, tag.name) == ("s2i-minimal-notebook", "v0.0.14")

    catalog = build_catalog(
        [set_ready(legacy_2021(), "v0.0.14"), set_ready(minimal_2025(), "2025.2")]
    )
    image, tag = catalog.default_choice()
    assert (image.name, tag.name) == ("jupyter-minimal-notebook", "2025.2")


# -- stream annotations ------------------------------------------------------------------------


def test_catalog_sorted_by_order_then_display_name_then_namespace() -> None:
    objs = [
        stream("z-default", annotations={}),  # order 100, display "z-default"
        stream(
            "b", annotations={f"{A}notebook-image-name": "beta", f"{A}notebook-image-order": "5"}
        ),
        stream(
            "a", annotations={f"{A}notebook-image-name": "Alpha", f"{A}notebook-image-order": "5"}
        ),
        stream(
            "c", annotations={f"{A}notebook-image-name": "alpha", f"{A}notebook-image-order": "5"}
        ),
        stream("c", "aa", {f"{A}notebook-image-name": "alpha", f"{A}notebook-image-order": "5"}),
        stream("first", annotations={f"{A}notebook-image-order": "-3"}),
        stream("bad-order", annotations={f"{A}notebook-image-order": "abc"}),
    ]
    catalog = build_catalog(objs)
    assert [i.key for i in catalog.images] == [
        "ns/first",
        "aa/c",  # "Alpha" and "alpha" tie case-insensitively: namespace, then name decide
        "ns/a",
        "ns/c",
        "ns/b",
        "ns/bad-order",
        "ns/z-default",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4", 4), (" 7 ", 7), ("-1", -1), ("0", 0), ("abc", 100), ("", 100), ("4.0", 100),
     ("1e3", 100), ("1_000", 100), ("9" * 5000, 100), (None, 100), (3, 100), ([], 100)],
)  # fmt: skip
def test_order_parsing(value: Any, expected: int) -> None:
    assert parse(stream(annotations={f"{A}notebook-image-order": value})).order == expected


@pytest.mark.parametrize(
    ("value", "hidden"),
    [("true", True), ("TRUE", True), ("True", True), ("false", False), ("yes", False),
     ("", False), (True, False), (None, False)],
)  # fmt: skip
def test_hidden(value: Any, hidden: bool) -> None:
    obj = stream(annotations={f"{A}notebook-image-hidden": value})
    assert parse(obj).hidden is hidden
    catalog = build_catalog([obj, stream("other")])
    assert [i.name for i in catalog.visible()] == (["other"] if hidden else ["img", "other"])
    assert len(catalog.images) == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://github.com/x/y", "https://github.com/x/y"),
        ("http://example.org/a?b=c#d", "http://example.org/a?b=c#d"),
        ("HTTPS://Example.org", "HTTPS://Example.org"),
        ("javascript:alert(1)", None),
        (" javascript:alert(1)", None),
        ("JavaScript://example.org/%0aalert(1)", None),
        ("data:text/html,<script>alert(1)</script>", None),
        ("ftp://example.org/x", None),
        ("//example.org/x", None),
        ("https://", None),
        ("https://exa mple.org", None),
        ("https://example.org/\nx", None),
        ("http://[::1", None),
        ("", None),
        (42, None),
    ],
)
def test_url_only_http_or_https(value: Any, expected: str | None) -> None:
    assert parse(stream(annotations={f"{A}notebook-image-url": value})).url == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('["nvidia.com/gpu"]', ("nvidia.com/gpu",)),
        ('["nvidia.com/gpu", "amd.com/gpu"]', ("nvidia.com/gpu", "amd.com/gpu")),
        ('["nvidia.com/gpu", 3, null, ""]', ("nvidia.com/gpu",)),
        ("[]", ()),
        ("nvidia.com/gpu", ()),
        ('{"a": 1}', ()),
        ('"nvidia.com/gpu"', ()),
        (["nvidia.com/gpu"], ()),
        (None, ()),
    ],
)
def test_recommended_accelerators(value: Any, expected: tuple[str, ...]) -> None:
    obj = stream(annotations={f"{A}recommended-accelerators": value})
    assert parse(obj).recommended_accelerators == expected


def test_stream_text_annotations() -> None:
    obj = stream(
        annotations={
            f"{A}notebook-image-name": "  My image ",
            f"{A}notebook-image-desc": "Some words",
            f"{A}notebook-image-creator": "alice",
        }
    )
    image = parse(obj)
    assert (image.display_name, image.description, image.creator) == (
        "My image",
        "Some words",
        "alice",
    )
    assert image.resource_version == "42"
    blank = parse(
        stream(annotations={f"{A}notebook-image-name": "  ", f"{A}notebook-image-creator": ""})
    )
    assert (blank.display_name, blank.creator, blank.description) == ("img", None, "")


# -- tag annotations ---------------------------------------------------------------------------


LEGACY_REC = f"{A}notebook-image-recommended"


@pytest.mark.parametrize(
    ("annotations", "recommended"),
    [
        ({f"{A}workbench-image-recommended": "true"}, True),
        ({f"{A}workbench-image-recommended": "True"}, True),
        ({f"{A}workbench-image-recommended": "false"}, False),
        ({f"{A}workbench-image-recommended": ""}, False),
        ({f"{A}workbench-image-recommended": "yes"}, False),
        ({f"{A}notebook-image-recommended": "true"}, True),
        ({f"{A}notebook-image-recommended": "yes"}, True),
        ({f"{A}notebook-image-recommended": "false"}, True),  # legacy: any non-empty value
        ({f"{A}notebook-image-recommended": ""}, False),
        # the legacy annotation is only consulted when the new one is absent
        ({f"{A}workbench-image-recommended": "false", LEGACY_REC: "x"}, False),
        ({f"{A}workbench-image-recommended": "", LEGACY_REC: "true"}, False),
        ({}, False),
    ],
)
def test_recommended(annotations: dict, recommended: bool) -> None:
    tag = parse(stream(tags=[tag_spec("t", **annotations)])).tags[0]
    assert tag.recommended is recommended


@pytest.mark.parametrize(
    ("value", "default"),
    [("true", True), ("TRUE", True), ("false", False), ("", False), ("1", False)],
)
def test_default_annotation(value: str, default: bool) -> None:
    tag = parse(stream(tags=[tag_spec("t", **{f"{A}default-image": value})])).tags[0]
    assert tag.default is default


@pytest.mark.parametrize("value", ["true", "false", "", "anything", None])
def test_outdated_by_presence(value: Any) -> None:
    image = parse(
        stream(tags=[tag_spec("old", **{f"{A}image-tag-outdated": value}), tag_spec("new")])
    )
    assert image.tag("old").outdated is True
    assert image.tag("new").outdated is False
    assert [t.name for t in image.offered_tags()] == ["new"]
    assert [t.name for t in image.tags] == ["old", "new"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('[{"name": "Python", "version": "v3.12"}]', (Package("Python", "v3.12"),)),
        ('[{"name": "Python"}]', (Package("Python", ""),)),
        ('[{"name": "Python", "version": null}]', (Package("Python", ""),)),
        ('[{"name": "CUDA", "version": 12.4}]', (Package("CUDA", "12.4"),)),
        ('[{"name": 7, "version": 3}]', (Package("7", "3"),)),
        ('[{"version": "1"}, {"name": null}, {"name": ""}, {"name": ["x"]}]', ()),
        ('["Python", 3, null, [], {"name": "ok", "version": "1"}]', (Package("ok", "1"),)),
        ('[{"name": true}, {"name": "b", "version": {"x": 1}}]', (Package("b", ""),)),
        ('{"name": "Python", "version": "v3"}', ()),
        ("not json", ()),
        ("[" * 100_000, ()),
        ("", ()),
        ([{"name": "Python", "version": "v3"}], ()),
        (None, ()),
    ],
)
def test_packages(value: Any, expected: tuple[Package, ...]) -> None:
    tag = parse(
        stream(
            tags=[
                tag_spec(
                    "t",
                    **{f"{A}notebook-software": value, f"{A}notebook-python-dependencies": value},
                )
            ]
        )
    ).tags[0]
    assert tag.software == expected
    assert tag.python_dependencies == expected


def test_duplicate_tag_names_keep_first() -> None:
    tags = [tag_spec("t", **{f"{A}default-image": "true"}), tag_spec("t"), tag_spec("u")]
    image = parse(stream(tags=tags))
    assert [t.name for t in image.tags] == ["t", "u"]
    assert image.tag("t").default is True


# -- readiness ---------------------------------------------------------------------------------

PINNED = f"registry/ns/img@{DIGEST}"
UNPINNED = "registry/ns/img:latest"
BAD_CONDITION = {
    "type": "ImportSuccess",
    "status": "False",
    "message": "not found",
    "reason": "NotFound",
}


def status_tag(ref: str | None = None, conditions: list | None = None) -> dict:
    entry: dict = {"tag": "t"}
    if ref is not None:
        entry["items"] = [{"dockerImageReference": ref}]
    if conditions is not None:
        entry["conditions"] = conditions
    return entry


READY, BUILDING, FAILED, PENDING = (
    TagPhase.READY,
    TagPhase.BUILDING,
    TagPhase.FAILED,
    TagPhase.PENDING,
)
NOT_PINNED = "image reference is not pinned to a digest"
OK_COND = {"status": "True", "message": "ok"}
REASON_COND = {"status": "False", "reason": "Unauthorized"}


@pytest.mark.parametrize(
    ("phase_ann", "message_ann", "status", "phase", "image_ref", "message"),
    [
        # 1. a failed build wins over everything, even a ready image
        ("failed", "step 3 failed", status_tag(PINNED), FAILED, None, "step 3 failed"),
        ("failed", None, None, FAILED, None, "build failed"),
        ("failed", "", status_tag(conditions=[BAD_CONDITION]), FAILED, None, "build failed"),
        # 2. a digest-pinned reference is ready, even while a rebuild runs or after an import error
        (None, None, status_tag(PINNED), READY, PINNED, ""),
        ("building", None, status_tag(PINNED), READY, PINNED, ""),
        # ... the card says the re-import failed and that the last image is served
        (
            None,
            None,
            status_tag(PINNED, [BAD_CONDITION]),
            READY,
            PINNED,
            "the last imported image; importing again failed: not found",
        ),
        # 3. building
        ("building", None, None, BUILDING, None, ""),
        ("building", None, status_tag(UNPINNED, [BAD_CONDITION]), BUILDING, None, ""),
        # 4. import error condition
        (None, None, status_tag(conditions=[BAD_CONDITION]), FAILED, None, "not found"),
        (None, None, status_tag(UNPINNED, [BAD_CONDITION]), FAILED, None, "not found"),
        (None, None, status_tag(conditions=[OK_COND, REASON_COND]), FAILED, None, "Unauthorized"),
        (None, None, status_tag(conditions=[{"status": "False"}]), FAILED, None, "import failed"),
        (None, None, status_tag(conditions=[OK_COND]), PENDING, None, ""),
        # 5. reference not pinned
        (None, None, status_tag(UNPINNED), PENDING, None, NOT_PINNED),
        (None, None, status_tag(UNPINNED, [OK_COND]), PENDING, None, NOT_PINNED),
        # 6. nothing known
        (None, None, None, PENDING, None, ""),
        (None, None, status_tag(), PENDING, None, ""),
        ("unknown-phase", "ignored", None, PENDING, None, ""),
    ],
)  # fmt: skip
def test_readiness_precedence(
    phase_ann: str | None,
    message_ann: str | None,
    status: dict | None,
    phase: TagPhase,
    image_ref: str | None,
    message: str,
) -> None:
    annotations = {}
    if phase_ann is not None:
        annotations[BUILD_PHASE_ANNOTATION] = phase_ann
    if message_ann is not None:
        annotations[BUILD_MESSAGE_ANNOTATION] = message_ann
    obj = stream(tags=[tag_spec("t", **annotations)])
    if status is not None:
        obj["status"] = {
            "tags": [{"tag": "other", "items": [{"dockerImageReference": PINNED}]}, status]
        }
    tag = parse(obj).tags[0]
    assert (tag.phase, tag.image_ref, tag.message) == (phase, image_ref, message)
    assert tag.ready is (phase is TagPhase.READY)
    assert tag.digest == (DIGEST if phase is TagPhase.READY else None)


def test_readiness_uses_first_item_and_first_status_entry() -> None:
    obj = stream(tags=[tag_spec("t")])
    obj["status"] = {
        "tags": [
            {
                "tag": "t",
                "items": [{"dockerImageReference": UNPINNED}, {"dockerImageReference": PINNED}],
            },
            {"tag": "t", "items": [{"dockerImageReference": PINNED}]},
        ]
    }
    assert parse(obj).tags[0].phase is TagPhase.PENDING


# -- malformed streams -------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    junk: Any = "x"
    for _ in range(depth):
        junk = {"a": [junk]}
    return junk


def _mutate(fn) -> dict:
    obj = stream(ready=("t1",))
    fn(obj)
    return obj


def meta(**fields: Any) -> dict:
    return _mutate(lambda o: o["metadata"].update(fields))


def stream_ann(**annotations: Any) -> dict:
    return _mutate(lambda o: o["metadata"]["annotations"].update(annotations))


def spec_tag(*extra: Any, **fields: Any) -> dict:
    """Update the first spec tag with ``fields`` and append ``extra`` entries."""
    return _mutate(lambda o: (o["spec"]["tags"][0].update(fields), o["spec"]["tags"].extend(extra)))


def tag_ann(annotations: dict) -> dict:
    return _mutate(lambda o: o["spec"]["tags"][0]["annotations"].update(annotations))


def status0(**fields: Any) -> dict:
    return _mutate(lambda o: o["status"]["tags"][0].update(fields))


def _huge(obj: dict) -> None:
    deep = _nested(5000)
    obj["metadata"]["annotations"][f"{A}notebook-image-desc"] = deep
    obj["spec"]["tags"].append(deep)
    obj["spec"]["tags"][0]["annotations"][f"{A}notebook-software"] = "[" * 200_000 + "]" * 200_000
    obj["status"]["tags"] = [deep] * 1000 + obj["status"]["tags"]


JUNK_TAG_ANNOTATIONS = {
    f"{A}notebook-software": 5,
    f"{A}default-image": True,
    f"{A}workbench-image-recommended": [],
    f"{A}notebook-image-recommended": {},
    BUILD_PHASE_ANNOTATION: 1,
    f"{A}notebook-build-commit": 3,
}
T1 = ("t1",)

# (id, object, expected: None = skipped, otherwise the tag names still shown)
MALFORMED: list[tuple[str, Any, tuple[str, ...] | None]] = [
    ("not-a-dict", ["metadata"], None),
    ("none", None, None),
    ("string", "ImageStream", None),
    ("empty-dict", {}, None),
    ("metadata-missing", {"spec": {"tags": [tag_spec("t1")]}}, None),
    ("metadata-a-list", {"metadata": [("name", "x")]}, None),
    ("name-not-a-string", meta(name=12), None),
    ("name-empty", meta(name=""), None),
    ("namespace-missing", _mutate(lambda o: o["metadata"].pop("namespace")), None),
    ("namespace-a-dict", meta(namespace={"x": 1}), None),
    ("name-and-namespace-deep-junk", meta(name=_nested(5000), namespace=[_nested(5000)]), None),
    ("annotations-a-list", meta(annotations=["a", "b"]), T1),
    ("annotations-a-string", meta(annotations="x=y"), T1),
    ("annotations-non-str-keys", meta(annotations={1: 2, None: []}), T1),
    ("resource-version-int", meta(resourceVersion=7), T1),
    ("spec-missing", _mutate(lambda o: o.pop("spec")), T1),  # status tag t1 stays a version
    ("spec-a-list", _mutate(lambda o: o.update(spec=[1])), T1),  # status tag t1 stays a version
    (
        "tags-a-dict",
        _mutate(lambda o: o["spec"].update(tags={"name": "t1"})),
        T1,
    ),  # status tag t1 stays a version
    (
        "tags-none",
        _mutate(lambda o: o["spec"].update(tags=None)),
        T1,
    ),  # status tag t1 stays a version
    ("tag-entries-not-dicts", spec_tag("t2", None, 3, []), T1),
    ("tag-without-name", spec_tag({"annotations": {}}), T1),
    ("tag-name-int", spec_tag({"name": 2}), T1),
    ("tag-name-empty", spec_tag({"name": ""}), T1),
    ("tag-annotations-a-list", spec_tag(annotations=[1]), T1),
    ("tag-annotation-values-not-str", spec_tag(annotations=JUNK_TAG_ANNOTATIONS), T1),
    ("bad-json-software", tag_ann({f"{A}notebook-software": "[{"}), T1),
    ("software-a-dict", tag_ann({f"{A}notebook-software": {"name": "x"}}), T1),
    ("status-a-string", _mutate(lambda o: o.update(status="Ready")), T1),
    ("status-tags-a-dict", _mutate(lambda o: o.update(status={"tags": {"tag": "t1"}})), T1),
    ("status-tag-not-a-dict", _mutate(lambda o: o["status"]["tags"].insert(0, "t1")), T1),
    ("status-tag-name-int", status0(tag=1), T1),
    ("status-items-empty", status0(items=[]), T1),
    ("status-items-a-dict", status0(items={"a": 1}), T1),
    ("status-item-not-a-dict", status0(items=["ref"]), T1),
    ("status-ref-not-a-string", status0(items=[{"dockerImageReference": ["@sha256:"]}]), T1),
    ("conditions-junk", status0(items=[], conditions=[None, "False", {"status": "False"}]), T1),
    ("order-abc", stream_ann(**{f"{A}notebook-image-order": "abc"}), T1),
    ("url-javascript", stream_ann(**{f"{A}notebook-image-url": "javascript:alert(1)"}), T1),
    ("accelerators-not-json", stream_ann(**{f"{A}recommended-accelerators": "nvidia.com/gpu"}), T1),
    ("huge-nested-junk", _mutate(_huge), T1),
]


@pytest.mark.parametrize(
    ("obj", "expected"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_streams_never_raise(obj: Any, expected: tuple[str, ...] | None) -> None:
    image = parse_imagestream(obj)
    if expected is None:
        assert image is None
        return
    assert isinstance(image, NotebookImage)
    assert tuple(t.name for t in image.tags) == expected
    assert all(isinstance(t, ImageTag) and isinstance(t.phase, TagPhase) for t in image.tags)
    assert isinstance(image.display_name, str) and image.display_name
    assert isinstance(image.order, int)
    assert image.url is None or image.url.startswith("http")
    # and the catalog built from it works as a whole
    catalog = build_catalog([obj, stream("fine", ready=("t1",))])
    assert catalog.get("ns", "fine") is not None


def test_malformed_values_fall_back_per_field() -> None:
    obj = _mutate(
        lambda o: o["metadata"]["annotations"].update(
            {
                f"{A}notebook-image-order": "abc",
                f"{A}notebook-image-url": "javascript:alert(1)",
                f"{A}recommended-accelerators": "nvidia.com/gpu",
                f"{A}notebook-image-name": ["x"],
            }
        )
    )
    image = parse(obj)
    assert (image.order, image.url, image.recommended_accelerators, image.display_name) == (
        100,
        None,
        (),
        "img",
    )
    assert image.tags[0].ready  # the rest of the stream is unaffected


def test_malformed_status_entries_leave_tag_pending() -> None:
    for name, obj, _expected in MALFORMED:
        if name.startswith("status-") and name != "status-tag-not-a-dict":
            assert parse(obj).tags[0].phase is TagPhase.PENDING, name
    by_name = {name: obj for name, obj, _expected in MALFORMED}
    assert parse(by_name["status-tag-not-a-dict"]).tags[0].ready


def test_skipped_streams_dropped_from_catalog(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="aicoe_spawner.catalog")
    catalog = build_catalog([None, {}, stream("ok"), {"metadata": {"name": "no-namespace"}}])
    assert [i.key for i in catalog.images] == ["ns/ok"]
    assert len([r for r in caplog.records if r.name == "aicoe_spawner.catalog"]) == 3


# -- Catalog queries ---------------------------------------------------------------------------


def test_get_key_and_duplicate_streams() -> None:
    first = stream("img", annotations={f"{A}notebook-image-name": "First"})
    second = stream("img", annotations={f"{A}notebook-image-name": "Second"})
    catalog = build_catalog([first, second, stream("img", "other")])
    assert [i.key for i in catalog.images] == ["ns/img", "other/img"]
    assert catalog.get("ns", "img").display_name == "First"
    assert catalog.get("other", "img").key == "other/img"
    assert catalog.get("nope", "img") is None
    assert build_catalog([]) == Catalog(())
    assert build_catalog([]).default_choice() is None


def _choice(catalog: Catalog) -> tuple[str, str] | None:
    choice = catalog.default_choice()
    return None if choice is None else (choice[0].name, choice[1].name)


DEF = {f"{A}default-image": "true"}
REC = {f"{A}workbench-image-recommended": "true"}
OLD = {f"{A}image-tag-outdated": "true"}
HIDE = {f"{A}notebook-image-hidden": "true"}


def order(n: int) -> dict:
    return {f"{A}notebook-image-order": str(n)}


def img(name: str, n: int, tags: list, ready: tuple[str, ...] = (), **ann: str) -> dict:
    return stream(name, annotations={**order(n), **ann}, tags=tags, ready=ready)


X, Y, R, D = tag_spec("x"), tag_spec("y"), tag_spec("r", **REC), tag_spec("d", **DEF)
O_TAG, D_OLD = tag_spec("o", **OLD), tag_spec("d", **DEF, **OLD)


@pytest.mark.parametrize(
    ("objs", "expected"),
    [
        pytest.param([], None, id="empty"),
        pytest.param([img("a", 1, [D])], None, id="nothing-ready"),
        pytest.param(
            [img("a", 1, [X, R], ("x", "r")), img("b", 2, [D], ("d",))],
            ("b", "d"),
            id="default-beats-earlier-recommended",
        ),
        pytest.param(
            [img("a", 1, [X, D], ("x",)), img("b", 2, [R], ("r",))],
            ("b", "r"),
            id="default-not-ready-recommended-wins",
        ),
        pytest.param(
            [img("a", 1, [X, R], ("x", "r")), img("b", 2, [R], ("r",))],
            ("a", "r"),
            id="first-recommended-by-order",
        ),
        pytest.param(
            [img("a", 1, [D]), img("b", 2, [X, Y], ("y",))],
            ("b", "y"),
            id="first-ready-offered-fallback",
        ),
        pytest.param(
            [img("a", 1, [D], ("d",), **HIDE), img("b", 2, [X], ("x",))],
            ("b", "x"),
            id="hidden-image-skipped",
        ),
        pytest.param(
            [img("a", 1, [D_OLD], ("d",)), img("b", 2, [O_TAG, X], ("o", "x"))],
            ("b", "x"),
            id="outdated-tags-skipped",
        ),
        pytest.param(
            [img("a", 1, [D], ("d",), **HIDE), img("b", 2, [O_TAG], ("o",))],
            None,
            id="only-hidden-or-outdated",
        ),
        pytest.param(
            [img("b", 9, [D], ("d",)), img("a", 3, [D], ("d",))],
            ("a", "d"),
            id="order-not-input-order",
        ),
    ],
)
def test_default_choice(objs: list[dict], expected: tuple[str, str] | None) -> None:
    assert _choice(build_catalog(objs)) == expected


@pytest.mark.parametrize(
    ("tags", "ready", "expected"),
    [
        pytest.param([X, R, D], (), "d", id="default"),
        pytest.param([X, R], ("x",), "r", id="recommended-over-ready"),
        pytest.param([X, Y], ("y",), "y", id="first-ready"),
        pytest.param([X, Y], (), "x", id="first-offered"),
        pytest.param([D_OLD, X], ("d",), "x", id="outdated-default-ignored"),
        pytest.param([O_TAG, tag_spec("r", **REC, **OLD)], ("o",), None, id="all-outdated"),
        pytest.param([], (), None, id="no-tags"),
    ],
)
def test_preferred_tag(tags: list, ready: tuple[str, ...], expected: str | None) -> None:
    tag = parse(stream(tags=tags, ready=ready)).preferred_tag()
    assert (tag.name if tag else None) == expected


# -- image references --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("img:t1", ("home", "img", "t1")),
        ("other/img:t1", ("other", "img", "t1")),
        ("jupyter-minimal-notebook:2025.2", ("home", "jupyter-minimal-notebook", "2025.2")),
        ("odh/s2i-minimal-notebook:v0.0.14", ("odh", "s2i-minimal-notebook", "v0.0.14")),
        ("my.stream.v2:Latest_-1", ("home", "my.stream.v2", "Latest_-1")),
        ("a:_", ("home", "a", "_")),
        ("0:0", ("home", "0", "0")),
        ("n" * 63 + "/" + "s" * 253 + ":" + "T" * 128, ("n" * 63, "s" * 253, "T" * 128)),
    ],
)
def test_parse_image_ref_accepts(ref: str, expected: tuple[str, str, str]) -> None:
    assert parse_image_ref(ref, "home") == expected


@pytest.mark.parametrize(
    "ref",
    [
        None, 42, b"img:t1", ["img", "t1"],
        "", ":", "img", "img:", ":t1", "/img:t1", "ns/:t1", "ns/img:",
        "a:b:c", "ns/img:t1:x", "../x:y", "ns/../x:y", "a/b/c:t", "./x:y", "x/.:y",
        "UPPER:tag", "ns/Img:t", "NS/img:t", "img:.t", "img:-t", "img:t/x", "img:t@sha256:x",
        " img:t1", "img:t1 ", "img :t1", "img: t1", "img:t1\n", "\nimg:t1", "img\t:t1",
        "-img:t", "img-:t", "ns-/img:t", "a..b:t", ".img:t", "img.:t", "ns.x/img:t", "ns_x/img:t",
        "i_mg:t",
        "s" * 254 + ":t", "n" * 64 + "/img:t", "img:" + "t" * 129, "x" * 300 + ":y",
        "img:tä", "ïmg:t", "img:t\x00",
    ],
)  # fmt: skip
def test_parse_image_ref_rejects(ref: Any) -> None:
    with pytest.raises(ImageRefError) as info:
        parse_image_ref(ref, "home")
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) < 200


def test_parse_image_ref_error_message() -> None:
    with pytest.raises(
        ImageRefError, match=r"image reference 'a:b:c' must look like <stream>:<tag>"
    ):
        parse_image_ref("a:b:c", "home")
    with pytest.raises(ImageRefError, match="string"):
        parse_image_ref(None, "home")  # type: ignore[arg-type]


def test_format_image_ref_round_trips() -> None:
    catalog = build_catalog([set_ready(minimal_2025("odh"), "2025.2"), legacy_2021("team")])
    for image in catalog.images:
        for tag in image.tags:
            ref = format_image_ref(image, tag, "odh")
            assert parse_image_ref(ref, "odh") == (image.namespace, image.name, tag.name)
    minimal = catalog.get("odh", "jupyter-minimal-notebook")
    legacy = catalog.get("team", "s2i-minimal-notebook")
    assert format_image_ref(minimal, minimal.tags[0], "odh") == "jupyter-minimal-notebook:2025.2"
    assert format_image_ref(legacy, legacy.tags[1], "odh") == "team/s2i-minimal-notebook:v0.0.7"
    assert (
        format_image_ref(minimal, minimal.tags[0], "team") == "odh/jupyter-minimal-notebook:2025.2"
    )
