"""The image builder service under load: a real ``aicoe-image-builder`` process (its console
entry point, configured by environment variables as JupyterHub passes them), authenticated by
a real JupyterHub, against a local kube-apiserver and a local Git server.

- ``POST api/builds`` dedup hits: the same repo at the same commit, answered 200 with the
  existing build (each hit resolves the ref with ``git ls-remote`` and reads .aicoe-ci.yaml);
- ``GET api/images`` with ``--images`` (default 1,000) catalog images (1 tag per stream);
- ``--listeners`` (default 100) event-stream clients on one build: thread count and RSS of the
  service before/with them, and how long until every one has seen the build end (cancel);
- the service's RSS (VmRSS and peak VmHWM) idle, after the load and after the listeners;
- the build store with ``--records`` (default 1,000) finished ImageBuild records and
  ``--active`` (default 5) running builds: a full list, the active list a reconcile reads, and
  one reconcile (time, API requests, bytes listed);
- etcd bytes written per active build per minute: every write to the builder's objects
  (ImageBuild records and ConfigMaps, seen by a watch) while running builds' logs grow, for
  ``--write-seconds`` (default 60), scaled to a minute.

``GET api/images`` is compared with the baseline measured before it was served from the watch
cache (80 req/s at 1,000 images, issue 10).

There is no reference implementation to compare with (BinderHub needs a cluster), so the
figures are absolute; every loop is bounded (``--seconds`` per throughput phase).

    .venv/bin/python benchmarks/bench_builder.py [--images 1000] [--listeners 100]
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from common import (
    REPO,
    Row,
    arg_parser,
    control_plane,
    create_namespace,
    create_streams,
    print_table,
    rss_kib,
    run,
    say,
)

from aicoe_devcluster.controlplane import free_port

sys.path.insert(0, str(REPO / "tests"))
from harness.builder import builder_service_config
from harness.git import GitServer
from harness.hub import Hub

PREFIX = "/services/image-builder/"
IMAGES_BASELINE = 80.0  # req/s, GET api/images at 1,000 images before the cached rendering


class MeasurementFailed(SystemExit):
    """A measurement that failed: said, and the benchmark exits non-zero (no figure)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"MEASUREMENT FAILED: {message}")


class ErrorCount(logging.Handler):
    """Counts the builder's logged errors (a reconcile that failed logs and goes on)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        say(f"error logged: {record.getMessage()[:300]}")

    @classmethod
    def install(cls) -> ErrorCount:
        handler = cls()
        logging.getLogger("aicoe_spawner.builder").addHandler(handler)
        return handler


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def memory(pid: int) -> str:
    r = rss_kib(pid)
    return f"RSS {r['VmRSS'] / 1024:.1f} MiB (peak {r['VmHWM'] / 1024:.1f} MiB)"


async def throughput(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict,
    body: dict | None,
    expect: int,
    seconds: float,
    concurrency: int,
    max_requests: int,
) -> tuple[float, int, list[float]]:
    """(requests/s, requests, latencies) of ``concurrency`` clients for ``seconds``."""
    done = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline and done < max_requests:
            t0 = time.monotonic()
            async with session.request(method, url, json=body, headers=headers) as r:
                await r.read()
                if r.status != expect:
                    raise RuntimeError(f"{method} {url}: {r.status} {await r.text()}")
            latencies.append(time.monotonic() - t0)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - started), done, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def main(args) -> list[Row]:
    rows: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="bench-builder-"))
    async with control_plane() as (plane, api):
        if args.only_load:
            rows += await bench_load(plane, api, args)
            print_table(rows)
            return rows
        if args.only_store:
            rows += await bench_store(api, args, work)
            print_table(rows)
            return rows
        namespace = f"bench-builder-{uuid.uuid4().hex[:6]}"
        await create_namespace(api, namespace)
        await create_streams(plane, namespace, args.images, tags=1)
        git = GitServer(work / "git")
        git.create_repo("bench-nb", {"Dockerfile": "FROM scratch\n"}, tag="v1")
        token = os.urandom(16).hex()
        port = free_port()
        hub = Hub(
            work / "hub",
            plane.kubeconfig,
            namespace,
            free_port(),
            builder_service_config(token, port, ("custom:image-builder:build",))
            + """
c.JupyterHub.load_roles.append(
    {"name": "builders", "users": ["alice"],
      "scopes": ["custom:image-builder:build", "access:services!service=image-builder"]})
