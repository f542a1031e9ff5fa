"""Image import on plain Kubernetes (issue 19): what the builder's import loop costs the API
server, and how soon it follows a moved tag.

``--streams`` (100) Open Data Hub ImageStreams (tests/data/imagestreams, two tags each, the
newest ``importPolicy.scheduled``) point at a local docker-registry with htpasswd
authentication, the robot's pull Secret named by each stream and on the namespace's
``default`` ServiceAccount. The real :class:`Importer` (with skopeo) runs against a local
kube-apiserver with the default poll and interval (30 s / 15 min) divided by ``--scale`` (30),
so one scaled hour takes 3600/scale seconds. After the first import of every tag:

- **API requests per stream per hour**: kube-apiserver's own ``apiserver_request_total`` for
  imagestreams, secrets and serviceaccounts over one scaled hour with nothing moving, divided
  by the streams (the importer is the only client in that window); also the importer's own
  count, and its passes against what the poll allows;
- **latency**: the registry tag that every scheduled tag follows moved → every stream's status
  at the new digest, in seconds and as a fraction of the (scaled) interval — at the default
  interval a moved tag is followed within interval + poll.

No reference implementation (OpenShift's import controller needs OpenShift): the figures are
absolute. Exits non-zero when a measurement failed (the first import did not finish, nothing
was counted, the moved tag was not followed).

    .venv/bin/python benchmarks/bench_import.py [--streams 100] [--scale 30]
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import (
    GROUP,
    PLURAL,
    REPO,
    VERSION,
    Row,
    apiserver_request_totals,
    arg_parser,
    control_plane,
    create_namespace,
    print_table,
    request_delta,
    run,
    say,
)

from aicoe_spawner.builder.importer import Importer
from aicoe_spawner.builder.imports import DEFAULT_INTERVAL, PULL_SECRETS_ANNOTATION
from aicoe_spawner.builder.registry import SkopeoResolver

sys.path.insert(0, str(REPO / "tests"))
from harness.registry import Registry

ODH_STREAM = REPO / "tests" / "data" / "imagestreams" / "odh-notebooks-jupyter-minimal-2025.yaml"
NAMESPACE = "bench-import"
USER, PASSWORD = "robot", "bench-s3cret"
IMAGES = "opendatahub/workbench-images"
SECRET = "workbench-images-pull"
DEFAULT_POLL = 30.0
COUNTED = ("imagestreams", "secrets", "serviceaccounts")


class MeasurementFailed(RuntimeError):
    pass


def stream(i: int, host: str) -> dict:
    obj = yaml.safe_load(ODH_STREAM.read_text())
    obj["metadata"]["name"] = f"odh-minimal-{i:04d}"
    obj["metadata"]["annotations"][PULL_SECRETS_ANNOTATION] = SECRET
    for spec in obj["spec"]["tags"]:
        spec["from"]["name"] = f"{host}/{IMAGES}:{spec['name']}"
        spec["importPolicy"] = {"insecure": True, "scheduled": spec["name"] == "2025.2"}
    return obj


def pull_secret(host: str) -> dict:
    config = {"auths": {host: {"username": USER, "password": PASSWORD}}}
    return {
        "metadata": {"name": SECRET},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


async def digests(custom, tag: str) -> list[str | None]:
    listed = await custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
    out = []
    for item in listed["items"]:
        found = None
        for entry in (item.get("status") or {}).get("tags") or []:
            if entry.get("tag") == tag and entry.get("items"):
                found = entry["items"][0]["image"]
        out.append(found)
    return out


async def wait_all(custom, tag: str, digest: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(d == digest for d in await digests(custom, tag)):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise MeasurementFailed(f"not every stream's {tag} at {digest} after {timeout:.0f} s")


def counted(delta: dict[tuple[str, str], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (resource, verb), n in delta.items():
        if resource.split("/")[0] in COUNTED:
            key = f"{verb} {resource}"
            out[key] = out.get(key, 0) + n
    return out


async def main(args) -> list[Row]:
    from kubernetes_asyncio import client

    scale = args.scale
    interval, poll = DEFAULT_INTERVAL / scale, DEFAULT_POLL / scale
    hour = 3600 / scale
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        registry = Registry(Path(tmp) / "registry", {USER: PASSWORD})
        try:
            first = registry.push_tiny_image(IMAGES, "2025.2", "one")
            older = registry.push_tiny_image(IMAGES, "2025.1", "older")
            async with control_plane() as (plane, api):
                await create_namespace(api, NAMESPACE)
                core = client.CoreV1Api(api)
                await core.create_namespaced_secret(NAMESPACE, pull_secret(registry.host))
                # no controller-manager here: the namespace's default ServiceAccount by hand
                await core.create_namespaced_service_account(
                    NAMESPACE,
                    {"metadata": {"name": "default"}, "imagePullSecrets": [{"name": SECRET}]},
                )
                custom = client.CustomObjectsApi(api)
                for i in range(args.streams):
                    await custom.create_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, PLURAL, stream(i, registry.host)
                    )
                resolver = SkopeoResolver()
                importer = Importer(
                    api, (NAMESPACE,), resolver, interval=interval, retry=interval, poll=poll
                )
                importer.start()
                try:
                    took = await wait_all(custom, "2025.2", first, 60 + args.streams)
                    await wait_all(custom, "2025.1", older, 30)
                    say(
                        f"first import of {2 * args.streams} tags: {took:.1f} s "
                        f"({resolver.runs} skopeo runs)"
                    )

                    before = apiserver_request_totals(plane)
                    mine_before = dict(importer.requests)
                    runs_before = resolver.runs
                    await asyncio.sleep(hour)
                    delta = counted(request_delta(before, apiserver_request_totals(plane)))
                    mine = {k: importer.requests[k] - mine_before[k] for k in mine_before}
                    runs = resolver.runs - runs_before

                    second = await asyncio.to_thread(
                        registry.push_tiny_image, IMAGES, "2025.2", "two"
                    )
                    latency = await wait_all(custom, "2025.2", second, interval * 3 + 30)
                finally:
                    await importer.stop()
        finally:
            registry.close()

    total = sum(delta.values())
    if total == 0:
        raise MeasurementFailed("no API requests counted in the window")
    per_stream = total / args.streams
    say(f"\none scaled hour = {hour:.0f} s (poll {poll:g} s, interval {interval:g} s, 1/{scale:g})")
    for key, n in sorted(delta.items()):
        say(f"  apiserver_request_total {key}: {n:.0f}")
    say(
        f"  importer's own count: {mine} (passes {mine['list']}, the poll allows "
        f"{hour / poll:.0f}); skopeo runs {runs} (registry: ~2 requests each)"
    )
    say(
        f"API requests per stream per hour (default interval, {args.streams} streams): "
        f"{per_stream:.2f}"
    )
    say(
        f"import latency (tag moved -> every stream at the new digest): {latency:.1f} s "
        f"= {latency / interval:.2f} x interval; at the default 15 min interval: within "
        f"{DEFAULT_INTERVAL / 60:.0f} min + {DEFAULT_POLL:.0f} s"
    )
    rows.append(Row("import", "API requests/stream/hour", f"{per_stream:.2f}", "", "", "", "info"))
    rows.append(
        Row("import", "latency / interval", f"{latency / interval:.2f}", "", "", "", "info")
    )
    print_table(rows)
    return rows


if __name__ == "__main__":
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--scale", type=float, default=30.0)
    try:
        run(main, parser)
    except MeasurementFailed as e:
        say(f"MEASUREMENT FAILED: {e}")
        sys.exit(1)
