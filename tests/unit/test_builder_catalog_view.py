"""What the builder's ``GET api/images`` shows a user (the spawn page's images, by the spawner's
policy code), its policy setting, and the security headers of every route."""

from __future__ import annotations

import json

import pytest
from test_options import CATALOG, DEFAULT_POLICY, GROUP_POLICIES, make_policy

from aicoe_spawner.builder.__main__ import Settings
from aicoe_spawner.builder.app import SecurityHeaders, make_app
from aicoe_spawner.builder.catalog_view import (
    ImagePolicies,
    render_images,
    shown_images,
    viewer_policy,
)

POLICIES = ImagePolicies(DEFAULT_POLICY, GROUP_POLICIES)


def keys(images) -> list[str]:
    return [i.key for i in images]


@pytest.mark.parametrize("groups", [(), ("team-a",), ("gpu",), ("team-a", "gpu")])
def test_a_user_sees_the_images_of_their_spawn_page(groups):
    shown = shown_images(CATALOG, viewer_policy(POLICIES, groups, admin=False))
    # the spawn page's images: the spawner's full policy for the same groups
    assert shown == make_policy(groups).offered_images(CATALOG)
    assert "hub/secret-stream" not in keys(shown)  # hidden, though the policy names it
    assert ("team-a/project" in keys(shown)) == ("team-a" in groups)


def test_users_of_the_same_groups_share_a_rendering_admins_see_everything():
    key_a = viewer_policy(POLICIES, ("team-a",), admin=False)
    key_b = viewer_policy(POLICIES, ["team-a"], admin=False)
    key_c = viewer_policy(POLICIES, (), admin=False)
    assert key_a == key_b != key_c and hash(key_a) == hash(key_b)
    key = viewer_policy(POLICIES, ("team-a",), admin=True)
    shown = shown_images(CATALOG, key)
    assert key is None and shown == CATALOG.images
    rows = json.loads(render_images(shown, stale=False))["images"]
    assert {r["image"] for r in rows if r["hidden"]} == {"hub/secret-stream:1"}


def test_without_a_policy_every_image_that_is_not_hidden_is_shown():
    shown = shown_images(CATALOG, viewer_policy(ImagePolicies(), ("anything",), admin=False))
    assert shown == CATALOG.visible()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "not JSON"),
        ("[]", "must be a JSON object"),
        ('{"default": {}}', "unknown key(s) 'default'"),
        ('{"default_policy": {"images": "minimal"}}', "'images' must be a list"),
        ('{"group_policies": {"g": {"colour": 1}}}', "group_policies['g']"),
    ],
)
def test_an_invalid_policy_setting_stops_the_builder_naming_it(text, words):
    with pytest.raises(ValueError) as caught:
        ImagePolicies.from_json(text)
    assert words in str(caught.value)
    with pytest.raises(SystemExit) as stopped:
        Settings(image_policy=text).image_policies()
    assert str(stopped.value).startswith("AICOE_BUILDER_IMAGE_POLICY: ")


def test_the_policy_setting_is_the_spawners_dicts():
    text = json.dumps({"default_policy": DEFAULT_POLICY, "group_policies": GROUP_POLICIES})
    assert Settings(image_policy=text).image_policies() == POLICIES
    assert Settings().image_policies() == ImagePolicies()


def test_every_route_sends_the_security_headers():
    app = make_app(None, None, None, cookie_secret=b"x" * 32)
    handlers = [rule.target for rule in app.wildcard_router.rules]
    handlers.append(app.settings["default_handler_class"])
    assert len(handlers) > 10
    assert all(issubclass(h, SecurityHeaders) for h in handlers), handlers
