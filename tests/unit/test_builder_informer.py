"""The builder's list+watch (builder/informer.py): what a relist reports."""

from __future__ import annotations

import json

import pytest
from kubernetes_asyncio.client.rest import ApiException

from aicoe_spawner.builder.informer import Informer


class Answer:
    """An unread answer of kubernetes_asyncio (``_preload_content=False``): an error status
    is an answer, not an exception."""

    def __init__(self, status: int, body: dict) -> None:
        self.status = status
        self.body = body

    async def json(self) -> dict:
        return self.body

    async def text(self) -> str:
        return json.dumps(self.body)

    def release(self) -> None:
        pass


def obj(name: str, version: str) -> dict:
    return {"metadata": {"name": name, "resourceVersion": version}}


async def test_an_error_answer_to_a_relist_reports_no_object_deleted():
    """An API server that has just restarted answers a list of custom objects with 404 (or
    503) until it serves them: the relist fails and is tried again, and the objects it knew
    stay known (not reported deleted, as an empty list would have them)."""
    answers = [
        Answer(
            200, {"metadata": {"resourceVersion": "5"}, "items": [obj("a", "3"), obj("b", "5")]}
        ),
        Answer(404, {"kind": "Status", "metadata": {}, "status": "Failure", "code": 404}),
        Answer(
            200, {"metadata": {"resourceVersion": "7"}, "items": [obj("a", "3"), obj("b", "7")]}
        ),
    ]
    seen = []

    async def list_call(*args, **kwargs):
        return answers.pop(0)

    async def handler(kind: str, o: dict) -> None:
        seen.append((kind, o["metadata"]["name"], o["metadata"]["resourceVersion"]))

    informer = Informer("things", list_call, handler=handler)
    assert await informer._list() == "5"
    with pytest.raises(Exception) as e:  # which one: below
        await informer._list()
    assert [s for s in seen if s[0] == "DELETED"] == []
    assert isinstance(e.value, ApiException) and e.value.status == 404
    assert set(informer.objects) == {"a", "b"}
    assert await informer._list() == "7"
    assert seen == [("ADDED", "a", "3"), ("ADDED", "b", "5"), ("MODIFIED", "b", "7")]
