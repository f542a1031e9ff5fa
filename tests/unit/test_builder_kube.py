"""The builder's one Kubernetes helper (builder/kube.py): 404/409 as values and the
optimistic-concurrency loop."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio.client.rest import ApiException

from aicoe_spawner.builder.kube import (
    TooManyConflicts,
    create_once,
    ignore_not_found,
    or_none,
    retry_on_conflict,
)


async def answer(value=None, status: int | None = None):
    if status is not None:
        raise ApiException(status=status)
    return value


def run(coro):
    return asyncio.run(coro)


def test_not_found_and_exists_as_values():
    assert run(or_none(answer({"a": 1}))) == {"a": 1}
    assert run(or_none(answer(status=404))) is None
    assert run(ignore_not_found(answer(status=404))) is False
    assert run(ignore_not_found(answer())) is True
    assert run(create_once(answer(status=409))) is None
    for helper, status in ((or_none, 409), (ignore_not_found, 409), (create_once, 404)):
        with pytest.raises(ApiException) as e:
            run(helper(answer(status=status)))
        assert e.value.status == status
    with pytest.raises(ApiException):
        run(or_none(answer(status=500)))


def script(outcomes):
    """An attempt that plays ``outcomes`` in turn: a status (raised) or (done, result)."""
    calls = []

    async def attempt():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, int):
            raise ApiException(status=outcome)
        return outcome

    return attempt, calls


@pytest.mark.parametrize(
    ("outcomes", "attempts", "result"),
    [
        ([(True, "a")], 3, "a"),
        ([(False, None), (True, "b")], 3, "b"),  # a lost write: decide again
        ([409, 409, (True, "c")], 3, "c"),  # a raised conflict: the same
        ([(False, None)] * 3, 3, TooManyConflicts),
        ([409, 409, 409], 3, 409),  # the last conflict is raised as it came
        ([500], 3, 500),  # anything else at once
        ([404], 3, 404),
    ],
)
def test_retry_on_conflict(outcomes, attempts, result):
    attempt, calls = script(outcomes)
    if isinstance(result, str):
        assert run(retry_on_conflict(attempt, attempts=attempts)) == result
    elif result is TooManyConflicts:
        with pytest.raises(TooManyConflicts, match="thing: too many conflicting writes"):
            run(retry_on_conflict(attempt, attempts=attempts, what="thing"))
    else:
        with pytest.raises(ApiException) as e:
            run(retry_on_conflict(attempt, attempts=attempts))
        assert e.value.status == result
    assert len(calls) == len(outcomes)


def test_retry_pauses_between_attempts(monkeypatch):
    pauses = []

    async def sleep(seconds):
        pauses.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    attempt, _ = script([409, 409, 409, (True, "x")])
    assert run(retry_on_conflict(attempt, backoff=0.02, cap=0.05, jitter=False)) == "x"
    assert pauses == [0.02, 0.04, 0.05]
    pauses.clear()
    attempt, _ = script([(False, None), (True, "y")])
    assert run(retry_on_conflict(attempt, backoff=0.002, cap=0.05)) == "y"
    assert len(pauses) == 1 and 0 <= pauses[0] <= 0.002