""",
        )
        await hub.start()
        status, body = await hub.api("POST", "/users/alice")
        status, body = await hub.api("POST", "/users/alice/tokens", json={})
        assert status == 201, body
        headers = {"Authorization": f"token {body['token']}"}
        env = dict(
            os.environ,
            AICOE_BUILDER_NAMESPACE=namespace,
            AICOE_BUILDER_REGISTRY="registry.local:5000",
            AICOE_BUILDER_ALLOWED_HOSTS="",
            AICOE_BUILDER_PRIVATE_HOSTS="127.0.0.1",
            AICOE_BUILDER_ALLOW_HTTP="true",
            AICOE_BUILDER_KUBECONFIG=str(plane.kubeconfig),
            AICOE_BUILDER_MAX_PER_USER="5",
            AICOE_BUILDER_MAX_STREAMS_PER_USER=str(args.listeners),
            AICOE_BUILDER_MAX_STREAMS=str(args.listeners + 10),
            JUPYTERHUB_API_TOKEN=token,
            JUPYTERHUB_API_URL=f"{hub.url}/hub/api",
            JUPYTERHUB_BASE_URL="/",
            JUPYTERHUB_SERVICE_PREFIX=PREFIX,
            JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
            JUPYTERHUB_CLIENT_ID="service-image-builder",
            JUPYTERHUB_OAUTH_CALLBACK_URL=f"{PREFIX}oauth_callback",
            JUPYTERHUB_OAUTH_ACCESS_SCOPES=json.dumps(["access:services!service=image-builder"]),
        )
        log = (work / "builder.log").open("wb")
        proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, "-m", "aicoe_spawner.builder"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}{PREFIX}"
        connector = aiohttp.TCPConnector(limit=0)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        async with session.get(base + "health") as r:
                            if r.status == 200 and (await r.json())["synced"]:
                                break
                    except aiohttp.ClientError:
                        pass
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError((work / "builder.log").read_text()[-3000:])
                    await asyncio.sleep(0.2)
                say(f"builder process {proc.pid} up; idle: {memory(proc.pid)}")
                idle_rss = rss_kib(proc.pid)["VmRSS"]

                build_body = {"repo": git.url("bench-nb"), "ref": "v1"}
                async with session.post(base + "api/builds", json=build_body, headers=headers) as r:
                    assert r.status == 202, await r.text()
                    build = await r.json()

                # 1. POST api/builds dedup hits
                rate, n, lat = await throughput(
                    session,
                    "POST",
                    base + "api/builds",
                    headers,
                    build_body,
                    200,
                    args.seconds,
                    args.concurrency,
                    5000,
                )
                say(
                    f"POST api/builds (dedup hit): {rate:.1f} req/s over {n} requests, "
                    f"{args.concurrency} clients; p50 {pct(lat, 0.5):.1f} ms p90 "
                    f"{pct(lat, 0.9):.1f} ms"
                )
                rows.append(
                    Row(
                        "builder",
                        "POST api/builds dedup hits",
                        f"{rate:.1f} req/s",
                        "-",
                        "-",
                        "-",
                        "info",
                    )
                )

                # 2. GET api/images at N images
                async with session.get(base + "api/images", headers=headers) as r:
                    raw = await r.read()
                images = json.loads(raw)["images"]
                assert len(images) >= args.images, len(images)
                rate, n, lat = await throughput(
                    session,
                    "GET",
                    base + "api/images",
                    headers,
                    None,
                    200,
                    args.seconds,
                    args.concurrency,
                    args.max_requests,
                )
                # the same bytes from a bare tornado handler in its own process: what this
                # machine (and this client) allows at all, measured in the same run
                bare_rate = await bare_tornado_rate(session, raw, work, args)
                say(
                    f"bare tornado serving the same {len(raw) / 1024:.0f} KiB: "
                    f"{bare_rate:.1f} req/s; api/images is {rate / bare_rate:.2f}x of it"
                )
                say(
                    f"GET api/images ({len(images)} images): {rate:.1f} req/s over {n} requests; "
                    f"p50 {pct(lat, 0.5):.1f} ms p90 {pct(lat, 0.9):.1f} ms"
                )
                say(f"  vs the baseline {IMAGES_BASELINE:.0f} req/s: {rate / IMAGES_BASELINE:.1f}x")
                rows.append(
                    Row(
                        "builder",
                        f"GET api/images, {len(images)} images",
                        f"{rate:.1f} req/s",
                        f"{IMAGES_BASELINE:.0f} req/s (before)",
                        f"{rate / IMAGES_BASELINE:.1f}x",
                        ">= 1000 req/s",
                        "PASS" if rate >= 1000 else "UNDER GOAL",
                    )
                )
                rows.append(
                    Row(
                        "builder",
                        "GET api/images vs bare tornado, same bytes",
                        f"{rate:.1f} req/s",
                        f"{bare_rate:.1f} req/s",
                        f"{rate / bare_rate:.2f}x",
                        "-",
                        "info",
                    )
                )
                loaded = rss_kib(proc.pid)
                say(f"after the request load: {memory(proc.pid)}")

                # 3. listeners on one build's event stream
                before_threads, before_rss = threads(proc.pid), rss_kib(proc.pid)["VmRSS"]
                ended = 0
                connected = 0
                all_connected = asyncio.Event()

                async def listen() -> None:
                    nonlocal ended, connected
                    url = base + f"api/builds/{build['id']}/events"
                    timeout = aiohttp.ClientTimeout(total=120)
                    async with session.get(url, headers=headers, timeout=timeout) as r:
                        assert r.status == 200
                        first = True
                        async for raw in r.content:
                            line = raw.decode().strip()
                            if first and line.startswith("event: phase"):
                                first = False
                                connected += 1
                                if connected == args.listeners:
                                    all_connected.set()
                            if line == "event: end":
                                ended += 1
                                return

                tasks = [asyncio.create_task(listen()) for _ in range(args.listeners)]
                await asyncio.wait_for(all_connected.wait(), 60)
                await asyncio.sleep(1)
                with_threads, with_rss = threads(proc.pid), rss_kib(proc.pid)["VmRSS"]
                say(
                    f"{args.listeners} event-stream listeners: threads {before_threads} -> "
                    f"{with_threads}, RSS {before_rss / 1024:.1f} -> {with_rss / 1024:.1f} MiB "
                    f"(+{(with_rss - before_rss) / args.listeners:.0f} KiB per listener)"
                )
                t0 = time.monotonic()
                async with session.delete(base + f"api/builds/{build['id']}", headers=headers) as r:
                    assert r.status == 200, await r.text()
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
                fanout = time.monotonic() - t0
                assert ended == args.listeners, ended
                say(f"cancel -> all {ended} listeners saw the end in {fanout * 1000:.0f} ms")
                rows.append(
                    Row(
                        "builder",
                        f"{args.listeners} SSE listeners: threads",
                        f"{before_threads} -> {with_threads}",
                        "-",
                        "-",
                        "no growth",
                        "info",
                    )
                )
                rows.append(
                    Row(
                        "builder",
                        f"{args.listeners} SSE listeners: RSS",
                        f"{before_rss / 1024:.1f} -> {with_rss / 1024:.1f} MiB",
                        "-",
                        "-",
                        "-",
                        "info",
                    )
                )
                rows.append(
                    Row(
                        "builder",
                        "cancel -> every listener ended",
                        f"{fanout * 1000:.0f} ms",
                        "-",
                        "-",
                        "-",
                        "info",
                    )
                )
                await asyncio.sleep(0.5)
                final = rss_kib(proc.pid)
                say(f"after the listeners: {memory(proc.pid)}, threads {threads(proc.pid)}")
                rows.append(
                    Row(
                        "builder",
                        "service RSS idle / loaded / final (peak)",
                        f"{idle_rss / 1024:.1f} / {loaded['VmRSS'] / 1024:.1f} / "
                        f"{final['VmRSS'] / 1024:.1f} ({final['VmHWM'] / 1024:.1f}) MiB",
                        "-",
                        "-",
                        "-",
                        "info",
                    )
                )
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            await hub.stop()
            git.stop()
        rows += await bench_store(api, args, work)
    say()
    print_table(rows)
    return rows


BARE_SERVER = """
import sys
from tornado import ioloop, web
body = open(sys.argv[1], "rb").read()
class H(web.RequestHandler):
    def compute_etag(self):  # no per-request hash of the body, as api/images
        return None

    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(body)
