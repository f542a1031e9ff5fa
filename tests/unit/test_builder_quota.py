"""The admission rule of the builder's quota ledger (pure)."""

from __future__ import annotations

import pytest

from aicoe_spawner.builder.quota import LimitError, check


def test_per_user_limit_names_the_user_and_the_limit():
    entries = {"b1": ["alice", 0.0], "b2": ["alice", 0.0], "b3": ["bob", 0.0]}
    with pytest.raises(LimitError) as err:
        check(entries, "alice", per_user=2, total=10)
    assert err.value.status == 429 and err.value.field == "limit"
    assert "alice has 2 builds running (limit 2)" in str(err.value)
    check(entries, "bob", per_user=2, total=10)  # bob has room


def test_total_limit_counts_everyone():
    entries = {"b1": ["alice", 0.0], "b2": ["bob", 0.0]}
    with pytest.raises(LimitError) as err:
        check(entries, "carol", per_user=2, total=2)
    assert "2 builds are running (service limit 2)" in str(err.value)
    check({}, "carol", per_user=1, total=1)


def test_a_shared_build_counts_for_its_requester_not_for_the_service_limit():
    # b2 follows b1's Job (another requester's): no Job of its own
    entries = {"b1": ["alice", 0.0], "b2": ["bob", 0.0, "shared"]}
    check(entries, "carol", per_user=2, total=2)  # one Job runs: room for a second
    with pytest.raises(LimitError) as err:
        check({**entries, "b3": ["carol", 0.0]}, "dave", per_user=2, total=2)
    assert "2 builds are running (service limit 2)" in str(err.value)
    # following costs no Job, so a full service still admits it; the requester's own limit holds
    check({**entries, "b3": ["carol", 0.0]}, "dave", per_user=2, total=2, shared=True)
    with pytest.raises(LimitError):
        check(entries, "bob", per_user=1, total=10, shared=True)


def test_a_request_in_its_git_phase_counts_for_its_requester_only():
    entries = {"b1": ["alice", 0.0], "g1": ["alice", 0.0, "git"], "g2": ["bob", 0.0, "git"]}
    with pytest.raises(LimitError) as err:
        check(entries, "alice", per_user=2, total=10)
    assert "alice has 1 build running and 1 request reading a repository (limit 2)" in str(
        err.value
    )
    check(entries, "carol", per_user=2, total=2)  # git phases start no Job
