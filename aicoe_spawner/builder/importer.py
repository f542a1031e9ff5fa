"""The image import loop of the builder service (plain Kubernetes; on OpenShift the platform
imports): every ``poll`` seconds it lists the notebook ImageStreams of its namespaces, asks
:func:`imports.due` which tags need importing, resolves them in the registry, and writes
:func:`imports.with_results` to the status subresource with the listed resourceVersion as
precondition. A 409 re-reads the stream and decides again, so several replicas may run it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from ..catalog import NOTEBOOK_IMAGE_LABEL
from . import imports
from .imagestream import GROUP, PLURAL, VERSION
from .imports import Failed, ImageReference, ReferenceError, Result, Target
from .kube import raw_json

log = logging.getLogger("aicoe_spawner.builder.importer")


class Resolver(Protocol):
    async def resolve(
        self, ref: ImageReference, credentials: tuple[str, str] | None = None, *, insecure: bool
    ) -> Result: ...


class Importer:
    """Imports the DockerImage tags of the notebook ImageStreams in ``namespaces``."""

    def __init__(
        self,
        api: client.ApiClient,
        namespaces: tuple[str, ...],
        resolver: Resolver,
        *,
        interval: float = imports.DEFAULT_INTERVAL,
        retry: float = imports.DEFAULT_RETRY,
        poll: float = 30.0,
        label_selector: str = f"{NOTEBOOK_IMAGE_LABEL}=true",
        concurrency: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespaces = namespaces
        self.resolver = resolver
        self.interval, self.retry, self.poll = interval, retry, poll
        self.label_selector = label_selector
        self.clock = clock
        self._limit = asyncio.Semaphore(concurrency)
        # (namespace, stream) -> tag -> time of the last attempt by this process
        self._attempts: dict[tuple[str, str], dict[str, float]] = {}
        self._task: asyncio.Task | None = None
        # API requests made, by verb (the report's requests per stream per hour)
        self.requests = {"list": 0, "get": 0, "update": 0, "secret": 0}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="image-import")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("image import cycle failed; retrying")
            await asyncio.sleep(self.poll)

    # -- one cycle -------------------------------------------------------------------------

    async def run_once(self) -> int:
        """One pass over every namespace; returns the number of status writes."""
        writes = 0
        for namespace in self.namespaces:
            self.requests["list"] += 1
            try:
                listed = await self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, label_selector=self.label_selector
                )
            except ApiException as e:  # e.g. 403: the other namespaces are still imported
                log.error("cannot list ImageStreams in %s: %s %s", namespace, e.status, e.reason)
                continue
            streams = [s for s in listed.get("items") or [] if isinstance(s, dict)]
            names = {(s.get("metadata") or {}).get("name") for s in streams}
            for key in [k for k in self._attempts if k[0] == namespace and k[1] not in names]:
                del self._attempts[key]  # the stream is gone
            secrets = _SecretCache(self, namespace)
            results = await asyncio.gather(
                *(self._import_stream(namespace, s, secrets) for s in streams),
                return_exceptions=True,
            )
            for stream, result in zip(streams, results, strict=True):
                if isinstance(result, BaseException):
                    name = (stream.get("metadata") or {}).get("name")
                    log.error("importing %s/%s failed: %r", namespace, name, result)
                else:
                    writes += result
        return writes

    async def _import_stream(self, namespace: str, stream: dict, secrets: _SecretCache) -> int:
        name = stream["metadata"]["name"]
        targets = imports.due(
            stream,
            self.clock(),
            self._attempts.get((namespace, name)),
            interval=self.interval,
            retry=self.retry,
        )
        if not targets:
            return 0
        results: dict[str, tuple[Target, Result]] = {}
        for target, result in zip(
            targets,
            await asyncio.gather(*(self._resolve(namespace, stream, t, secrets) for t in targets)),
            strict=True,
        ):
            self._attempts.setdefault((namespace, name), {})[target.tag] = self.clock()
            results[target.tag] = (target, result)
            log.info(
                "import %s/%s:%s (%s) from %s: %s",
                namespace,
                name,
                target.tag,
                target.why,
                target.reference,
                getattr(result, "digest", None) or f"{result.reason}: {result.message}",
            )
        return await self._write(namespace, stream, results)

    async def _resolve(
        self, namespace: str, stream: dict, target: Target, secrets: _SecretCache
    ) -> Result:
        try:
            ref = imports.parse_reference(target.reference)
        except ReferenceError as e:
            return Failed("InvalidImageReference", str(e))
        try:
            credentials, source = await secrets.credentials(stream, ref.registry)
        except LookupError as e:
            return Failed("Unauthorized", str(e))
        async with self._limit:
            result = await self.resolver.resolve(ref, credentials, insecure=target.insecure)
        if isinstance(result, Failed) and result.reason == "Unauthorized":
            # what the admin needs to fix it: which Secret's password was refused, or none sent
            note = (
                f"with the credentials of pull secret {source!r}"
                if source
                else f"no pull secret has credentials for {ref.registry}: asked anonymously"
            )
            result = Failed(result.reason, f"{result.message} ({note})")
        return result

    async def _write(
        self, namespace: str, stream: dict, results: dict[str, tuple[Target, Result]]
    ) -> int:
        name = stream["metadata"]["name"]
        for attempt in range(10):
            # only results for tags that still come from the reference that was resolved
            current = {
                tag: ref for tag, ref, _, _ in imports.importable_tags(stream) if tag in results
            }
            usable = {
                t: r for t, (target, r) in results.items() if current.get(t) == target.reference
            }
            body = imports.with_results(stream, usable, self.clock())
            if not usable or body.get("status") == stream.get("status"):
                return 0
            try:
                self.requests["update"] += 1
                await self.custom.replace_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, name, body
                )
                return 1
            except ApiException as e:
                if e.status == 404:
                    return 0
                if e.status != 409 or attempt == 9:
                    raise
            await asyncio.sleep(0.05 * (attempt + 1))
            try:
                self.requests["get"] += 1
                stream = await self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name
                )
            except ApiException as e:
                if e.status == 404:
                    return 0
                raise
        return 0


class _SecretCache:
    """The pull secrets of one namespace, read once per cycle (Secrets by name, and the
    ``default`` ServiceAccount's ``imagePullSecrets``)."""

    def __init__(self, importer: Importer, namespace: str) -> None:
        self.importer = importer
        self.namespace = namespace
        self._secrets: dict[str, dict | None] = {}
        self._account: dict | bool | None = False  # False: not read yet
        self._lock = asyncio.Lock()  # concurrent streams read each object once

    async def _read(self, coro_factory: Callable[[], Any]) -> dict | None:
        self.importer.requests["secret"] += 1
        try:
            return await raw_json(coro_factory())
        except ApiException as e:
            if e.status in (403, 404):
                return None
            raise

    async def credentials(
        self, stream: dict, registry: str
    ) -> tuple[tuple[str, str] | None, str | None]:
        """Credentials for ``registry`` and the Secret they came from, (None, None) for none;
        raises LookupError when a Secret that the stream names cannot be read."""
        async with self._lock:
            return await self._credentials(stream, registry)

    async def _credentials(
        self, stream: dict, registry: str
    ) -> tuple[tuple[str, str] | None, str | None]:
        core = self.importer.core
        if self._account is False:
            self._account = await self._read(
                lambda: core.read_namespaced_service_account(
                    "default", self.namespace, _preload_content=False
                )
            )
        account = self._account if isinstance(self._account, dict) else None
        own = set(imports.pull_secret_names(stream))
        for name in imports.pull_secret_names(stream, account):
            if name not in self._secrets:
                self._secrets[name] = await self._read(
                    lambda name=name: core.read_namespaced_secret(
                        name, self.namespace, _preload_content=False
                    )
                )
            secret = self._secrets[name]
            if secret is None:
                if name in own:
                    raise LookupError(
                        f"pull secret {name!r} not found in namespace {self.namespace!r}"
                    )
                continue
            found = imports.credentials_for(registry, [imports.dockerconfig(secret)])
            if found:
                return found, name
        return None, None
