"""The spawn page at catalog scale, as served by real hubs and used in chromium.

Three real JupyterHub processes per catalog size, against one kube-apiserver, side by side:

- candidate: AICoESpawner with ``form_layout = "lean"`` (the default): cards without their
  version and package lists, the page gzip-compressed from cached compressed pieces, live
  updates from the form-state endpoint (only what changed);
- baseline: the same spawner with ``form_layout = "full"``: today's design before issue 12
  (every card with all its lists, uncompressed, live updates re-read the whole page);
- reference: plain KubeSpawner with a static ``profile_list`` of the same entries (one profile
  per stream, one ``image`` choice per tag; no live updates).

At ``--streams`` (1,000) x 5 tags: the page's bytes as served (a client that accepts gzip, as
browsers do) and uncompressed; in chromium, the time from navigation until an image other than
the preselected one is chosen (checked by a click), and the time per filter keystroke (input
event until the next frame); an open form's traffic with nothing changing, per poll interval
(2 s), and a readiness change (one tag stops being ready): time until the open page shows it,
and the bytes that brought it. At ``--large`` (5,000) streams: the page's bytes as served, and
the hub's RSS before and after ``--concurrent`` (20) concurrent spawn-page loads by as many
users.

Goals (issue 12): <= 300 KiB at 1,000, <= 1.5 MiB at 5,000; an image chosen <= 1 s after
navigation; <= 50 ms per keystroke; <= 1 KiB per poll interval with nothing changing; a
readiness change shown in <= 1 s for <= 2 KiB; 20 concurrent loads raise RSS by <= 50 MiB.

    .venv/bin/python benchmarks/bench_page.py [--streams 1000] [--large 5000] [--concurrent 20]
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from common import (
    GROUP,
    MERGE,
    PLURAL,
    VERSION,
    Row,
    arg_parser,
    control_plane,
    create_namespace,
    create_streams,
    profile_list_for,
    rss_kib,
    run,
    say,
    stream_name,
    stream_status,
    tag_names,
)
from harness.hub import FakeSingleUser, Hub, _input_value
from kubernetes_asyncio import client

NAME = "spawn page"
POLL_INTERVAL = 2.0
LAYOUTS = ("lean", "full")
LABELS = {"lean": "candidate (lean)", "full": "baseline (full)", "kube": "KubeSpawner"}


def candidate_config(layout: str) -> str:
    return f"""
c.AICoESpawner.catalog_sync_timeout = 150
c.AICoESpawner.form_layout = {layout!r}
c.AICoESpawner.form_poll_interval = {POLL_INTERVAL}
"""


def reference_config(profiles: Path) -> str:
    return f"""
import json
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.profile_list = json.loads(open({str(profiles)!r}).read())
"""


def kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


async def start_hubs(workdir: Path, plane, ns: str, streams: int, port: int) -> dict[str, Hub]:
    profiles = workdir / f"profiles-{streams}.json"
    profiles.write_text(json.dumps(profile_list_for(ns, streams)))
    hubs = {
        layout: Hub(
            workdir / f"{layout}-{streams}", plane.kubeconfig, ns, port, candidate_config(layout)
        )
        for layout in LAYOUTS
    }
    hubs["kube"] = Hub(
        workdir / f"kube-{streams}", plane.kubeconfig, ns, port, reference_config(profiles)
    )
    await asyncio.gather(*(hub.start(timeout=180) for hub in hubs.values()))
    return hubs


async def raw_session(hub: Hub, user: str) -> aiohttp.ClientSession:
    """A logged-in session that keeps responses as sent (no automatic decompression)."""
    await hub.ensure_user(user)
    session = aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), auto_decompress=False
    )
    async with session.get(f"{hub.url}/hub/login") as r:
        page = await r.text()
    xsrf = _input_value(page, "_xsrf")
    async with session.post(
        f"{hub.url}/hub/login?next=",
        data={"username": user, "password": "x", "_xsrf": xsrf},
        allow_redirects=False,
    ) as r:
        if r.status != 302:
            raise RuntimeError(f"login: {r.status}")
    return session


async def served(hub: Hub, session: aiohttp.ClientSession, user: str) -> tuple[int, int, float]:
    """(bytes as served, bytes uncompressed, seconds) of the user's spawn page."""
    started = time.monotonic()
    async with session.get(
        f"{hub.url}/hub/spawn/{user}", headers={"Accept-Encoding": "gzip, deflate, br"}
    ) as r:
        body = await r.read()
        encoding = r.headers.get("Content-Encoding", "")
        if r.status != 200:
            raise RuntimeError(f"spawn page: {r.status} {body[:300]!r}")
    seconds = time.monotonic() - started
    raw = gzip.decompress(body) if encoding == "gzip" else body
    if b"<form" not in raw:
        raise RuntimeError("spawn page without a form")
    return len(body), len(raw), seconds


