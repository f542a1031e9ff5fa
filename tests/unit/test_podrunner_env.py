"""The local pod runner expands env values as the kubelet does."""

import pytest

from aicoe_spawner.devcluster.podrunner import expand_env_value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("$$(HOME)", "$(HOME)"),
        ("$(HOME)/x", "/home/u/x"),
        ("$(UNDEFINED)", "$(UNDEFINED)"),
        ("a $$ b", "a $ b"),
        ("$$$$", "$$"),
        ("{username} $$x", "{username} $x"),
        ("$x", "$x"),
    ],
)
def test_expand_env_value(value, expected):
    assert expand_env_value(value, {"HOME": "/home/u"}) == expected
