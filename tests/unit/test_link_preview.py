"""Unit tests for the spawn page's words: what a link starts, and when it is what runs."""

from __future__ import annotations

from aicoe_spawner.spawn_page import _same_choice, describe


def test_describe_says_what_starts():
    assert describe({"image": "minimal:2025.2", "size": "small", "gpus": 0}) == (
        "minimal:2025.2, size small, 0 GPUs"
    )
    assert describe({"image": "a/b:1", "size": "gpu", "cpu": "1500m", "gpus": 1}) == (
        "a/b:1, size gpu, cpu 1500m, 1 GPU"
    )
    assert describe({}) == "the default image, the default size, 0 GPUs"


def test_same_choice_compares_only_what_a_link_carries():
    running = {"image": "m:1", "size": "s", "gpus": 0, "env": {"A": "1"}}
    assert _same_choice(running, {"image": "m:1", "size": "s", "gpus": 0})
    assert not _same_choice(running, {"image": "m:1", "size": "s", "gpus": 1})
    assert not _same_choice(running, {"image": "m:1", "size": "s", "gpus": 0, "cpu": "2"})