async def page_sizes(hubs: dict[str, Hub], streams: int) -> dict[str, tuple[int, int, float]]:
    sizes = {}
    for label, hub in hubs.items():
        session = await raw_session(hub, "sizer")
        try:
            await served(hub, session, "sizer")  # the first load renders and caches
            sizes[label] = await served(hub, session, "sizer")
        finally:
            await session.close()
        size, raw, seconds = sizes[label]
        say(
            f"  {LABELS[label]:17} {streams} streams: {kib(size):>12} as served "
            f"({kib(raw)} uncompressed), {seconds * 1000:.0f} ms"
        )
    return sizes


# -- chromium ---------------------------------------------------------------------------------

FILTER_STEP = """async (q) => {
  const box = document.getElementById('aicoe-filter');
  const t0 = performance.now();
  box.value = q;
  box.dispatchEvent(new Event('input', {bubbles: true}));
  await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  return performance.now() - t0;
}"""


async def choose_time(page, hub: Hub, user: str, label: str) -> float:
    """Seconds from navigation until a second image is chosen (its radio checked by a click)."""
    radio = 'input[name="profile"]' if label == "kube" else ".aicoe-image-radio"
    await page.goto(f"{hub.url}/hub/home")
    started = time.monotonic()
    await page.goto(f"{hub.url}/hub/spawn/{user}", wait_until="commit")
    await page.locator(radio).nth(1).check(timeout=60_000)
    return time.monotonic() - started


async def filter_times(page) -> list[float]:
    query = "nb-00999"
    times = []
    for n in range(1, len(query) + 1):
        times.append(await page.evaluate(FILTER_STEP, query[:n]))
    for n in range(len(query) - 1, -1, -1):
        times.append(await page.evaluate(FILTER_STEP, query[:n]))
    return times


class Traffic:
    """Sizes of the page's requests after it loaded (headers and bodies, as sent)."""

    def __init__(self, page, poll_marker: str) -> None:
        self.page = page
        self.marker = poll_marker
        self.done: list[tuple[float, int]] = []
        page.on("requestfinished", self._finished)
        self.pending: list = []

    def _finished(self, request) -> None:
        if self.marker in request.url:
            self.pending.append(asyncio.ensure_future(self._size(request)))

    async def _size(self, request) -> None:
        sizes = await request.sizes()
        total = sum(
            sizes[k]
            for k in (
                "requestHeadersSize",
                "requestBodySize",
                "responseHeadersSize",
                "responseBodySize",
            )
        )
        self.done.append((time.monotonic(), total))

    async def settle(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
            self.pending.clear()

    def since(self, t: float) -> tuple[int, int]:
        picked = [b for when, b in self.done if when >= t]
        return len(picked), sum(picked)


async def set_tag_ready(api, ns: str, index: int, not_ready: str | None) -> None:
    """Status of stream ``index`` with every tag ready except ``not_ready``."""
    status = stream_status(ns, index)
    for entry in status["tags"]:
        if entry["tag"] == not_ready:
            entry.pop("items")
    await client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, stream_name(index), {"status": status}, _content_type=MERGE
    )


