"""Pure parts of the backends (manifests, phase mapping), the backend contract (backends/base.py)
and who may import a backend; the branch TTL."""

from __future__ import annotations

import ast
import asyncio
import datetime
import inspect
from pathlib import Path

import pytest

from aicoe_spawner.builder import backends
from aicoe_spawner.builder.backends.base import Backend
from aicoe_spawner.builder.backends.kubernetes import KubernetesBackend
from aicoe_spawner.builder.backends.kubernetes_job import JobConfig
from aicoe_spawner.builder.backends.openshift import (
    OpenShiftBackend,
    build_state,
    buildconfig_manifest,
    detect_backend,
    dockerfile_path,
)
from aicoe_spawner.builder.imagestream import (
    EXPIRES_ANNOTATION,
    expired,
    new_stream,
    with_tag,
    without_tags,
)
from aicoe_spawner.builder.requests import BuildRequestError, BuildSpec
from aicoe_spawner.builder.settings import Settings

D = "sha256:" + "a" * 64


def spec(**kw) -> BuildSpec:
    base = dict(
        id="b1",
        repo="https://github.com/org/nb",
        ref="main",
        commit="c" * 40,
        ref_kind="branch",
        namespace="ns",
        stream="nb",
        tag="main",
        strategy="dockerfile",
        dockerfile="Dockerfile",
        context_dir="",
        base_image="",
        output_image="r.local/ns/nb:main",
        display_name="",
        description="",
        requester="alice",
    )
    base.update(kw)
    return BuildSpec(**base)


@pytest.mark.parametrize(
    ("status", "phase", "message"),
    [
        ({}, "building", "New"),
        ({"phase": "New"}, "building", "New"),
        ({"phase": "Pending"}, "building", "Pending"),
        ({"phase": "Running"}, "building", "Running"),
        ({"phase": "Failed", "message": "boom"}, "failed", "boom"),
        ({"phase": "Failed", "reason": "FetchSourceFailed"}, "failed", "FetchSourceFailed"),
        ({"phase": "Error", "message": "evicted"}, "failed", "evicted"),
        ({"phase": "Cancelled"}, "cancelled", "cancelled"),
        ({"phase": "Complete"}, "building", "build complete; waiting for the image digest"),
        ({"phase": "Complete", "output": {"to": {"imageDigest": D}}}, "ready", ""),
        ({"phase": "Complete", "output": {"to": {"imageDigest": "sha256:x"}}}, "building", None),
    ],
)
def test_build_phase_mapping(status, phase, message):
    state = build_state({"status": status}, None, spec())
    assert state.phase == phase
    if message is not None:
        assert state.message == message


def test_no_build_is_pending_and_stream_digest_wins():
    assert build_state(None, None, spec()).phase == "pending"
    stream = {
        "status": {"tags": [{"tag": "main", "items": [{"dockerImageReference": "r/x@" + D}]}]}
    }
    state = build_state({"status": {"phase": "Complete"}}, stream, spec())
    assert (state.phase, state.digest, state.image_ref) == ("ready", D, "r/x@" + D)


def test_dockerfile_path_is_relative_to_the_context():
    assert dockerfile_path(spec(context_dir="a/b", dockerfile="a/b/c/Dockerfile")) == "c/Dockerfile"
    assert dockerfile_path(spec()) == "Dockerfile"
    with pytest.raises(BuildRequestError):
        dockerfile_path(spec(context_dir="a", dockerfile="Dockerfile"))
    bc = buildconfig_manifest(spec(strategy="source", base_image="quay.io/x/y:1", dockerfile=""))
    assert bc["spec"]["strategy"]["sourceStrategy"]["from"]["name"] == "quay.io/x/y:1"


def test_detect_backend():
    assert detect_backend(["build.openshift.io"]) == "openshift"
    assert detect_backend(["apps", "image.openshift.io"]) == "kubernetes"


