"""Hub memory with 5,000 ImageStreams cached.

Three real JupyterHub processes against one kube-apiserver:

- candidate: AICoESpawner whose namespace holds ``--streams`` ready streams x 5 tags;
- candidate, 1 stream: AICoESpawner with a one-stream catalog (separates the cost of the
  catalog from the cost of loading the spawner, its watch and its template);
- reference: plain KubeSpawner with a fixed image (no catalog).

All get the same warm-up: one REST spawn (which, for the candidates, waits until the watch has
listed every stream and validates against the catalog), wait until ready, stop. Then RSS is read
from /proc/<pid>/status (VmRSS, and VmHWM = peak) of each hub process. For information, the
candidates then serve the spawn form (``--form-loads`` times; the reference has no form) and
RSS is read again, and the catalog's own size is measured in-process with tracemalloc.

    .venv/bin/python benchmarks/bench_memory.py [--streams 5000]
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

from common import (
    Row,
    arg_parser,
    control_plane,
    create_namespace,
    create_streams,
    digest_ref,
    rss_kib,
    run,
    say,
    stream_object,
    stream_status,
)
from harness.hub import FakeSingleUser, Hub

from aicoe_devcluster import BackgroundLoop, FakeKubelet

NAME = "hub memory"

CANDIDATE_CONFIG = """
c.AICoESpawner.catalog_sync_timeout = 150
"""


def reference_config(image: str) -> str:
    return f"""
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.image = {image!r}
"""


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


async def warm_up(hub: Hub, label: str) -> float:
    """One REST spawn and stop; returns the seconds from POST to ready."""
    await hub.ensure_user("warm")
    started = time.monotonic()
    status, body = await hub.api("POST", "/users/warm/server")
    if status not in (201, 202):
        raise RuntimeError(f"{label}: spawn failed with {status} {body}\n{hub.log_tail(40)}")
    await hub.wait_ready("warm", timeout=180)
    seconds = time.monotonic() - started
    await hub.stop_server("warm")
    await hub.api("GET", "/users")
    return seconds


def catalog_footprint(count: int, namespace: str = "ns") -> tuple[float, float]:
    """(KiB per stream retained by the parsed catalog, KiB per stream of the LIST JSON)."""
    from aicoe_spawner.catalog import Catalog, parse_imagestream

    objs = []
    for i in range(count):
        obj = stream_object(i)
        obj["metadata"].update(namespace=namespace, resourceVersion=str(1000 + i))
        obj["status"] = stream_status(namespace, i)
        objs.append(obj)
    list_bytes = len(json.dumps({"items": objs}))
    raw = json.dumps({"items": objs})
    del objs
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    items = json.loads(raw)["items"]
    images = {(namespace, o["metadata"]["name"]): parse_imagestream(o) for o in items}
    del items
    catalog = Catalog.of(images.values())
    gc.collect()
    retained = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del catalog, images
    return retained / 1024 / count, list_bytes / 1024 / count


async def main(args) -> list[Row]:
    say(f"== Hub memory: {args.streams} ImageStreams x 5 tags cached ==")
    workdir = Path(tempfile.mkdtemp(prefix="aicoe-bench-memory-"))
    rows: list[Row] = []
    async with control_plane() as (plane, api):
        ns_c, ns_one, ns_r = "mem-aicoe", "mem-aicoe-one", "mem-kube"
        for ns in (ns_c, ns_one, ns_r):
            await create_namespace(api, ns)
        await create_streams(plane, ns_c, args.streams, concurrency=48)
        await create_streams(plane, ns_one, 1)

        kubelet = FakeKubelet(plane.kubeconfig, pod_ip="127.0.0.1")
        kubelet_loop = BackgroundLoop("fake-kubelet")
        kubelet_loop.start(kubelet.run)
        singleuser = FakeSingleUser()
        hubs = {
            "candidate": Hub(
                workdir / "aicoe", plane.kubeconfig, ns_c, singleuser.port, CANDIDATE_CONFIG
            ),
            "candidate, 1 stream": Hub(
                workdir / "aicoe-one", plane.kubeconfig, ns_one, singleuser.port, CANDIDATE_CONFIG
            ),
            "reference": Hub(
                workdir / "kube",
                plane.kubeconfig,
                ns_r,
                singleuser.port,
                reference_config(digest_ref("fixed", "notebook", "1.0")),
            ),
        }
        try:
            await asyncio.gather(*(hub.start() for hub in hubs.values()))
            await asyncio.sleep(2)
            idle = {label: rss_kib(hub.proc.pid) for label, hub in hubs.items()}
            for label, hub in hubs.items():  # one at a time: no CPU contention between them
                seconds = await warm_up(hub, label)
                say(f"{label:20}: warm-up spawn ready in {seconds:.2f} s")
            await asyncio.sleep(3)
            warm = {label: rss_kib(hub.proc.pid) for label, hub in hubs.items()}

            say()
            say(f"  {'hub':20} {'RSS idle':>12} {'RSS warm':>12} {'peak (HWM)':>12}")
            for label in hubs:
                say(
                    f"  {label:20} {mib(idle[label]['VmRSS']):>12} {mib(warm[label]['VmRSS']):>12}"
                    f" {mib(warm[label]['VmHWM']):>12}"
                )
            c, one, r = (warm[k]["VmRSS"] for k in hubs)
            c_peak, r_peak = warm["candidate"]["VmHWM"], warm["reference"]["VmHWM"]
            ratio = c / r
            say(
                f"  candidate - reference: {mib(c - r)} "
                f"({(c - r) / args.streams:.1f} KiB per stream); ratio {ratio:.2f}x; "
                f"peak difference {mib(c_peak - r_peak)}"
            )
            say(
                f"  candidate - candidate with 1 stream: {mib(c - one)} "
                f"({(c - one) / (args.streams - 1):.1f} KiB per stream)"
            )
            rows.append(
                Row(
                    NAME,
                    f"RSS, {args.streams} streams cached",
                    mib(c),
                    mib(r),
                    f"{ratio:.2f}x",
                    "-",
                    "info",
                )
            )
            rows.append(
                Row(
                    NAME,
                    "RSS difference per stream",
                    f"{(c - r) / args.streams:.1f} KiB",
                    "-",
                    "-",
                    "-",
                    "info",
                )
            )
            rows.append(
                Row(
                    NAME,
                    "peak RSS (VmHWM)",
                    mib(c_peak),
                    mib(r_peak),
                    f"{c_peak / r_peak:.2f}x",
                    "-",
                    "info",
                )
            )

            # Information: the candidates serve their form (the reference has none).
            for label in ("candidate", "candidate, 1 stream"):
                session = await hubs[label].login("viewer")
                try:
                    for _ in range(args.form_loads):
                        started = time.monotonic()
                        page = await session.spawn_page("viewer")
                    say(
                        f"  {label}: spawn page {len(page) / 1024:.0f} KiB, served in "
                        f"{time.monotonic() - started:.2f} s"
                    )
                finally:
                    await session.close()
            await asyncio.sleep(2)
            after_form = {
                k: rss_kib(hubs[k].proc.pid) for k in ("candidate", "candidate, 1 stream")
            }
            for label, values in after_form.items():
                say(
                    f"  {label}: after {args.form_loads} spawn-page load(s) "
                    f"RSS {mib(values['VmRSS'])}, peak {mib(values['VmHWM'])}"
                )
            rows.append(
                Row(
                    NAME,
                    f"RSS after {args.form_loads} spawn-page load(s)",
                    mib(after_form["candidate"]["VmRSS"]),
                    "(no form)",
                    "-",
                    "-",
                    "info",
                )
            )
        except BaseException:
            say(f"hub logs kept in {workdir}")
            raise
        finally:
            await asyncio.gather(*(hub.stop() for hub in hubs.values()))
            singleuser.stop()
            kubelet_loop.stop()

    per_stream, list_per_stream = await asyncio.to_thread(catalog_footprint, args.streams)
    say(
        f"  in-process: the parsed catalog retains {per_stream:.1f} KiB per stream "
        f"({per_stream * args.streams / 1024:.1f} MiB for {args.streams}); the LIST response "
        f"is {list_per_stream:.1f} KiB of JSON per stream"
    )
    rows.append(
        Row(
            NAME,
            "parsed catalog (tracemalloc) per stream",
            f"{per_stream:.1f} KiB",
            "-",
            "-",
            "-",
            "info",
        )
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return rows


if __name__ == "__main__":
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--form-loads", type=int, default=1, help="spawn-page loads afterwards")
    run(main, parser)
