"""The Kubernetes backend: one Job per build (its manifest and state, pure, in
:mod:`.kubernetes_job`), and the thin async shell that creates, reads, follows and deletes
it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from ..kube import create_once, ignore_not_found, or_none, raw_json
from ..requests import BuildSpec
from ..vocabulary import MANAGED_SELECTOR, job_id_of
from .base import Backend, BackendState, LogReader, Watched
from .kubernetes_job import JobConfig, job_manifest, job_name, job_namespace, job_state

log = logging.getLogger("aicoe_spawner.builder.kubernetes")


class KubernetesBackend(Backend):
    """A Job per build (:func:`job_manifest`); its state from the Job and its pod."""

    name = "kubernetes"
    writes_stream_status = True  # no image controller writes the ImageStream status
    imports_images = False  # the builder's import loop imports external images
    follows_logs = True

    def __init__(
        self, api: client.ApiClient, config: JobConfig, log_reader: LogReader | None = None
    ) -> None:
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.config = config
        # Asks the hub's version when the config has none (the image check compares majors);
        # learned once, at the first build that finds the hub answering.
        self.hub_version_lookup: Callable[[], Awaitable[str | None]] | None = None
        self.log_reader = log_reader or self._read_pod_log

    @classmethod
    def from_settings(cls, api, settings, log_reader=None) -> KubernetesBackend:
        s = settings
        return cls(
            api,
            JobConfig(
                builder_image=s.builder_image,
                push_secret=s.push_secret,
                tls_verify=s.tls_verify,
                timeout_seconds=s.timeout,
                namespace=s.build_namespace,
                storage_size=s.build_storage,
                node_image_store=s.build_node_image_store,
                node_selector=dict(s.build_node_selector),
                tolerations=list(s.build_tolerations),
                check_image=s.check_image,
                hub_version=s.hub_version,
            ),
            log_reader=log_reader,
        )

    def _ns(self, spec: BuildSpec) -> str:
        return job_namespace(spec, self.config)

    async def submit(self, spec: BuildSpec) -> None:
        if self.config.check_image and not self.config.hub_version and self.hub_version_lookup:
            version = await self.hub_version_lookup()
            if version:
                self.config = replace(self.config, hub_version=version)
        await create_once(
            self.batch.create_namespaced_job(self._ns(spec), job_manifest(spec, self.config))
        )

    async def _job(self, spec: BuildSpec) -> dict | None:
        return await or_none(
            raw_json(
                self.batch.read_namespaced_job(
                    job_name(spec.job_id), self._ns(spec), _preload_content=False
                )
            )
        )

    async def _pods(self, spec: BuildSpec) -> list[dict]:
        pods = await raw_json(
            self.core.list_namespaced_pod(
                self._ns(spec),
                label_selector=f"job-name={job_name(spec.job_id)}",
                _preload_content=False,
            )
        )
        return pods["items"]

    async def _read_pod_log(
        self, namespace: str, pod: str, container: str | None = None
    ) -> str | None:
        try:
            return await self.core.read_namespaced_pod_log(
                pod, namespace, container=container, limit_bytes=1 << 20
            )
        except Exception:
            return None

    async def state(self, spec: BuildSpec, *, with_log: bool = True) -> BackendState:
        job, pods = await asyncio.gather(self._job(spec), self._pods(spec))
        state = job_state(job, pods)
        text = await self._pod_log(spec, pods) if with_log else None
        if text is not None:
            state = replace(state, log=text)
        return state

    async def _pod_log(self, spec: BuildSpec, pods: list[dict]) -> str | None:
        if not pods:
            return None
        name, ns = pods[0]["metadata"]["name"], self._ns(spec)
        parts = [await self.log_reader(ns, name, c) for c in STEPS]
        if any(p is not None for p in parts):
            return "".join(p for p in parts if p)
        return None

    async def read_log(self, spec: BuildSpec) -> str | None:
        return await self._pod_log(spec, await self._pods(spec))

    def watched(self, namespace: str) -> list[Watched]:
        ns = self.config.namespace or namespace
        return [
            Watched("jobs", self.batch.list_namespaced_job, (ns,), _job_of_job, _managed),
            Watched("build pods", self.core.list_namespaced_pod, (ns,), _job_of_pod, _managed),
        ]

    async def follow_log(self, spec: BuildSpec) -> AsyncIterator[str]:
        """The build pod's steps (``build``, then ``push``) one after the other, each with
        ``follow=true`` (the kubelet streams it as it is written). A harness that plays the
        kubelet (``log_reader`` given) is read again every half second instead."""
        ns, pod, done = self._ns(spec), None, ""
        while pod is None:
            pods = await self._pods(spec)
            if pods:
                pod = pods[0]["metadata"]["name"]
            else:
                await asyncio.sleep(1.0)
        if self.log_reader != self._read_pod_log:  # a harness: every step, read again
            seen: str | None = None
            while True:
                parts = [await self.log_reader(ns, pod, step) for step in STEPS]
                text = "".join(p for p in parts if p)
                if text and text != seen:
                    seen = text
                    yield text
                await asyncio.sleep(0.5)
        for step in STEPS:
            text = ""
            async for text in self._follow_step(ns, pod, step):
                yield done + text
            done += text

    async def _follow_step(self, ns: str, pod: str, step: str) -> AsyncIterator[str]:
        text = ""
        while True:
            try:
                response = await self.core.read_namespaced_pod_log(
                    pod, ns, container=step, follow=True, _preload_content=False
                )
            except ApiException as e:
                if e.status == 400:  # the step has not started yet
                    await asyncio.sleep(1.0)
                    continue
                return  # the pod is gone
            async with response:
                # unread (_preload_content=False), an error is a response, not an exception:
                # its body is the API server's Status, never the step's log
                if response.status == 400:  # the step has not started yet
                    await asyncio.sleep(1.0)
                    continue
                if response.status != 200:
                    return  # the pod is gone (or not readable): the state reads the rest
                text = ""
                async for chunk in response.content.iter_any():
                    text += chunk.decode(errors="replace")
                    if len(text) > 1 << 20:
                        text = text[-(1 << 20) :]
                    yield text
            return

    async def exists(self, spec: BuildSpec) -> bool:
        return await self._job(spec) is not None

    async def cancel(self, spec: BuildSpec) -> None:
        await self.cleanup(spec)

    async def cleanup(self, spec: BuildSpec) -> None:
        await self.delete_object(spec.namespace, job_name(spec.job_id))

    def validate(self, spec: BuildSpec) -> None:
        """Every valid spec can be built by a Job."""

    async def finished_objects(self, namespace: str) -> list[tuple[str, str]]:
        """(name, finish time) of this builder's finished Jobs (in the build namespace when
        one is configured, else in ``namespace``)."""
        jobs = await raw_json(
            self.batch.list_namespaced_job(
                self.config.namespace or namespace,
                label_selector=MANAGED_SELECTOR,
                _preload_content=False,
            )
        )
        out = []
        for job in jobs["items"]:
            status = job.get("status") or {}
            ends = [
                c.get("lastTransitionTime") or ""
                for c in status.get("conditions") or []
                if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            ]
            if ends:
                out.append((job["metadata"]["name"], status.get("completionTime") or max(ends)))
        return out

    async def delete_object(self, namespace: str, name: str) -> None:
        namespace = self.config.namespace or namespace
        await ignore_not_found(
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        )
        await ignore_not_found(
            self.core.delete_collection_namespaced_pod(namespace, label_selector=f"job-name={name}")
        )


STEPS = ("build", "push")  # the build pod's containers, in the order they run
_managed = {"label_selector": MANAGED_SELECTOR}


def _job_of_job(job: dict) -> str | None:
    name = job.get("metadata", {}).get("name") or ""
    return job_id_of(name) if name.startswith(job_name("")) else None


def _job_of_pod(pod: dict) -> str | None:
    return _job_of_job(
        {"metadata": {"name": (pod["metadata"].get("labels") or {}).get("job-name")}}
    )


__all__ = ["KubernetesBackend"]
