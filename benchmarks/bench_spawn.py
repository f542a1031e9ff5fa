"""REST spawn -> pod created, through real JupyterHub processes.

Two hubs run side by side against the same kube-apiserver, fake kubelet and stand-in
single-user server:

- candidate: AICoESpawner with a catalog of ``--streams`` ready ImageStreams; each spawn posts
  ``{"image": "<a stream in the middle of the catalog>:2025.1", "size": "small"}``;
- reference: plain KubeSpawner (``spawner_class = "kubespawner.KubeSpawner"``) with a fixed
  digest-pinned image and the same CPU/memory as the "small" size; each spawn posts the same
  body (which KubeSpawner without a ``profile_list`` ignores), so JupyterHub's work is the same.

Measured per spawn: from sending ``POST /hub/api/users/{user}/server`` to the pod's ADDED event
on a watch of the API server (this process), and, for information, until the POST returned
(pod Running and the server answering). Each spawn uses a new user, and the server is stopped
before the next spawn; spawns alternate between the hubs (ABBA order) after two warm-up spawns
each. Goal: median time to pod <= 1.1x the reference.

    .venv/bin/python benchmarks/bench_spawn.py [--spawns 15] [--streams 1000]
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from common import (
    Row,
    Stats,
    apiserver_request_totals,
    arg_parser,
    compare,
    control_plane,
    create_namespace,
    create_streams,
    digest_ref,
    request_delta,
    run,
    say,
    stream_name,
)
from harness.hub import FakeSingleUser, Hub
from kubernetes_asyncio import client, watch

from aicoe_devcluster import BackgroundLoop, FakeKubelet

NAME = "REST spawn"

SMALL = dict(cpu_guarantee=0.5, cpu_limit=1, mem_guarantee="1Gi", mem_limit="2Gi")

CANDIDATE_CONFIG = f"""
c.AICoESpawner.catalog_sync_timeout = 120
c.AICoESpawner.sizes = [
    {{"name": "small", "display_name": "Small", "default": True, **{SMALL!r}}},
    {{"name": "large", "display_name": "Large", "cpu_guarantee": 2, "cpu_limit": 4,
      "mem_guarantee": "4Gi", "mem_limit": "8Gi"}},
]
"""


def reference_config(image: str) -> str:
    return f"""
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.image = {image!r}
c.KubeSpawner.cpu_guarantee = {SMALL["cpu_guarantee"]!r}
c.KubeSpawner.cpu_limit = {SMALL["cpu_limit"]!r}
c.KubeSpawner.mem_guarantee = {2**30}  # 1Gi, as bytes (JupyterHub does not parse "Gi")
c.KubeSpawner.mem_limit = {2 * 2**30}
"""


class PodWatch:
    """Records when each single-user pod first shows up (ADDED), by namespace and user."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.seen: dict[tuple[str, str], float] = {}
        self.images: dict[tuple[str, str], str] = {}
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._task: asyncio.Task | None = None
        self.ready = asyncio.Event()

    def event(self, namespace: str, user: str) -> asyncio.Event:
        return self._events.setdefault((namespace, user), asyncio.Event())

    def forget(self, namespace: str, user: str) -> None:
        self.seen.pop((namespace, user), None)
        self._events.pop((namespace, user), None)

    async def _run(self) -> None:
        while True:
            pods = await self.core.list_pod_for_all_namespaces(
                label_selector="component=singleuser-server"
            )
            w = watch.Watch()
            self.ready.set()
            async with w.stream(
                self.core.list_pod_for_all_namespaces,
                label_selector="component=singleuser-server",
                resource_version=pods.metadata.resource_version,
                timeout_seconds=900,
                _preload_content=False,
            ) as stream:
                async for ev in stream:
                    if ev["type"] != "ADDED":
                        continue
                    now = time.perf_counter()
                    meta = ev["raw_object"]["metadata"]
                    user = meta.get("annotations", {}).get("hub.jupyter.org/username")
                    key = (meta["namespace"], user)
                    if key not in self.seen:
                        self.seen[key] = now
                        containers = ev["raw_object"]["spec"]["containers"]
                        self.images[key] = containers[0]["image"]
                        self.event(*key).set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 30)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def spawn_once(hub: Hub, pods: PodWatch, user: str, body: dict | None) -> tuple[float, float]:
    """(seconds to pod ADDED, seconds until the POST returned); the server is stopped after."""
    await hub.ensure_user(user)
    pods.forget(hub.namespace, user)
    added = asyncio.create_task(pods.event(hub.namespace, user).wait())
    t0 = time.perf_counter()
    post = asyncio.create_task(hub.api("POST", f"/users/{user}/server", json=body))
    done, _ = await asyncio.wait({added, post}, timeout=90, return_when=asyncio.FIRST_COMPLETED)
    if not done:
        raise TimeoutError(f"no pod for {user} after 90 s\n{hub.log_tail(40)}")
    if post in done and not added.done():
        status, response = post.result()
        if status not in (201, 202):
            added.cancel()
            raise RuntimeError(f"spawn of {user}: HTTP {status} {response}\n{hub.log_tail(40)}")
        await asyncio.wait_for(added, 60)
    to_pod = pods.seen[(hub.namespace, user)] - t0
    status, response = await post
    to_return = time.perf_counter() - t0
    if status not in (201, 202):
        raise RuntimeError(f"spawn of {user}: HTTP {status} {response}\n{hub.log_tail(40)}")
    if status == 202:
        await hub.wait_ready(user)
    await hub.stop_server(user)
    return to_pod, to_return