async def in_browser(hubs, api, ns: str, args) -> dict[str, dict]:
    from harness.browser import chromium, login

    results: dict[str, dict] = {label: {} for label in hubs}
    async with chromium() as browser:
        pages = {}
        for label, hub in hubs.items():
            user = f"viewer-{label}"
            await hub.ensure_user(user)
            pages[label] = (await login(browser, hub.url, user), user)
        # Time to choose an image, interleaved.
        for _ in range(args.rounds):
            for label, hub in hubs.items():
                up, user = pages[label]
                results[label].setdefault("choose", []).append(
                    await choose_time(up.page, hub, user, label)
                )
        for label in LAYOUTS:
            up, user = pages[label]
            page = up.page
            await page.goto(f"{hubs[label].url}/hub/spawn/{user}")
            await page.wait_for_selector("#aicoe-filter")
            if label == "lean":  # every card in the page (the noscript chunks read)
                await page.wait_for_selector("#aicoe-options[data-cards=all]", state="attached")
            results[label]["filter"] = await filter_times(page)
        # An open form, nothing changing; then one readiness change.
        tag = tag_names(5)[-2]
        ref = f"{stream_name(2)}:{tag}"
        for number, label in enumerate(LAYOUTS):
            up, user = pages[label]
            page = up.page
            marker = "/hub/aicoe/form-state/" if label == "lean" else f"/hub/spawn/{user}"
            await page.goto(f"{hubs[label].url}/hub/spawn/{user}")
            await page.wait_for_selector("#aicoe-options")
            traffic = Traffic(page, marker)
            await asyncio.sleep(3)
            await traffic.settle()
            start = time.monotonic()
            await asyncio.sleep(args.idle)
            await traffic.settle()
            # Requests finished in the window; an unfinished long poll counts when it ends.
            count, total = traffic.since(start)
            results[label]["idle"] = (count, total, args.idle)
            selector = f'option[value="{ref}"]'
            before = time.monotonic()
            await asyncio.sleep(0.05)
            sent = time.monotonic()
            await set_tag_ready(api, ns, 2, tag if number % 2 == 0 else None)
            phase = "pending" if number % 2 == 0 else "ready"
            await page.wait_for_function(
                f"() => {{ const o = document.querySelector({json.dumps(selector)});"
                f" return o && o.dataset.phase === {json.dumps(phase)}; }}",
                polling="raf",
                timeout=30_000,
            )
            shown = time.monotonic() - sent
            await asyncio.sleep(0.5)
            await traffic.settle()
            count, total = traffic.since(before)
            results[label]["change"] = (shown, count, total)
        for up, _ in pages.values():
            await up.close()
    return results


# -- memory -----------------------------------------------------------------------------------


async def concurrent_loads(hub: Hub, users: int) -> dict[str, int]:
    sessions = [await raw_session(hub, f"load-{n}") for n in range(users)]
    try:
        await served(hub, sessions[0], "load-0")  # the form rendered and cached once
        await asyncio.sleep(1)
        before = rss_kib(hub.proc.pid)
        await asyncio.gather(*(served(hub, s, f"load-{n}") for n, s in enumerate(sessions)))
        await asyncio.sleep(1)
        after = rss_kib(hub.proc.pid)
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return {
        "rss_before": before["VmRSS"] * 1024,
        "rss_after": after["VmRSS"] * 1024,
        "hwm_before": before["VmHWM"] * 1024,
        "hwm_after": after["VmHWM"] * 1024,
    }


# -- the run ----------------------------------------------------------------------------------


def size_rows(sizes, streams: int, goal: int, goal_text: str) -> list[Row]:
    kube = sizes["kube"][0]
    rows = []
    for label in LAYOUTS:
        size = sizes[label][0]
        rows.append(
            Row(
                NAME,
                f"page as served, {streams} streams"
                + (" [baseline form_layout=full]" if label == "full" else ""),
                kib(size),
                kib(kube),
                f"{size / kube:.2f}x",
                goal_text if label == "lean" else "-",
                ("PASS" if size <= goal else "OVER GOAL") if label == "lean" else "info",
            )
        )
    return rows