def test_expiry_annotation_and_expired_tags():
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    s = spec()
    stream = with_tag(new_stream(s), s, "ready", expires_at=now)
    stream = with_tag(stream, spec(tag="v1", ref="v1", ref_kind="tag", id="b2"), "ready")
    ann = {t["name"]: t["annotations"] for t in stream["spec"]["tags"]}
    assert ann["main"][EXPIRES_ANNOTATION] == "2025-01-01T00:00:00Z"
    assert EXPIRES_ANNOTATION not in ann["v1"]
    assert expired(stream, now - datetime.timedelta(seconds=1)) == []
    assert expired(stream, now) == [("main", "b1")]
    stream["status"] = {"tags": [{"tag": "main"}, {"tag": "v1"}]}
    left = without_tags(stream, {"main"})
    assert [t["name"] for t in left["spec"]["tags"]] == ["v1"]
    assert left["status"]["tags"] == [{"tag": "v1"}]
    # a tag build of the same name drops the expiry; no `from` on OpenShift
    again = with_tag(stream, spec(ref_kind="tag"), "ready", image_from=False)
    tag = next(t for t in again["spec"]["tags"] if t["name"] == "main")
    assert EXPIRES_ANNOTATION not in tag["annotations"]
    bad = {"spec": {"tags": [{"name": "x", "annotations": {EXPIRES_ANNOTATION: "soon"}}]}}
    assert expired(bad, now) == []


# -- the backend contract (backends/base.py) ------------------------------------------------


BUILDER = Path(backends.__file__).resolve().parents[1]


def test_both_backends_implement_the_whole_contract():
    assert backends.BACKENDS == {"kubernetes": KubernetesBackend, "openshift": OpenShiftBackend}
    contract = set(Backend.__abstractmethods__)
    assert contract == {
        "from_settings",
        "validate",
        "submit",
        "exists",
        "state",
        "cancel",
        "cleanup",
        "finished_objects",
        "delete_object",
    }
    for impl in backends.BACKENDS.values():
        assert issubclass(impl, Backend) and not inspect.isabstract(impl)
        for name in contract - {"from_settings"}:
            ours, theirs = getattr(Backend, name), getattr(impl, name)
            assert list(inspect.signature(ours).parameters) == list(
                inspect.signature(theirs).parameters
            ), (impl.name, name)
            assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs)


def test_what_each_backend_declares():
    assert (KubernetesBackend.writes_stream_status, KubernetesBackend.imports_images) == (
        True,
        False,
    )
    assert (OpenShiftBackend.writes_stream_status, OpenShiftBackend.imports_images) == (
        False,
        True,
    )


def test_backend_type_by_setting():
    assert backends.backend_type("openshift") is OpenShiftBackend
    with pytest.raises(ValueError, match="auto"):
        backends.backend_type("auto")
    with pytest.raises(SystemExit, match=r"kubernetes \| openshift \| auto"):
        backends.backend_type("tekton")


def test_from_settings():
    s = Settings(namespace="ns", builder_image="b:1", timeout=99, build_namespace="builds")
    k = backends.backend_type("kubernetes").from_settings(object(), s)
    assert (k.config.builder_image, k.config.timeout_seconds, k.config.namespace) == (
        "b:1",
        99,
        "builds",
    )
    o = backends.backend_type("openshift").from_settings(object(), s)
    assert o.timeout_seconds == 99 and o.check_image == s.check_image


def test_one_log_reader_signature_for_both_backends():
    """Each backend calls the reader ``(namespace, pod[, container])``: one reader that takes
    ``container=None`` serves both."""
    calls = []

    async def reader(namespace: str, pod: str, container: str | None = None) -> str | None:
        calls.append((namespace, pod, container))
        return f"{container or 'all'}\n"

    class Batch:
        async def read_namespaced_job(self, *a, **kw):
            return None

    k = KubernetesBackend(object(), JobConfig(), log_reader=reader)

    async def job(_):
        return {"status": {"active": 1}}

    async def pods(_):
        return [{"metadata": {"name": "imgbuild-b1-x"}, "status": {}}]

    k._job, k._pods = job, pods
    state = asyncio.run(k.state(spec()))
    assert state.log == "build\npush\n"
    o = OpenShiftBackend(object(), log_reader=reader)

    async def get(plural, _):
        return {"status": {"phase": "Running"}}

    o._get = get
    state = asyncio.run(o.state(spec()))
    assert state.log == "all\n"
    assert calls == [
        ("ns", "imgbuild-b1-x", "build"),
        ("ns", "imgbuild-b1-x", "push"),
        ("ns", "imgbuild-b1-build", None),
    ]