async def main(args) -> list[Row]:
    say(f"== REST spawn -> pod created: {args.spawns} spawns per hub ==")
    workdir = Path(tempfile.mkdtemp(prefix="aicoe-bench-spawn-"))
    async with control_plane() as (plane, api):
        ns_c, ns_r = "bench-spawn-aicoe", "bench-spawn-kube"
        await create_namespace(api, ns_c)
        await create_namespace(api, ns_r)
        await create_streams(plane, ns_c, args.streams)
        middle = stream_name(args.streams // 2)
        candidate_body = {"image": f"{middle}:2025.1", "size": "small"}
        fixed_image = digest_ref("fixed", "notebook", "1.0")
        # The same request body for both (JupyterHub parses and stores it alike); plain
        # KubeSpawner without a profile_list ignores these keys.
        reference_body = candidate_body if args.same_body else None

        kubelet = FakeKubelet(plane.kubeconfig, pod_ip="127.0.0.1")
        kubelet_loop = BackgroundLoop("fake-kubelet")
        kubelet_loop.start(kubelet.run)
        singleuser = FakeSingleUser()
        hub_c = Hub(workdir / "aicoe", plane.kubeconfig, ns_c, singleuser.port, CANDIDATE_CONFIG)
        hub_r = Hub(
            workdir / "kube", plane.kubeconfig, ns_r, singleuser.port, reference_config(fixed_image)
        )
        pods = PodWatch(api)
        try:
            started = time.monotonic()
            await asyncio.gather(hub_c.start(), hub_r.start())
            say(f"two hubs up in {time.monotonic() - started:.1f} s (logs in {workdir})")
            await pods.start()

            for n in range(args.warmup):
                await spawn_once(hub_c, pods, f"warm-c{n}", candidate_body)
                await spawn_once(hub_r, pods, f"warm-r{n}", reference_body)
            image_c = pods.images[(ns_c, "warm-c0")]
            image_r = pods.images[(ns_r, "warm-r0")]
            say(f"candidate pod image: {image_c}")
            say(f"reference pod image: {image_r}")
            if image_c != digest_ref(ns_c, middle, "2025.1") or image_r != fixed_image:
                raise RuntimeError("unexpected pod images")

            pod_c, pod_r, ret_c, ret_r = [], [], [], []
            server_before = await asyncio.to_thread(apiserver_request_totals, plane)
            started = time.monotonic()
            for n in range(args.spawns):
                order = ("c", "r") if n % 2 == 0 else ("r", "c")
                for side in order:
                    if side == "c":
                        to_pod, to_return = await spawn_once(
                            hub_c, pods, f"c{n:03d}", candidate_body
                        )
                        pod_c.append(to_pod)
                        ret_c.append(to_return)
                    else:
                        to_pod, to_return = await spawn_once(
                            hub_r, pods, f"r{n:03d}", reference_body
                        )
                        pod_r.append(to_pod)
                        ret_r.append(to_return)
            say(f"{2 * args.spawns} timed spawns in {time.monotonic() - started:.1f} s")
            server_after = await asyncio.to_thread(apiserver_request_totals, plane)
            say()
            rows = [
                compare(NAME, "POST -> pod created", Stats(pod_c), Stats(pod_r), args.goal),
                compare(
                    NAME, "POST -> POST returned (server ready)", Stats(ret_c), Stats(ret_r), None
                ),
            ]
            say("  kube-apiserver requests per spawn during the timed spawns (both hubs, the fake")
            say("  kubelet and this benchmark's pod watch; secrets are only the candidate's):")
            for (resource, verb), n in sorted(request_delta(server_before, server_after).items()):
                say(f"    {verb:7} {resource:22} {n / (2 * args.spawns):5.2f}")
        except BaseException:
            say(f"hub logs kept in {workdir}")
            raise
        finally:
            await pods.stop()
            await asyncio.gather(hub_c.stop(), hub_r.stop())
            singleuser.stop()
            kubelet_loop.stop()
    if args.keep_logs:
        say(f"hub logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


if __name__ == "__main__":
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=15, help="timed spawns per hub")
    parser.add_argument("--warmup", type=int, default=2, help="untimed spawns per hub first")
    parser.add_argument("--streams", type=int, default=1000, help="candidate catalog size")
    parser.add_argument(
        "--no-body-for-reference",
        dest="same_body",
        action="store_false",
        help="POST no body to the reference hub (default: the candidate's body)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the hubs' logs")
    parser.add_argument("--goal", type=float, default=1.1)
    run(main, parser)
