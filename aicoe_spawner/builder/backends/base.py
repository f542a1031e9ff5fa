"""The contract between the build service and a build backend (the docstrings are the
contract). A backend turns a resolved :class:`BuildSpec` into cluster objects that build and
push its image (a Job, an OpenShift Build, ...), and reports what those objects say as a
:class:`BackendState`. It keeps no state of its own between calls: everything it needs is in
the spec and on the API server, so any replica may call any method for any build, and calls
repeat (level-triggered reconcile).

The service decides everything else (records, phases, the catalog, quotas): see
:mod:`..transitions`. Only ``backends/`` knows which backend runs; the rest of the builder
talks to :class:`Backend`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..requests import BuildSpec

if TYPE_CHECKING:
    from kubernetes_asyncio import client

    from ..settings import Settings


class LogReader(Protocol):
    """Reads a pod's log: ``(namespace, pod, container=None) -> text | None`` (None: no log
    to read, e.g. the pod is gone or the kubelet does not answer; never raises). ``container``
    None is the pod's only (or every) container. The default reads the kubelet's log API; a
    test harness playing the kubelet passes its own."""

    def __call__(
        self, namespace: str, pod: str, container: str | None = None
    ) -> Awaitable[str | None]: ...


@dataclass(frozen=True)
class BackendState:
    """What a backend's objects say about one build, read now."""

    phase: str  # a BuildPhase: pending | building | ready | failed | cancelled
    message: str = ""
    digest: str | None = None  # sha256:... when ready
    image_ref: str | None = None  # pinned reference when ready
    log: str | None = None  # the log so far, when the backend can read it
    # from the image check when ready: (name, version) pairs; None = no report (keep the tag's)
    software: tuple[tuple[str, str], ...] | None = None  # Python, JupyterLab, JupyterHub
    dependencies: tuple[tuple[str, str], ...] | None = None  # top-level Python packages


@dataclass(frozen=True)
class Watched:
    """One kind of object a backend's builds are made of, for the leader's watches: what
    ``list_call(*args, **kwargs)`` lists, and the job id an object belongs to (None: not a
    build's)."""

    what: str
    list_call: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    job_id: Callable[[dict[str, Any]], str | None]
    kwargs: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """A build backend. Subclasses set :attr:`name` and register in
    :data:`aicoe_spawner.builder.backends.BACKENDS`."""

    #: the ``backend`` setting that selects it
    name: ClassVar[str]
    #: True when the builder itself writes the ImageStream's status tag of a finished
    #: build; False where the cluster's image controller does (OpenShift's build output)
    writes_stream_status: ClassVar[bool] = True
    #: True when the cluster imports external images itself (OpenShift's image import
    #: controller), so the builder runs no import loop
    imports_images: ClassVar[bool] = False
    #: True when :meth:`follow_log` streams the log (the service then follows running
    #: builds' logs instead of reading them whole with :meth:`state`)
    follows_logs: ClassVar[bool] = False

    #: asks the hub's JupyterHub version (for the image check) when the configuration has
    #: none; set by the service's owner, called at submit until it answers
    hub_version_lookup: Callable[[], Awaitable[str | None]] | None = None
    log_reader: LogReader

    @classmethod
    @abc.abstractmethod
    def from_settings(
        cls, api: client.ApiClient, settings: Settings, log_reader: LogReader | None = None
    ) -> Backend:
        """The backend configured by the builder's settings."""

    @abc.abstractmethod
    def validate(self, spec: BuildSpec) -> None:
        """Raise :class:`~..requests.BuildRequestError` (400, naming the field) for a spec
        this backend cannot build; called before any record exists. Pure, no I/O."""

    @abc.abstractmethod
    async def submit(self, spec: BuildSpec) -> None:
        """Create the objects that run the build, named from ``spec.job_id``. Idempotent: an
        object that exists already (another replica, an earlier attempt) is not an error. An
        :class:`ApiException` 4xx other than 408/409/429 means the API server refused it (the
        service counts refusals and fails the build after a few); anything else is retried."""

    @abc.abstractmethod
    async def exists(self, spec: BuildSpec) -> bool:
        """True while the build's object (Job, Build) exists."""

    @abc.abstractmethod
    async def state(self, spec: BuildSpec, *, with_log: bool = True) -> BackendState:
        """The build's state as its objects report it now, with the log so far when it can be
        read (not read when ``with_log`` is False: the service follows it). ``pending`` with
        no object (not created yet, or gone: the service tells them
        apart with :meth:`exists` and the record). ``ready`` carries the pushed digest (and
        the image check's report); a build that says it succeeded but names no digest is
        ``failed``. ``cancelled`` only for a cancel outside the builder."""

    @abc.abstractmethod
    async def cancel(self, spec: BuildSpec) -> None:
        """Stop the build (the service has already written ``cancelled``). Idempotent; a
        build that is gone is cancelled."""

    @abc.abstractmethod
    async def cleanup(self, spec: BuildSpec) -> None:
        """Delete the build's objects (and their pods). Idempotent (404s are fine)."""

    @abc.abstractmethod
    async def finished_objects(self, namespace: str) -> list[tuple[str, str]]:
        """``(object name, finish time)`` of this builder's finished build objects (by the
        managed-by label; the name is ``object_name(job_id)``), for retention."""

    @abc.abstractmethod
    async def delete_object(self, namespace: str, name: str) -> None:
        """Delete one finished build object by name (as :meth:`finished_objects` lists it)
        and its pods. Idempotent."""

    def watched(self, namespace: str) -> list[Watched]:
        """The objects whose changes change a build's state (the service watches them and
        reconciles the builds they belong to). Default: none (the periodic resync only)."""
        return []

    async def read_log(self, spec: BuildSpec) -> str | None:
        """The build's whole log so far (None: none to read). Default: the state's."""
        return (await self.state(spec)).log

    async def follow_log(self, spec: BuildSpec) -> AsyncIterator[str]:
        """The log as it grows, each item the whole text so far, until the build's pod has
        ended (or the iterator is closed). Never raises for a pod that is not there yet or
        gone: it waits, or ends. Default: nothing (then :meth:`state` reads the log)."""
        return
        yield


def describe(backend: type[Backend] | Backend) -> dict[str, Any]:
    """What a backend declares (for logs and docs)."""
    return {
        "name": backend.name,
        "writes_stream_status": backend.writes_stream_status,
        "imports_images": backend.imports_images,
    }
