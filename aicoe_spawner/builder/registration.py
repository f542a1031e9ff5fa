"""Writes the ImageStream for a build (the pure ``with_*`` functions of
:mod:`.imagestream`) with a thin async shell that retries on conflicts (several replicas may
write the same stream); also the sweep of abandoned streams and the expiry of branch tags."""

from __future__ import annotations

import datetime

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from .image_check import Packages
from .imagestream import (
    GROUP,
    MANAGER,
    PLURAL,
    PUBLISHER_LABEL,
    VERSION,
    OwnershipError,
    PublishError,
    abandoned,
    after_end,
    expired,
    new_stream,
    ownership,
    with_status_tag,
    with_tag,
    without_tags,
)
from .kube import ignore_not_found, is_conflict, is_not_found, or_none, retry_on_conflict
from .naming import user_label
from .publish import publisher_of, refusal
from .requests import BuildSpec
from .vocabulary import MANAGED_BY_LABEL, utcnow
from .vocabulary import BuildPhase as P

# ImageStream writes after a conflict: read again and decide again, up to 20 times
_RETRY = {"attempts": 20, "backoff": 0.02, "cap": 1.0, "jitter": False}


class Registrar:
    """Applies :func:`with_tag` / :func:`with_status_tag` to the API server."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        write_status: bool = True,
        branch_ttl_seconds: int = 0,
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        # False on OpenShift: the build's output and the image controller write the tag
        self.write_status = write_status
        self.branch_ttl_seconds = branch_ttl_seconds  # 0: branch images never expire

    def _expiry(self, spec: BuildSpec) -> datetime.datetime | None:
        """Tags built from a branch expire ``branch_ttl_seconds`` after their last write
        (a rebuild of the branch renews them); tags and commits never do."""
        if self.branch_ttl_seconds <= 0 or spec.ref_kind != "branch":
            return None
        now = utcnow()
        return now + datetime.timedelta(seconds=self.branch_ttl_seconds)

    def _with_tag(
        self,
        stream: dict,
        spec: BuildSpec,
        phase: str,
        message: str,
        digest: str | None = None,
        report: tuple[Packages | None, Packages | None] = (None, None),
    ) -> dict:
        return with_tag(
            stream,
            spec,
            phase,
            message,
            image_from=self.write_status,
            expires_at=self._expiry(spec),
            digest=digest,
            software=report[0],
            dependencies=report[1],
        )

    async def check(self, spec: BuildSpec) -> str | None:
        """Why the builder may not write the target stream of ``spec`` (None: it may)."""
        return ownership(await self._read(spec), spec.repo)

    async def read(self, spec: BuildSpec) -> dict | None:
        """The target stream of ``spec`` (None: absent)."""
        return await self._read(spec)

    async def published(self, namespace: str, requester: str) -> int:
        """How many of this builder's streams in ``namespace`` ``requester`` published."""
        streams = await self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            label_selector=f"{MANAGED_BY_LABEL}={MANAGER},"
            f"{PUBLISHER_LABEL}={user_label(requester)}",
        )
        return sum(1 for s in streams.get("items") or [] if publisher_of(s) == requester)

    async def _read(self, spec: BuildSpec) -> dict | None:
        return await or_none(self._get(spec.namespace, spec.stream))

    async def mark(
        self,
        spec: BuildSpec,
        phase: str,
        message: str = "",
        digest: str | None = None,
        report: tuple[Packages | None, Packages | None] = (None, None),
    ) -> dict:
        """Create or update the stream and its tags for ``phase``; retried on conflicts.
        Raises :class:`OwnershipError` for a stream that is not the builder's for the repo,
        :class:`PublishError` for content its requester may not publish there (both checked
        on the version replaced, so a concurrent writer cannot slip in). A failed or
        cancelled first build leaves nothing (:func:`after_end`)."""

        async def attempt() -> tuple[bool, dict]:
            current = await self._read(spec)
            why = ownership(current, spec.repo)
            if why is not None:
                raise OwnershipError(spec, why)
            refused = refusal(current, spec)
            if refused is not None:
                raise PublishError(refused)
            if phase in (P.FAILED, P.CANCELLED):
                return True, await self._end(current, spec, phase, message)
            if current is None:
                body = self._with_tag(new_stream(spec), spec, phase, message, digest, report)
                return True, await self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, spec.namespace, PLURAL, body
                )
            body = self._with_tag(current, spec, phase, message, digest, report)
            if body == current:
                return True, current
            return True, await self.custom.replace_namespaced_custom_object(
                GROUP, VERSION, spec.namespace, PLURAL, spec.stream, body
            )

        return await retry_on_conflict(attempt, **_RETRY, what=f"ImageStream {spec.stream}")

    async def _end(
        self, current: dict | None, spec: BuildSpec, phase: str, message: str
    ) -> dict | None:
        if current is None:
            return None  # never create a stream for a build that ended without an image
        body = after_end(current, spec, phase, message)
        if body is None:
            rv = current["metadata"]["resourceVersion"]
            await ignore_not_found(
                self.custom.delete_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    spec.namespace,
                    PLURAL,
                    spec.stream,
                    body={"preconditions": {"resourceVersion": rv}},
                )
            )
            return None
        if body == current:
            return current
        return await self.custom.replace_namespaced_custom_object(
            GROUP, VERSION, spec.namespace, PLURAL, spec.stream, body
        )

    async def ready(
        self,
        spec: BuildSpec,
        digest: str,
        software: Packages | None = None,
        dependencies: Packages | None = None,
    ) -> dict:
        """The tags serve ``digest``; the image check's report (None: none) is annotated."""
        stream = await self.mark(
            spec, P.READY.value, digest=digest, report=(software, dependencies)
        )
        if not self.write_status:
            return stream

        async def attempt() -> tuple[bool, dict]:
            current = await self._read(spec)
            why = ownership(current, spec.repo) if current is not None else "was deleted"
            if why is not None:
                raise OwnershipError(spec, why)
            assert current is not None
            body = with_status_tag(current, spec, digest)
            if body.get("status") == current.get("status"):
                return True, current
            return True, await self.custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, spec.namespace, PLURAL, spec.stream, body
            )

        return await retry_on_conflict(attempt, **_RETRY, what=f"ImageStream {spec.stream}")

    async def sweep(
        self, namespace: str, active: set[tuple[str, str]], grace_seconds: float
    ) -> list[str]:
        """Delete this builder's :func:`abandoned` streams in ``namespace``; their names."""
        now = utcnow()
        streams = await self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=f"{MANAGED_BY_LABEL}={MANAGER}"
        )
        deleted = []
        for stream in streams.get("items") or []:
            if not abandoned(stream, active, now, grace_seconds):
                continue
            meta = stream["metadata"]
            try:
                await self.custom.delete_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    meta["name"],
                    body={"preconditions": {"resourceVersion": meta["resourceVersion"]}},
                )
                deleted.append(meta["name"])
            except ApiException as e:
                if e.status not in (404, 409):  # gone, or written meanwhile: next run
                    raise
        return deleted

    async def expire(self, namespace: str, now: datetime.datetime | None = None) -> list[dict]:
        """Remove the expired spec and status tags of this builder's ImageStreams in
        ``namespace`` (and a stream left without tags). Returns what was removed:
        ``{"stream", "tag", "build_id"}`` per tag (``tag`` None: the stream was deleted)."""
        now = now or utcnow()
        streams = await self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            label_selector=f"{MANAGED_BY_LABEL}={MANAGER}",
        )
        removed: list[dict] = []
        for listed in streams.get("items") or []:
            removed.extend(await self._expire_one(namespace, listed, now))
        return removed

    async def _expire_one(self, namespace: str, listed: dict, now: datetime.datetime) -> list:
        """:meth:`expire` of one stream (as listed; read again after a conflict)."""
        name = listed["metadata"]["name"]
        seen: list[dict | None] = [listed]

        async def attempt() -> tuple[bool, list]:
            stream = seen[-1]
            if stream is None:  # deleted meanwhile
                return True, []
            gone = expired(stream, now)
            if not gone:
                return True, []
            try:
                return True, await self._remove(namespace, stream, gone)
            except ApiException as e:
                if is_not_found(e):
                    return True, []
                if is_conflict(e):
                    seen.append(await or_none(self._get(namespace, name)))
                raise

        return await retry_on_conflict(attempt, **_RETRY, what=f"ImageStream {name}")

    def _get(self, namespace: str, name: str):
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    async def _remove(self, namespace: str, stream: dict, gone: list[tuple[str, str]]) -> list:
        name = stream["metadata"]["name"]
        names = {tag for tag, _ in gone}
        body = without_tags(stream, names)
        removed = [{"stream": name, "tag": tag, "build_id": bid} for tag, bid in gone]
        if not body["spec"]["tags"]:
            await self.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body={"preconditions": {"resourceVersion": stream["metadata"]["resourceVersion"]}},
            )
            return [*removed, {"stream": name, "tag": None, "build_id": ""}]
        updated = await self.custom.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, body
        )
        status_tags = ((updated.get("status") or {}).get("tags")) or []
        if any((t or {}).get("tag") in names for t in status_tags):
            # the status subresource (plain Kubernetes; OpenShift's image controller prunes
            # status tags of removed spec tags itself)
            seen = [updated]

            async def attempt() -> tuple[bool, None]:
                try:
                    await self.custom.replace_namespaced_custom_object_status(
                        GROUP, VERSION, namespace, PLURAL, name, without_tags(seen[-1], names)
                    )
                except ApiException as e:
                    if e.status in (404, 405):
                        return True, None
                    if is_conflict(e):
                        seen.append(await self._get(namespace, name))
                    raise
                return True, None

            await retry_on_conflict(attempt, **_RETRY, what=f"ImageStream {name} status")
        return removed
