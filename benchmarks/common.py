"""Shared pieces of the benchmarks: a local control plane, bulk ImageStreams, the equivalent
KubeSpawner ``profile_list``, request counters, statistics and result lines.

Every benchmark measures the candidate (AICoESpawner) and the reference (plain KubeSpawner)
in the same run, against the same local kube-apiserver, and prints absolute numbers, the ratio
candidate/reference, the goal and PASS / OVER GOAL. Nothing fails on an over-goal result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import ssl
import statistics
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import RESTClientObject
from kubernetes_asyncio.config import kube_config

REPO = Path(__file__).resolve().parents[1]
# tests/harness/hub.py (a real JupyterHub process) and tests/harness/kube.py live in tests/.
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from aicoe_devcluster import ControlPlane, install_crds  # noqa: E402

A = "opendatahub.io/"
GROUP, VERSION, PLURAL = "image.openshift.io", "v1", "imagestreams"
MERGE = "application/merge-patch+json"
LABEL = {"opendatahub.io/notebook-image": "true"}
TAG_NAMES = ("2023.2", "2024.1", "2024.2", "2025.1", "2025.2")


# -- the catalog under test ----------------------------------------------------------------


def stream_name(i: int) -> str:
    return f"nb-{i:05d}"


def digest_ref(namespace: str, stream: str, tag: str) -> str:
    digest = hashlib.sha256(f"{namespace}/{stream}:{tag}".encode()).hexdigest()
    return f"registry.local/{namespace}/{stream}@sha256:{digest}"


def tag_names(count: int) -> list[str]:
    if count <= len(TAG_NAMES):
        return list(TAG_NAMES[len(TAG_NAMES) - count :])
    return [f"v{n}" for n in range(count)]


def stream_object(i: int, tags: int = 5) -> dict[str, Any]:
    """A realistic Open Data Hub notebook ImageStream (spec only), with ODH annotations."""
    name = stream_name(i)
    names = tag_names(tags)
    software = json.dumps([{"name": "Python", "version": "v3.11"}])
    deps = json.dumps(
        [
            {"name": "JupyterLab", "version": "4.2"},
            {"name": "numpy", "version": "2.1"},
            {"name": "pandas", "version": "2.2"},
            {"name": "scikit-learn", "version": "1.5"},
        ]
    )
    spec_tags = []
    for t in names:
        ann = {
            f"{A}notebook-software": software,
            f"{A}notebook-python-dependencies": deps,
            f"{A}notebook-build-commit": hashlib.sha1(f"{name}{t}".encode()).hexdigest()[:12],
        }
        if t == names[-1]:
            ann[f"{A}workbench-image-recommended"] = "true"
            if i == 0:
                ann[f"{A}default-image"] = "true"
        spec_tags.append(
            {"name": t, "annotations": ann, "from": {"kind": "DockerImage", "name": f"q/{name}"}}
        )
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageStream",
        "metadata": {
            "name": name,
            "labels": dict(LABEL),
            "annotations": {
                f"{A}notebook-image-name": f"Notebook {i:05d}",
                f"{A}notebook-image-desc": f"Benchmark notebook image number {i}, with Python 3.11",
                f"{A}notebook-image-url": f"https://github.com/example/{name}",
                f"{A}notebook-image-order": "100",
            },
        },
        "spec": {"lookupPolicy": {"local": True}, "tags": spec_tags},
    }


def stream_status(namespace: str, i: int, tags: int = 5) -> dict[str, Any]:
    name = stream_name(i)
    return {
        "dockerImageRepository": f"registry.local/{namespace}/{name}",
        "tags": [
            {
                "tag": t,
                "items": [
                    {
                        "created": "2025-01-01T00:00:00Z",
                        "dockerImageReference": digest_ref(namespace, name, t),
                        "image": digest_ref(namespace, name, t).rpartition("@")[2],
                        "generation": 1,
                    }
                ],
            }
            for t in tag_names(tags)
        ],
    }


def profile_list_for(namespace: str, count: int, tags: int = 5) -> list[dict[str, Any]]:
    """KubeSpawner's static ``profile_list`` offering the same streams and tags: one profile per
    stream, one ``image`` profile option choice per tag (digest-pinned override)."""
    profiles = []
    for i in range(count):
        obj = stream_object(i, tags)
        name = obj["metadata"]["name"]
        ann = obj["metadata"]["annotations"]
        display = ann[f"{A}notebook-image-name"]
        names = tag_names(tags)
        choices = {}
        for t in names:
            label = f"{display} : {t}" + (" (recommended)" if t == names[-1] else "")
            choices[t] = {
                "display_name": label,
                "default": t == names[-1],
                "kubespawner_override": {"image": digest_ref(namespace, name, t)},
            }
        profiles.append(
            {
                "display_name": display,
                "slug": name,
                "description": ann[f"{A}notebook-image-desc"],
                "default": i == 0,
                "kubespawner_override": {"image": digest_ref(namespace, name, names[-1])},
                "profile_options": {"image": {"display_name": "Version", "choices": choices}},
            }
        )
    return profiles


# -- in-process spawners ------------------------------------------------------------------


class StandInUser:
    """Just enough of ``jupyterhub.user.User`` for constructing spawners and rendering forms
    outside a hub."""

    def __init__(self, name: str, groups: Iterable[str] = ()) -> None:
        self.name = name
        self.escaped_name = quote(name, safe="@~")
        self.id = 1
        self.url = f"/user/{self.escaped_name}/"
        self.groups = [SimpleNamespace(name=g) for g in groups]


def stand_in_hub() -> SimpleNamespace:
    return SimpleNamespace(
        public_host="",
        url="http://127.0.0.1:8081/hub/",
        base_url="/hub/",
        api_url="http://127.0.0.1:8081/hub/api",
    )


# -- Kubernetes ----------------------------------------------------------------------------


async def admin_client(plane: ControlPlane, pool: int = 32) -> client.ApiClient:
    """An admin ApiClient with a connection pool large enough for bulk creation."""
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(plane.kubeconfig), client_configuration=configuration
    )
    configuration.connection_pool_maxsize = pool
    return client.ApiClient(configuration)


@contextlib.asynccontextmanager
async def control_plane() -> AsyncIterator[tuple[ControlPlane, client.ApiClient]]:
    """etcd + kube-apiserver with the CRDs; KUBECONFIG points at it for KubeSpawner."""
    started = time.monotonic()
    plane = ControlPlane()
    try:
        plane.start()
        os.environ["KUBECONFIG"] = str(plane.kubeconfig)
        os.environ.pop("KUBERNETES_SERVICE_HOST", None)
        # kubernetes_asyncio reads KUBECONFIG at import time; KubeSpawner's load_config() uses
        # that default location, so point it at this control plane too.
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(plane.kubeconfig)
        api = await admin_client(plane)
        try:
            await install_crds(api)
            say(f"control plane ready in {time.monotonic() - started:.1f} s at {plane.server}")
            yield plane, api
        finally:
            await api.close()
    finally:
        plane.stop()


async def create_namespace(api: client.ApiClient, name: str) -> None:
    await client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})


def admin_ssl_context(plane: ControlPlane) -> ssl.SSLContext:
    assert plane.pki is not None
    ctx = ssl.create_default_context(cafile=str(plane.pki.ca_cert))
    ctx.load_cert_chain(str(plane.pki.admin_cert), str(plane.pki.admin_key))
    return ctx


async def create_streams(
    plane: ControlPlane, namespace: str, count: int, tags: int = 5, concurrency: int = 32
) -> float:
    """Create ``count`` ready streams -- a create, then a merge patch of the status subresource
    (tags ready with digest-pinned references) -- and return the seconds it took.

    Plain aiohttp instead of kubernetes_asyncio: the generated client's per-request overhead
    halves the rate on a 2-core machine, and the setup is not what is measured."""
    started = time.monotonic()
    base = f"{plane.server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    connector = aiohttp.TCPConnector(ssl=admin_ssl_context(plane), limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                async with session.post(base, json=stream_object(i, tags)) as r:
                    if r.status != 201:
                        raise RuntimeError(f"create {stream_name(i)}: {r.status} {await r.text()}")
                    await r.read()
                async with session.patch(
                    f"{base}/{stream_name(i)}/status",
                    data=json.dumps({"status": stream_status(namespace, i, tags)}),
                    headers={"Content-Type": MERGE},
                ) as r:
                    if r.status != 200:
                        raise RuntimeError(f"status {stream_name(i)}: {r.status} {await r.text()}")
                    await r.read()

        # Batches keep the number of pending coroutines (and memory) bounded.
        batch = 500
        for start in range(0, count, batch):
            await asyncio.gather(*(one(i) for i in range(start, min(start + batch, count))))
    seconds = time.monotonic() - started
    say(
        f"created {count} ImageStreams x {tags} tags (ready) in {namespace!r} in {seconds:.1f} s"
        f" ({count / seconds:.0f} streams/s)"
    )
    return seconds


def apiserver_request_totals(plane: ControlPlane) -> dict[tuple[str, str], float]:
    """Server-side request counts by (resource[/subresource], verb), from kube-apiserver's
    ``/metrics`` (``apiserver_request_total``; a WATCH is counted when it ends)."""
    ctx = admin_ssl_context(plane)
    with urllib.request.urlopen(f"{plane.server}/metrics", context=ctx, timeout=10) as r:
        text = r.read().decode()
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        key = (resource, labels.get("verb", "?"))
        counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def apiserver_request_counts(plane: ControlPlane, resource: str) -> dict[str, float]:
    """Server-side request counts for one resource (with its subresources), by verb."""
    counts: dict[str, float] = {}
    for (res, verb), n in apiserver_request_totals(plane).items():
        if res.split("/")[0] == resource:
            counts[verb] = counts.get(verb, 0) + n
    return counts


def request_delta(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


# -- request counters ----------------------------------------------------------------------


@dataclass
class RequestCounter:
    """Counts HTTP requests made by this process, at two levels: every aiohttp request
    (``ClientSession._request``) and every kubernetes_asyncio request
    (``RESTClientObject.request``, which list, watch and every API call go through)."""

    aiohttp_requests: int = 0
    kube_requests: int = 0
    log: list[str] = field(default_factory=list)

    def install(self) -> RequestCounter:
        counter = self
        orig_aiohttp = aiohttp.ClientSession._request
        orig_kube = RESTClientObject.request

        async def counted_aiohttp(session, method, url, *args, **kwargs):
            counter.aiohttp_requests += 1
            counter.log.append(f"aiohttp {method} {url}")
            return await orig_aiohttp(session, method, url, *args, **kwargs)

        async def counted_kube(rest, method, url, *args, **kwargs):
            counter.kube_requests += 1
            counter.log.append(f"kube {method} {url}")
            return await orig_kube(rest, method, url, *args, **kwargs)

        aiohttp.ClientSession._request = counted_aiohttp
        RESTClientObject.request = counted_kube
        return self

    def snapshot(self) -> tuple[int, int, int]:
        return self.aiohttp_requests, self.kube_requests, len(self.log)


# -- statistics and output -----------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Stats:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def p90(self) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]

    @property
    def min(self) -> float:
        return min(self.values)

    def describe(self, scale: float = 1000, unit: str = "ms") -> str:
        return (
            f"median {self.median * scale:8.2f} {unit}  mean {self.mean * scale:8.2f} {unit}  "
            f"p90 {self.p90 * scale:8.2f} {unit}  min {self.min * scale:8.2f} {unit}  "
            f"(n={len(self.values)})"
        )


@dataclass
class Row:
    """One line of the summary table."""

    benchmark: str
    metric: str
    candidate: str
    reference: str
    ratio: str
    goal: str
    verdict: str


def verdict(ratio: float, goal: float | None) -> str:
    if goal is None:
        return "info"
    return "PASS" if ratio <= goal else "OVER GOAL"


def compare(
    benchmark: str,
    metric: str,
    candidate: Stats,
    reference: Stats,
    goal: float | None,
    *,
    scale: float = 1000,
    unit: str = "ms",
) -> Row:
    """Print candidate and reference figures, the ratio of medians (and of means) and the goal."""
    ratio = candidate.median / reference.median
    ratio_mean = candidate.mean / reference.mean
    outcome = verdict(ratio, goal)
    say(f"  {metric}")
    say(f"    candidate  AICoESpawner : {candidate.describe(scale, unit)}")
    say(f"    reference  KubeSpawner  : {reference.describe(scale, unit)}")
    goal_text = f"goal <= {goal:.2f}x" if goal is not None else "no goal (information)"
    say(
        f"    ratio candidate/reference: {ratio:.2f}x (medians), {ratio_mean:.2f}x (means); "
        f"{goal_text} -> {outcome}"
    )
    return Row(
        benchmark,
        metric + " (median)",
        f"{candidate.median * scale:.2f} {unit}",
        f"{reference.median * scale:.2f} {unit}",
        f"{ratio:.2f}x",
        f"<= {goal:.2f}x" if goal is not None else "-",
        outcome,
    )


def arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--json-out", type=Path, help="also write the summary rows to this JSON file"
    )
    return parser


def write_rows(path: Path | None, rows: Iterable[Row]) -> None:
    if path is not None:
        path.write_text(json.dumps([asdict(r) for r in rows], indent=2))


def run(main: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser) -> None:
    args = parser.parse_args()
    rows = asyncio.run(main(args))
    write_rows(args.json_out, rows)


def print_table(rows: list[Row]) -> None:
    headers = ("benchmark", "metric", "candidate", "reference", "ratio", "goal", "verdict")
    table = [headers] + [
        (r.benchmark, r.metric, r.candidate, r.reference, r.ratio, r.goal, r.verdict) for r in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(headers))]
    for n, line in enumerate(table):
        say("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)))
        if n == 0:
            say("  ".join("-" * w for w in widths))


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out
