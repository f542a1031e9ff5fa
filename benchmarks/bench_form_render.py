"""Options-form render with 1,000 ImageStreams x 5 tags in the API server, like for like.

Candidate: AICoESpawner's ``get_options_form()`` (what JupyterHub calls on every spawn-page
load), served from its shared ImageStream watch. Reference: plain KubeSpawner's
``get_options_form()`` on a static ``profile_list`` with the same 1,000 entries (one profile per
stream, one choice per tag): KubeSpawner renders it once per spawner object (the first page
load of each user's server) and serves the cached string afterwards.

Both sides are measured in the same run, interleaved, in the same three situations:

- cold: every cache empty -- the candidate's rendered forms and image cards (and its parsed
  catalog), and a new KubeSpawner object whose form was never rendered;
- a different user per page load: a new spawner object per user on both sides, with the
  candidate's caches as they are in a running hub (once without saved options, once with each
  user's own saved image, which no other user shares);
- the same user again: the candidate's cached rendering vs KubeSpawner's cached string.

Goal: each ratio <= 1.2x, and zero API requests per render. Requests are counted three ways
while the candidate renders: the watch's own ``api_requests`` counter, every HTTP request this
process makes (aiohttp ``ClientSession._request`` and kubernetes_asyncio
``RESTClientObject.request``), and kube-apiserver's own ``apiserver_request_total`` for
imagestreams. For information: the first render after a stream changed, and how long a change
takes to reach the watch's catalog (a static profile_list never changes without a restart).

Spawners are built in-process (KubeSpawner's ``_mock=True`` user and hub stand-ins); KUBECONFIG
points at the benchmark's own control plane.

    .venv/bin/python benchmarks/bench_form_render.py [--streams 1000] [--renders 20]
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
from collections.abc import Awaitable, Callable

from common import (
    GROUP,
    MERGE,
    PLURAL,
    VERSION,
    RequestCounter,
    Row,
    StandInUser,
    Stats,
    apiserver_request_counts,
    arg_parser,
    compare,
    control_plane,
    create_namespace,
    create_streams,
    profile_list_for,
    run,
    say,
    stand_in_hub,
    stream_name,
    tag_names,
    verdict,
)
from kubernetes_asyncio import client

NAME = "form render"


async def main(args) -> list[Row]:
    counter = RequestCounter().install()
    rows: list[Row] = []
    say(f"== Options-form render: {args.streams} ImageStreams x {args.tags} tags ==")
    async with control_plane() as (plane, api):
        ns = "bench-form"
        await create_namespace(api, ns)
        await create_streams(plane, ns, args.streams, args.tags)

        # Imported here: KubeSpawner reads KUBECONFIG (set by control_plane()) when the first
        # spawner is constructed.
        from kubespawner import KubeSpawner

        from aicoe_spawner import form_view as spawner_module
        from aicoe_spawner.spawner import AICoESpawner

        started = time.monotonic()
        candidate = AICoESpawner(
            _mock=True, user=StandInUser("alice"), hub=stand_in_hub(), namespace=ns
        )
        watch = candidate.catalog_watch()
        if not await watch.wait_synced(120):
            raise RuntimeError(f"ImageStream watch not synced: {watch.last_error}")
        images = len(watch.catalog.images)
        say(f"AICoESpawner watch synced {images} streams in {time.monotonic() - started:.2f} s")
        if images != args.streams:
            raise RuntimeError(f"watch has {images} streams, expected {args.streams}")

        profile_list = profile_list_for(ns, args.streams, args.tags)
        saved_tag = tag_names(args.tags)[-2]

        def new_candidate(user: str, saved: int | None = None) -> AICoESpawner:
            spawner = AICoESpawner(
                _mock=True, user=StandInUser(user), hub=stand_in_hub(), namespace=ns
            )
            if saved is not None:
                spawner.user_options = {"image": f"{stream_name(saved)}:{saved_tag}"}
            return spawner

        def new_reference(user: str, saved: int | None = None) -> KubeSpawner:
            spawner = KubeSpawner(
                _mock=True,
                user=StandInUser(user),
                hub=stand_in_hub(),
                namespace=ns,
                profile_list=profile_list,
            )
            if saved is not None:
                spawner.user_options = {"profile": stream_name(saved), "image": saved_tag}
            return spawner

        def empty_candidate_caches() -> None:
            spawner_module._rendered_forms.clear()
            spawner_module._rendered_cards.clear()
            watch._catalog = None  # the parsed catalog's sorted view, rebuilt on the next read

        # Sanity: both forms offer every tag of every stream.
        form_c = await new_candidate("sanity").get_options_form()
        form_r = await new_reference("sanity").get_options_form()
        expected = {
            f"{stream_name(i)}:{t}" for i in range(args.streams) for t in tag_names(args.tags)
        }
        offered_c = set(re.findall(r"nb-[0-9]{5}:[A-Za-z0-9_.]+", form_c)) & expected
        options_r = form_r.count("<option value=")
        say(
            f"candidate form: {len(form_c) / 1024:.0f} KiB, offers {len(offered_c)} image:tag; "
            f"reference form: {len(form_r) / 1024:.0f} KiB, {options_r} options"
        )
        if len(offered_c) != len(expected) or options_r != len(expected):
            raise RuntimeError(f"expected {len(expected)} image:tag choices in both forms")

        Prepare = Callable[[int], Callable[[], Awaitable[str]]]

        async def measure(prepare_c: Prepare, prepare_r: Prepare) -> tuple[Stats, Stats]:
            """Interleaved page loads; ``prepare_*(n)`` sets up (untimed) and returns the load.
            Each load starts after a full garbage collection (untimed), so that neither side
            pays for the other's garbage (spawner objects are reference cycles)."""
            times_c: list[float] = []
            times_r: list[float] = []
            for n in range(args.renders):
                for which in (0, 1) if n % 2 == 0 else (1, 0):
                    load = (prepare_c if which == 0 else prepare_r)(n)
                    gc.collect()
                    t0 = time.perf_counter()
                    await load()
                    (times_c if which == 0 else times_r).append(time.perf_counter() - t0)
            return Stats(times_c), Stats(times_r)

        server_before = await asyncio.to_thread(apiserver_request_counts, plane, PLURAL)
        watch_before = watch.api_requests
        http_before = counter.snapshot()
        log_start = len(counter.log)

        # -- cold: every cache empty on both sides ---------------------------------------
        def cold_c(n: int):
            spawner = new_candidate(f"cold-{n}")
            empty_candidate_caches()
            return spawner.get_options_form

        cold = await measure(cold_c, lambda n: new_reference(f"cold-{n}").get_options_form)

        # -- a different user per page load, caches as in a running hub -------------------
        for _ in range(3):  # the hub's first page loads fill the candidate's caches
            await new_candidate("warm-up").get_options_form()
        users = await measure(
            lambda n: new_candidate(f"user-{n}").get_options_form,
            lambda n: new_reference(f"user-{n}").get_options_form,
        )
        step = max(1, args.streams // args.renders)
        own_choice = await measure(
            lambda n: new_candidate(f"saved-{n}", saved=n * step).get_options_form,
            lambda n: new_reference(f"saved-{n}", saved=n * step).get_options_form,
        )

        # -- the same user again: both sides' caches --------------------------------------
        same_c, same_r = new_candidate("same"), new_reference("same")
        await same_c.get_options_form()
        await same_r.get_options_form()
        same = await measure(lambda n: same_c.get_options_form, lambda n: same_r.get_options_form)

        renders = 4 * args.renders + 1
        watch_requests = watch.api_requests - watch_before
        http_after = counter.snapshot()
        aiohttp_requests = http_after[0] - http_before[0]
        kube_requests = http_after[1] - http_before[1]
        await asyncio.sleep(0.5)
        server_after = await asyncio.to_thread(apiserver_request_counts, plane, PLURAL)
        server_requests = sum(server_after.values()) - sum(server_before.values())

        rows.append(compare(NAME, "render, cold (all caches empty)", *cold, args.goal))
        rows.append(
            compare(NAME, "render, a different user per load (no saved options)", *users, args.goal)
        )
        rows.append(
            compare(
                NAME, "render, a different user per load (own saved image)", *own_choice, args.goal
            )
        )
        rows.append(
            compare(
                NAME,
                "render, same user again (both cached)",
                *same,
                args.goal,
                scale=1e6,
                unit="us",
            )
        )

        say("  API requests during the candidate's renders")
        say(f"    renders: {renders} (candidate), {renders - 1} (reference, makes none by design)")
        say(f"    ImageStreamWatch.api_requests delta     : {watch_requests}")
        say(f"    aiohttp requests from this process      : {aiohttp_requests}")
        say(f"    kubernetes_asyncio RESTClientObject     : {kube_requests}")
        say(f"    kube-apiserver imagestreams requests    : {server_requests:.0f} {server_after}")
        for line in counter.log[log_start:][:10]:
            say(f"      {line}")
        per_render = max(watch_requests, aiohttp_requests, kube_requests, server_requests)
        per_render /= renders
        outcome = "PASS" if per_render == 0 else "OVER GOAL"
        say(f"    API requests per render: {per_render:g}; goal 0 -> {outcome}")
        rows.append(Row(NAME, "API requests per render", f"{per_render:g}", "0", "-", "0", outcome))
        new_r = users[1]

        # -- information: what the numbers above leave out ---------------------------------
        say()
        say("  Information (no goal):")
        # The first render after a catalog change rebuilds the sorted catalog and the changed
        # stream's card; the change itself reaches the catalog through the watch.
        custom = client.CustomObjectsApi(api)
        after_change = []
        seen_after = []
        for n in range(args.changes):
            version = watch.version
            t_change = time.perf_counter()
            await custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                ns,
                PLURAL,
                stream_name(n),
                {"metadata": {"annotations": {"bench/changed": str(n)}}},
                _content_type=MERGE,
            )
            if await watch.wait_for_change(version, 30) == version:
                raise RuntimeError(f"the watch did not see the change to {stream_name(n)}")
            seen_after.append(time.perf_counter() - t_change)
            t0 = time.perf_counter()
            await same_c.get_options_form()
            after_change.append(time.perf_counter() - t0)
        seen_s = Stats(seen_after)
        say(f"    a stream change (request sent) reaching the watch's catalog: {seen_s.describe()}")
        rows.append(
            Row(
                NAME,
                "stream change -> in the catalog (median)",
                f"{seen_s.median * 1000:.2f} ms",
                "(restart)",
                "-",
                "-",
                "info",
            )
        )
        change_s = Stats(after_change)
        ratio = change_s.median / new_r.median
        say(
            f"    candidate first render after a stream changed: {change_s.describe()}"
            f" ({ratio:.2f}x the reference render; {verdict(ratio, args.goal)} against"
            f" {args.goal}x)"
        )
        rows.append(
            Row(
                NAME,
                "first render after a stream changed (median)",
                f"{change_s.median * 1000:.2f} ms",
                f"{new_r.median * 1000:.2f} ms",
                f"{ratio:.2f}x",
                "-",
                "info",
            )
        )
        from aicoe_spawner.catalog import Catalog

        t0 = time.perf_counter()
        Catalog.of(watch.catalog.images)
        say(
            f"    (one Catalog.of() rebuild of {images} streams: "
            f"{(time.perf_counter() - t0) * 1000:.2f} ms)"
        )
        await watch.stop()
    return rows


if __name__ == "__main__":
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tags", type=int, default=5)
    parser.add_argument("--renders", type=int, default=20, help="page loads per situation and side")
    parser.add_argument("--changes", type=int, default=10, help="catalog changes to time")
    parser.add_argument("--goal", type=float, default=1.2)
    run(main, parser)
