"""The hub's side of per-project destinations (aicoe_spawner/pod.py): which pull Secret an
image gets from the admin's registry_pull_secrets, and what the setting accepts."""

from __future__ import annotations

import pytest

from aicoe_spawner.pod import check_pull_secret_entries, registry_pull_secret

ENTRIES = [
    {"registry": "quay.io/team-a", "pullSecret": "team-a-pull"},
    {"registry": "quay.io/team-a/sub", "pullSecret": "never-reached"},  # first match wins
    {"registry": "quay.io/team-b", "pushSecret": "b", "repositories": ["github.com/b/*"]},
    {"registry": "reg.local:5000/", "pullSecret": "local"},
]


@pytest.mark.parametrize(
    "image, secret",
    [
        ("quay.io/team-a/nb@sha256:" + "0" * 64, "team-a-pull"),
        ("Quay.io/Team-A/nb:v1", "team-a-pull"),
        ("quay.io/team-a/sub/nb:v1", "team-a-pull"),
        ("quay.io/team-ab/nb:v1", ""),  # a look-alike path is not under it
        ("quay.io/team-a", ""),
        ("quay.io/team-b/nb:v1", ""),  # an entry without a pullSecret
        ("reg.local:5000/ns/nb:v1", "local"),
        ("docker.io/library/python:3", ""),
    ],
)
def test_an_image_gets_the_pull_secret_of_the_first_entry_that_holds_it(image, secret):
    assert registry_pull_secret(image, ENTRIES) == secret


@pytest.mark.parametrize(
    "entries, said",
    [
        ({"registry": "q.io"}, "must be a list"),
        (["q.io"], "entry 0: must be a mapping"),
        ([{"pullSecret": "x"}], "entry 0.registry"),
        ([{"registry": "q.io/a", "pullSecret": 3}], "entry 0.pullSecret"),
        ([{"registry": "q.io/a", "secret": "x"}], "entry 0: unknown field 'secret'"),
    ],
)
def test_a_bad_setting_names_the_entry_and_field(entries, said):
    with pytest.raises(ValueError, match=said):
        check_pull_secret_entries(entries)
    check_pull_secret_entries(ENTRIES)