def _imports(path: Path) -> set[str]:
    """The builder modules ``path`` imports (resolved relative imports)."""
    package = "aicoe_spawner." + ".".join(path.relative_to(BUILDER.parent).with_suffix("").parts)
    package = package.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_module_outside_backends_imports_a_backend():
    """Only backends/ knows which backend runs: the rest imports the package or its base."""
    private = {
        "aicoe_spawner.builder.backends.kubernetes",
        "aicoe_spawner.builder.backends.openshift",
    }
    offenders = {}
    for path in sorted(BUILDER.rglob("*.py")):
        if "backends" in path.relative_to(BUILDER).parts:
            continue
        found = {m for m in _imports(path) if any(m == p or m.startswith(p + ".") for p in private)}
        if found:
            offenders[str(path.relative_to(BUILDER))] = sorted(found)
    assert offenders == {}


class _Stream:
    """A log response as kubernetes_asyncio hands it unread (``_preload_content=False``):
    an HTTP status and a body in chunks."""

    def __init__(self, status: int, *chunks: bytes) -> None:
        self.status, self.chunks = status, chunks
        self.content = self

    async def iter_any(self):
        for chunk in self.chunks:
            yield chunk

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


def test_a_followed_log_is_the_steps_output_never_the_api_servers_answer(monkeypatch):
    """While a step waits to start the API server answers 400 with a Status body; followed
    with ``follow=true`` the log is the build step's lines then the push step's, from their
    first line, and no Status text."""
    waiting = b'{"kind":"Status","message":"container \\"build\\" is waiting to start"}'
    answers = {
        "build": [_Stream(400, waiting), _Stream(200, b"==> fetching\n", b"==> built\n")],
        "push": [_Stream(400, waiting), _Stream(200, b"==> pushed\n")],
    }
    asked = []

    class Core:
        async def read_namespaced_pod_log(self, pod, ns, container, follow, _preload_content):
            asked.append((container, follow, _preload_content))
            return answers[container].pop(0)

    async def no_wait(_):
        return None

    k = KubernetesBackend(object(), JobConfig())
    k.core = Core()

    async def pods(_):
        return [{"metadata": {"name": "imgbuild-b1-x"}, "status": {}}]

    k._pods = pods
    monkeypatch.setattr(asyncio, "sleep", no_wait)

    async def follow():
        return [text async for text in k.follow_log(spec())]

    seen = asyncio.run(follow())
    assert seen[-1] == "==> fetching\n==> built\n==> pushed\n"
    assert not any("Status" in text for text in seen)
    assert asked == [("build", True, False)] * 2 + [("push", True, False)] * 2


def test_a_harness_followed_log_holds_every_step_as_the_state_reads_it(monkeypatch):
    """With a ``log_reader`` (a harness playing the kubelet) the followed text is the steps'
    logs joined, the push step's lines included, exactly what ``read_log`` returns."""
    logs = {"build": ["==> built\n"], "push": [None, "==> pushed\n"]}

    async def reader(ns, pod, container):
        answers = logs[container]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    k = KubernetesBackend(object(), JobConfig(), log_reader=reader)

    async def pods(_):
        return [{"metadata": {"name": "imgbuild-b1-x"}, "status": {}}]

    k._pods = pods
    real_sleep = asyncio.sleep

    async def no_wait(_):
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", no_wait)

    async def follow():
        seen = []
        async for text in k.follow_log(spec()):
            seen.append(text)
            if "pushed" in text:
                break
        return seen, await k.read_log(spec())

    seen, whole = asyncio.run(asyncio.wait_for(follow(), 5))
    assert seen == ["==> built\n", "==> built\n==> pushed\n"]
    assert seen[-1] == whole


def test_a_log_stream_that_lags_never_replaces_the_final_log():
    """Once the reconcile read the ended build's whole log (and stopped counting the build as
    followed), a chunk the stream still delivers is dropped, not remembered over it."""
    from types import SimpleNamespace

    from aicoe_spawner.builder.controller import Controller

    remembered = []

    class Backend:
        async def follow_log(self, _spec):
            yield "==> built\n"
            service.log_followed.discard("b1")  # the reconcile read the final log here
            yield "==> built\n"  # a lagging stream: the build step alone

    async def cache(*_a, **_k):
        return None

    service = SimpleNamespace(
        backend=Backend(),
        limits=SimpleNamespace(log_tail_interval_seconds=3600),
        log_followed={"b1"},
        builds={},
        _remember_log=lambda bid, text: remembered.append(text) or True,
        _cache=cache,
        _tail_written={"b1": float("inf")},
    )
    controller = object.__new__(Controller)
    controller.service, controller._logs = service, {}
    asyncio.run(controller._stream(SimpleNamespace(id="b1", spec=None)))
    assert remembered == ["==> built\n"]
