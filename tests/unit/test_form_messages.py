"""The messages of a refused link or form: each names its field and goes next to it, and the
summary at the top lists them with the control each is about."""

from __future__ import annotations

import pytest
from test_options import make_policy

from aicoe_spawner.form_view import error_slots, error_summary
from aicoe_spawner.options import OptionsError

ROWS = [{"name": "A", "value": "", "secret": False}, {"name": "B", "value": "", "secret": True}]


@pytest.mark.parametrize(
    ("field", "policy", "target"),
    [
        ("gpus", {"max_gpus": 1}, "aicoe-gpus"),
        # no GPU select for this user: the message itself is the target
        ("gpus", {"max_gpus": 0}, "aicoe-gpus-error"),
        ("cpu", {}, "aicoe-cpu"),
        # no custom fields: the summary is the message's only place
        ("cpu", {"allow_custom_resources": False}, ""),
        ("memory", {}, "aicoe-memory"),
        ("image", {}, "aicoe-images"),
        ("size_options.gpu_type", {}, "aicoe-sizes"),
        ("env.B", {}, "aicoe-env-name-1"),
        ("env.C", {}, "aicoe-env"),
        ("secret_env", {}, "aicoe-env"),
        ("colour", {}, ""),
    ],
)
def test_the_summary_links_each_message_to_its_control(field, policy, target):
    error = OptionsError(field, "must be something")
    errors = error_slots(error)
    items, row = error_summary(errors, make_policy(**policy), ROWS)
    assert [(message, to) for _, message, to in items] == [(str(error), target)]
    assert items[0][1].startswith(f"{field}: ")  # the message names its field
    assert row == (1 if field == "env.B" else None)


def test_no_error_no_summary():
    assert error_summary({}, make_policy(), ROWS) == ([], None)