web.Application([("/", H)]).listen(int(sys.argv[2]), "127.0.0.1")
ioloop.IOLoop.current().start()
"""


async def bare_tornado_rate(session, body: bytes, work: Path, args) -> float:
    path = work / "images.json"
    path.write_bytes(body)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(path), str(port)])  # noqa: ASYNC220
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                async with session.get(url) as r:
                    await r.read()
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        rate, _, _ = await throughput(
            session, "GET", url, {}, None, 200, args.seconds, args.concurrency, args.max_requests
        )
        return rate
    finally:
        proc.terminate()
        proc.wait(10)


def record_of(namespace: str, i: int, phase: str) -> dict:
    """An ImageBuild as the builder writes it (spec = a resolved BuildSpec)."""
    from aicoe_spawner.builder.requests import BuildSpec
    from aicoe_spawner.builder.store import FINISHED_ANNOTATION, Build, record_manifest

    bid = f"{i:020x}"
    spec = BuildSpec(
        id=bid,
        repo=f"https://github.com/org/repo-{i}",
        ref="v1",
        commit=f"{i:040x}",
        ref_kind="tag",
        namespace=namespace,
        stream=f"org-repo-{i}",
        tag="v1",
        strategy="dockerfile",
        dockerfile="Dockerfile",
        context_dir="",
        base_image="",
        output_image=f"registry.local:5000/{namespace}/org-repo-{i}:v1",
        display_name="",
        description="",
        requester=f"user{i % 50}",
    )
    record = record_manifest(
        Build(spec=spec, phase=phase, created=f"2026-11-29T00:00:{i % 60:02d}Z")
    )
    if phase == "ready":  # as mark_inactive leaves a finished record
        record["metadata"]["annotations"][FINISHED_ANNOTATION] = "2026-11-29T00:01:00.000000Z"
    return record


def record_maker(custom, namespace: str):
    """``make(i, active)``: create record ``i`` (pending, or finished with a 100-line log tail,
    as the builder leaves one), at most 8 requests at a time; returns its name."""
    from aicoe_spawner.builder.store import GROUP, PLURAL, VERSION

    sem = asyncio.Semaphore(8)
    tail = "".join(f"step {n}: some build output line\n" for n in range(100))
    done = {"phase": "ready", "message": "", "digest": "sha256:" + "0" * 64, "logTail": tail}

    async def make(i: int, active: bool) -> str:
        async with sem:
            body = record_of(namespace, i, "pending" if active else "ready")
            obj = await custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body
            )
            if not active:
                await custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    obj["metadata"]["name"],
                    {"status": done},
                    _content_type="application/merge-patch+json",
                )
            return obj["metadata"]["name"]

    return make


async def bench_store(api, args, work: Path) -> list[Row]:
    """The store at ``--records`` finished records: list and reconcile cost, bytes written."""
    from harness.builder import local_settings
    from kubernetes_asyncio import client

    from aicoe_spawner.builder.__main__ import build_service
    from aicoe_spawner.builder.store import GROUP, PLURAL, VERSION

    rows: list[Row] = []
    namespace = f"bench-store-{uuid.uuid4().hex[:6]}"
    await create_namespace(api, namespace)
    custom = client.CustomObjectsApi(api)
    make = record_maker(custom, namespace)

    t0 = time.monotonic()
    await asyncio.gather(*(make(i, False) for i in range(args.records)))
    await asyncio.gather(*(make(args.records + i, True) for i in range(args.active)))
    say(
        f"created {args.records} finished + {args.active} active records in "
        f"{time.monotonic() - t0:.1f} s"
    )

    logs: dict[str, str] = {}

    async def read_log(ns: str, pod: str, container: str | None = None) -> str | None:
        return logs.get(pod)

    service = build_service(api, local_settings(namespace, "registry.local:5000"), read_log)
    failures = ErrorCount.install()

    async def raw_bytes(selector: str, accept: str = "application/json") -> int:
        total, token = 0, None
        while True:
            query = [("labelSelector", selector), ("limit", "500")]
            if token:
                query.append(("continue", token))
            response = await api.call_api(
                f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
                "GET",
                query_params=query,
                header_params={"Accept": accept},
                auth_settings=["BearerToken"],
                _preload_content=False,
            )
            data = await response.read()
            total += len(data)
            token = json.loads(data)["metadata"].get("continue")
            if not token:
                return total

    def timed(n: int):
        async def run_it(fn):
            times = []
            for _ in range(n):
                t = time.monotonic()
                await fn()
                times.append(time.monotonic() - t)
            return sorted(times)[len(times) // 2] * 1000

        return run_it

    full = await timed(5)(lambda: service.store.list())
    full_bytes = await raw_bytes("app.kubernetes.io/managed-by=aicoe-image-builder")
    finished_meta = await timed(5)(service.store.finished_ids)
    assert len(await service.store.finished_ids()) == args.records
    meta_bytes = await raw_bytes(
        "app.kubernetes.io/managed-by=aicoe-image-builder,aicoe-spawner.io/active=false",
        accept="application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
    )
    active = await timed(5)(lambda: service.store.list(active_only=True))
    active_bytes = await raw_bytes(
        "app.kubernetes.io/managed-by=aicoe-image-builder,aicoe-spawner.io/active=true"
    )
    await service.reconcile_once()  # the first one creates the active builds' Jobs
    calls = service.store.api_calls
    reconcile = await timed(10)(service.reconcile_once)
    if failures.count:
        raise MeasurementFailed(f"reconcile_once: {failures.count} errors; no figure")
    per_reconcile = (service.store.api_calls - calls) / 10
    say(
        f"{args.records} records: full list {full:.1f} ms ({full_bytes / 1024:.0f} KiB); "
        f"finished, metadata only {finished_meta:.1f} ms ({meta_bytes / 1024:.0f} KiB); "
        f"active list {active:.1f} ms ({active_bytes / 1024:.1f} KiB, {args.active} records); "
        f"reconcile_once {reconcile:.1f} ms, {per_reconcile:.1f} store requests"
    )
    rows += [
        Row(
            "builder store",
            f"full list, {args.records} records",
            f"{full:.1f} ms",
            "-",
            "-",
            "-",
            f"info ({full_bytes / 1024:.0f} KiB)",
        ),
        Row(
            "builder store",
            f"cleanup's list of finished records (metadata only, {args.records})",
            f"{finished_meta:.1f} ms",
            "-",
            "-",
            "-",
            f"info ({meta_bytes / 1024:.0f} KiB)",
        ),
        Row(
            "builder store",
            f"reconcile's list ({args.active} active)",
            f"{active:.1f} ms",
            "-",
            "-",
            "O(active)",
            f"info ({active_bytes / 1024:.1f} KiB)",
        ),
        Row(
            "builder store",
            f"reconcile_once ({args.active} active, {args.records} done)",
            f"{reconcile:.1f} ms",
            "-",
            "-",
            "O(active)",
            "info",
        ),
    ]

    # etcd bytes written per active build per minute: a watch sees every write
    written = {"bytes": 0, "writes": 0}

    async def count_writes(list_fn, *a) -> None:
        from kubernetes_asyncio import watch

        w = watch.Watch()
        async with w.stream(list_fn, *a, timeout_seconds=int(args.write_seconds) + 30) as stream:
            async for event in stream:
                if event["type"] in ("ADDED", "MODIFIED"):
                    written["bytes"] += len(json.dumps(event["raw_object"]))
                    written["writes"] += 1

    watchers = [
        asyncio.create_task(
            count_writes(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
        ),
        asyncio.create_task(
            count_writes(client.CoreV1Api(api).list_namespaced_config_map, namespace)
        ),
    ]
    await asyncio.sleep(1)
    written.update(bytes=0, writes=0)  # the watches' initial ADDED events are not writes
    from harness.jobs import start_pod

    running = [b for b in await service.store.list(active_only=True)]
    for b in running:
        await start_pod(api, namespace, b.id)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < args.write_seconds:
        n += 1
        for b in running:  # every build prints a line a second
            logs[f"imgbuild-{b.id}-run"] = "".join(
                f"step {k}: some build output line\n" for k in range(n)
            )
        await service.reconcile_once()
        await asyncio.sleep(1)
    elapsed = time.monotonic() - t0
    for t in watchers:
        if t.done() and t.exception() is not None:
            raise t.exception()
        t.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    if failures.count or not written["writes"]:
        raise MeasurementFailed(
            f"etcd bytes written: {failures.count} reconcile errors, "
            f"{written['writes']} writes seen; no figure"
        )
    per_minute = written["bytes"] / len(running) / elapsed * 60
    say(
        f"{len(running)} running builds for {elapsed:.0f} s: {written['writes']} writes, "
        f"{written['bytes'] / 1024:.1f} KiB -> {per_minute / 1024:.1f} KiB per build per minute"
    )
    rows.append(
        Row(
            "builder store",
            "etcd bytes written per active build per minute",
            f"{per_minute / 1024:.1f} KiB",
            "-",
            "-",
            "-",
            f"info ({written['writes']} writes in {elapsed:.0f} s)",
        )
    )
    return rows


# -- API load of two replicas ---------------------------------------------------------------

KINDS = ("imagebuilds", "jobs", "pods", "configmaps", "leases", "imagestreams", "builds")


async def request_counts(api) -> dict[tuple[str, str], float]:
    """kube-apiserver's own ``apiserver_request_total``, summed by (verb, resource), for the
    kinds the builder uses."""
    response = await api.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False
    )
    text = (await response.read()).decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        fields = dict(
            (k, v.strip('"'))
            for k, _, v in (p.partition("=") for p in labels[labels.index("{") + 1 : -1].split(","))
        )
        if fields.get("resource") in KINDS:
            key = (fields.get("verb", ""), fields["resource"])
            out[key] = out.get(key, 0.0) + float(value)
    return out


def difference(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


async def bench_load(plane, api, args) -> list[Row]:
    """Two replicas (in this process, each with its own client) over ``--records`` finished
    records and 0/10/50 running builds: API requests per second as the API server counts
    them; then the time from a Job's completion to its record's ``ready``; then (with a
    leader) the takeover after the leader dies."""
    from harness.builder import local_settings
    from harness.jobs import complete_job, digest_of, start_pod
    from kubernetes_asyncio import client

    from aicoe_devcluster import api_client
    from aicoe_spawner.builder.__main__ import build_service
    from aicoe_spawner.builder.store import GROUP, PLURAL, VERSION

    rows: list[Row] = []
    failures = ErrorCount.install()
    namespace = f"bench-load-{uuid.uuid4().hex[:6]}"
    await create_namespace(api, namespace)
    custom = client.CustomObjectsApi(api)
    make = record_maker(custom, namespace)

    await asyncio.gather(*(make(i, False) for i in range(args.records)))
    say(f"{args.records} finished records")

    logs: dict[str, str] = {}

    async def read_log(ns: str, pod: str, container: str | None = None) -> str | None:
        return logs.get(pod) if container in (None, "build") else None

    clients = [await api_client(plane.kubeconfig) for _ in range(2)]
    config = local_settings(namespace, "registry.local:5000", max_per_user=200, max_total=200)
    services = [build_service(c, config, read_log) for c in clients]
    phases: list[tuple[str, str]] = []

    class Seen:
        async def build_changed(self, build, previous: str) -> None:
            phases.append((build.id, build.phase))

    for svc in services:
        svc.observers.append(Seen())
        svc.start(1.0)
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    has_leader = hasattr(services[0], "controller")
    build_ids: list[str] = []
    try:
        await asyncio.sleep(3)
        n = args.records
        for level in [int(x) for x in args.load_active.split(",")]:
            while len(build_ids) < level:
                name = await make(n, True)
                n += 1
                build_ids.append(name.removeprefix("imgbuild-"))
            for build_id in build_ids:  # the Job (made by the builder) runs: its pod is there
                await wait_job(batch, namespace, build_id)
                await start_pod(api, namespace, build_id)
                await core.patch_namespaced_pod(
                    f"imgbuild-{build_id}-run",
                    namespace,
                    {
                        "metadata": {
                            "labels": {"app.kubernetes.io/managed-by": "aicoe-image-builder"}
                        }
                    },
                )
                logs[f"imgbuild-{build_id}-run"] = "step 1\n"
            await asyncio.sleep(5)  # settled: every build seen building
            before = await request_counts(api)
            await asyncio.sleep(args.load_seconds)
            spent = difference(await request_counts(api), before)
            watches = sum(v for (verb, _), v in spent.items() if verb == "WATCH")
            others = sum(v for (verb, _), v in spent.items() if verb != "WATCH")
            rate = others / args.load_seconds
            say(
                f"{level} active, {args.records} finished, 2 replicas: {rate:.2f} requests/s "
                f"(+{watches:.0f} watch opens in {args.load_seconds:.0f} s): "
                + ", ".join(f"{verb} {res} {v:.0f}" for (verb, res), v in sorted(spent.items()))
            )
            rows.append(
                Row(
                    "builder load",
                    f"API requests/s, 2 replicas, {level} active, {args.records} finished",
                    f"{rate:.2f}",
                    "-",
                    "-",
                    "0 idle; <= 0.1 per build",
                    f"info (+{watches:.0f} watch opens)",
                )
            )
        # Job completion -> record ready
        took = []
        for build_id in build_ids[:5]:
            t0 = time.monotonic()
            await complete_job(api, namespace, build_id, digest_of(build_id))
            while True:
                obj = await custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, f"imgbuild-{build_id}"
                )
                if (obj.get("status") or {}).get("phase") == "ready":
                    break
                if time.monotonic() - t0 > 10:
                    raise MeasurementFailed(f"build {build_id} not ready 10 s after its Job")
                await asyncio.sleep(0.02)
            took.append(time.monotonic() - t0)
        say("Job complete -> ready: " + ", ".join(f"{t * 1000:.0f} ms" for t in took))
        rows.append(
            Row(
                "builder load",
                "Job complete -> record ready (5 builds, median / max)",
                f"{sorted(took)[2] * 1000:.0f} / {max(took) * 1000:.0f} ms",
                "-",
                "-",
                "<= 1 s",
                "info",
            )
        )
        if has_leader:
            rows += await takeover(services, build_ids[5:], api, namespace, phases)
    finally:
        for svc in services:
            await svc.stop()
        for c in clients:
            await c.close()
    if failures.count:
        raise MeasurementFailed(f"{failures.count} errors logged by the builder; see above")
    return rows


async def wait_job(batch, namespace: str, build_id: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await batch.read_namespaced_job(f"imgbuild-{build_id}", namespace)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise MeasurementFailed(f"no Job for build {build_id} after 30 s") from None
            await asyncio.sleep(0.1)


async def takeover(services, build_ids, api, namespace, phases) -> list[Row]:
    """Kill the leader (no hand-over: its tasks end, the Lease stays), time until the other
    leads, then finish every running build and count: each ready once, one Job each."""
    from harness.jobs import complete_job, digest_of
    from kubernetes_asyncio import client

    (leader,) = [s for s in services if s.controller.elector.is_leader]
    (other,) = [s for s in services if s is not leader]
    c = leader.controller
    c.elector._task.cancel()
    await asyncio.gather(c.elector._task, return_exceptions=True)
    c.elector._task = None
    c.elector.leading.clear()
    await c._follow()
    await c.records.stop()
    leader.controller = None
    t0 = time.monotonic()
    while not other.controller.elector.is_leader:
        if time.monotonic() - t0 > 60:
            raise MeasurementFailed("no takeover within 60 s")
        await asyncio.sleep(0.05)
    took = time.monotonic() - t0
    for build_id in build_ids:
        await complete_job(api, namespace, build_id, digest_of(build_id))
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + 60
    from aicoe_spawner.builder.store import GROUP, PLURAL, VERSION

    while True:
        ready = 0
        for build_id in build_ids:
            obj = await custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, f"imgbuild-{build_id}"
            )
            ready += (obj.get("status") or {}).get("phase") == "ready"
        if ready == len(build_ids):
            break
        if time.monotonic() > deadline:
            raise MeasurementFailed(f"{ready}/{len(build_ids)} ready 60 s after the takeover")
        await asyncio.sleep(0.2)
    await other.observed()
    ends = [i for i, p in phases if p == "ready" and i in set(build_ids)]
    jobs = await client.BatchV1Api(api).list_namespaced_job(namespace)
    names = [j.metadata.name for j in jobs.items]
    if len(ends) != len(build_ids) or len(set(names)) != len(names):
        raise MeasurementFailed(f"{len(ends)} ready transitions for {len(build_ids)} builds")
    say(f"takeover after the leader died: {took:.2f} s; {len(build_ids)} builds ready once each")
    return [
        Row(
            "builder load",
            f"leader takeover after a kill ({len(build_ids)} running builds)",
            f"{took:.1f} s",
            "-",
            "-",
            "<= 15 s, none lost or doubled",
            f"info ({len(ends)} ready once each, {len(names)} Jobs)",
        )
    ]


if __name__ == "__main__":
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--listeners", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--max-requests", type=int, default=20000, help="per throughput phase")
    parser.add_argument("--only-store", action="store_true", help="only the store figures")
    parser.add_argument("--active", type=int, default=5)
    parser.add_argument("--write-seconds", type=float, default=60.0)
    parser.add_argument(
        "--only-load", action="store_true", help="only the API load of two replicas"
    )
    parser.add_argument("--load-seconds", type=float, default=30.0, help="per load level")
    parser.add_argument("--load-active", default="0,10,50", help="active builds per level")
    run(main, parser)
