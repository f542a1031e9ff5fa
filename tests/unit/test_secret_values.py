"""What of a spawn request's user_options may be stored: secret env values never are."""

from __future__ import annotations

from aicoe_spawner.spawner import without_secret_values


def test_stored_user_options_keep_only_secret_names():
    options = {"image": "a:1", "secret_env": {"B": "v1", "A": "v2"}, "env": {"X": "y"}}
    stored = without_secret_values(options)
    assert stored == {"image": "a:1", "env": {"X": "y"}, "secret_env_names": ["A", "B"]}
    assert options["secret_env"] == {"B": "v1", "A": "v2"}  # the caller's dict is untouched
    assert without_secret_values({"image": "a:1"}) == {"image": "a:1"}
    assert without_secret_values(None) is None
    assert without_secret_values({"secret_env": "junk"}) == {"secret_env_names": []}
