"""kubernetes_asyncio with ``_preload_content=False`` (raw JSON, no model conversion) does
not raise for error statuses: :func:`raw_json` does."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio.client.rest import ApiException


async def raw_json(coro) -> Any:
    response = await coro
    if not 200 <= response.status <= 299:
        text = await response.text()
        response.release()
        raise ApiException(status=response.status, reason=text[:500])
    return await response.json()