async def main(args) -> list[Row]:
    workdir = Path(tempfile.mkdtemp(prefix="aicoe-bench-page-"))
    rows: list[Row] = []
    say(f"== Spawn page: {args.streams} and {args.large} ImageStreams x 5 tags ==")
    async with control_plane() as (plane, api):
        singleuser = FakeSingleUser()
        hubs: dict[str, Hub] = {}
        try:
            ns = "page-small"
            await create_namespace(api, ns)
            await create_streams(plane, ns, args.streams, concurrency=48)
            hubs = await start_hubs(workdir, plane, ns, args.streams, singleuser.port)
            sizes = await page_sizes(hubs, args.streams)
            rows += size_rows(sizes, args.streams, 300 * 1024, "<= 300 KiB")
            results = await in_browser(hubs, api, ns, args)

            choose = {k: statistics.median(v["choose"]) for k, v in results.items()}
            for label in hubs:
                say(
                    f"  {LABELS[label]:17} image chosen after navigation: "
                    + ", ".join(f"{t * 1000:.0f}" for t in results[label]["choose"])
                    + " ms"
                )
            for label in LAYOUTS:
                rows.append(
                    Row(
                        NAME,
                        f"chromium: image chosen after navigation (median of {args.rounds})"
                        + (" [baseline]" if label == "full" else ""),
                        f"{choose[label] * 1000:.0f} ms",
                        f"{choose['kube'] * 1000:.0f} ms",
                        f"{choose[label] / choose['kube']:.2f}x",
                        "<= 1000 ms" if label == "lean" else "-",
                        ("PASS" if choose[label] <= 1 else "OVER GOAL")
                        if label == "lean"
                        else "info",
                    )
                )
            for label in LAYOUTS:
                times = results[label]["filter"]
                say(
                    f"  {LABELS[label]:17} filter per keystroke: median "
                    f"{statistics.median(times):.1f} ms, max {max(times):.1f} ms "
                    f"({len(times)} keystrokes)"
                )
                rows.append(
                    Row(
                        NAME,
                        "chromium: filter per keystroke (max)"
                        + (" [baseline]" if label == "full" else ""),
                        f"{max(times):.1f} ms",
                        "(no filter)",
                        "-",
                        "<= 50 ms" if label == "lean" else "-",
                        ("PASS" if max(times) <= 50 else "OVER GOAL")
                        if label == "lean"
                        else "info",
                    )
                )
            for label in LAYOUTS:
                count, total, window = results[label]["idle"]
                per_interval = total / (window / POLL_INTERVAL)
                say(
                    f"  {LABELS[label]:17} open form, nothing changing: {count} requests, "
                    f"{kib(total)} in {window:.0f} s = {kib(per_interval)} per "
                    f"{POLL_INTERVAL:.0f}-s interval"
                )
                rows.append(
                    Row(
                        NAME,
                        f"open form, nothing changing, per {POLL_INTERVAL:.0f}-s interval"
                        + (" [baseline]" if label == "full" else ""),
                        kib(per_interval),
                        "(no live updates)",
                        "-",
                        "<= 1 KiB" if label == "lean" else "-",
                        ("PASS" if per_interval <= 1024 else "OVER GOAL")
                        if label == "lean"
                        else "info",
                    )
                )
            for label in LAYOUTS:
                shown, count, total = results[label]["change"]
                say(
                    f"  {LABELS[label]:17} readiness change shown after {shown * 1000:.0f} ms, "
                    f"{count} requests, {kib(total)}"
                )
                ok = shown <= 1 and total <= 2048
                rows.append(
                    Row(
                        NAME,
                        "readiness change: shown after / bytes"
                        + (" [baseline]" if label == "full" else ""),
                        f"{shown * 1000:.0f} ms / {kib(total)}",
                        "(restart)",
                        "-",
                        "<= 1 s / 2 KiB" if label == "lean" else "-",
                        ("PASS" if ok else "OVER GOAL") if label == "lean" else "info",
                    )
                )
            await asyncio.gather(*(hub.stop() for hub in hubs.values()))
            hubs = {}

            if args.large:
                ns = "page-large"
                await create_namespace(api, ns)
                await create_streams(plane, ns, args.large, concurrency=48)
                hubs = await start_hubs(workdir, plane, ns, args.large, singleuser.port)
                sizes = await page_sizes(hubs, args.large)
                rows += size_rows(sizes, args.large, int(1.5 * 2**20), "<= 1.5 MiB")
                memory = {}
                for label, hub in hubs.items():  # one at a time
                    memory[label] = await concurrent_loads(hub, args.concurrent)
                    m = memory[label]
                    say(
                        f"  {LABELS[label]:17} {args.concurrent} concurrent loads: RSS "
                        f"{mib(m['rss_before'])} -> {mib(m['rss_after'])}, peak "
                        f"{mib(m['hwm_before'])} -> {mib(m['hwm_after'])}"
                    )
                kube = memory["kube"]["rss_after"] - memory["kube"]["rss_before"]
                for label in LAYOUTS:
                    m = memory[label]
                    rise = m["rss_after"] - m["rss_before"]
                    peak = m["hwm_after"] - m["hwm_before"]
                    rows.append(
                        Row(
                            NAME,
                            f"RSS rise, {args.concurrent} concurrent loads, {args.large} "
                            "streams (peak rise)" + (" [baseline]" if label == "full" else ""),
                            f"{mib(rise)} ({mib(peak)})",
                            mib(kube),
                            "-",
                            "<= 50 MiB" if label == "lean" else "-",
                            ("PASS" if rise <= 50 * 2**20 else "OVER GOAL")
                            if label == "lean"
                            else "info",
                        )
                    )
        except BaseException:
            say(f"hub logs kept in {workdir}")
            raise
        finally:
            await asyncio.gather(*(hub.stop() for hub in hubs.values()))
            singleuser.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return rows


if __name__ == "__main__":
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--large", type=int, default=5000, help="0: skip the 5,000-stream part")
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="navigations per hub")
    parser.add_argument("--idle", type=float, default=30, help="seconds of an idle open form")
    run(main, parser)
