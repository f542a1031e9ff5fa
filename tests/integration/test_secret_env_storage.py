"""Secret env values never reach the hub's database or log: not when the spawn is rejected, not
while it is pending (JupyterHub saves a request's user_options in its database before the
spawner sees them), and not when the options hold what no log filter could parse (JSON
``Infinity``, deep nesting, a body that is not JSON). Large options of one client do not hold
up the hub for the others. A real JupyterHub process, the real API server, the fake kubelet;
the database is read from its file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from itertools import count

import aiohttp
import pytest
import pytest_asyncio
from harness.hub import Hub, files_containing, running_hub
from harness.kube import create_imagestream, user_pods, wait_for
from kubernetes_asyncio import client

from aicoe_devcluster import delete_namespace

A = "opendatahub.io/"
DEFAULT = {f"{A}default-image": "true", f"{A}workbench-image-recommended": "true"}

# Spawns of users named "held-*" wait in auth_state_hook -- after JupyterHub saved their
# user_options, before the spawner validates them: they say so with holding-<user> and wait
# until the test creates release-<user>.
HUB_CONFIG = """
import asyncio, pathlib

async def hold_spawn(spawner, auth_state):
    if spawner.user.name.startswith("held-"):
        here = pathlib.Path(__file__).parent
        (here / f"holding-{spawner.user.name}").touch()
        while not (here / f"release-{spawner.user.name}").exists():
            await asyncio.sleep(0.05)

c.Spawner.auth_state_hook = hold_spawn
c.AICoESpawner.max_gpus = 0
"""

_users = count()


def new_user(prefix: str = "s") -> str:
    return f"{prefix}{next(_users)}-{uuid.uuid4().hex[:4]}"


def secret_value() -> str:
    return "never-stored-" + uuid.uuid4().hex


@pytest_asyncio.fixture(scope="module")
async def env(control_plane, kube, fake_kubelet, tmp_path_factory):
    ns = f"t-secret-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": ns}})
    await create_imagestream(kube, ns, "minimal", {"1.0": DEFAULT})
    async with running_hub(
        tmp_path_factory.mktemp("secrethub"), control_plane.kubeconfig, ns, HUB_CONFIG
    ) as hub:
        yield hub
    await delete_namespace(kube, ns)


def stored_user_options(hub: Hub, user: str) -> dict | None:
    """The user_options of the user's default server, as the hub's database file holds them."""
    db = sqlite3.connect(hub.workdir / "jupyterhub.sqlite")
    try:
        rows = db.execute(
            "select spawners.user_options from spawners join users"
            " on spawners.user_id = users.id where users.name = ? and spawners.name = ''",
            (user,),
        ).fetchall()
    finally:
        db.close()
    assert len(rows) == 1, rows
    return json.loads(rows[0][0]) if rows[0][0] else None


def assert_only_names_stored(
    hub: Hub, user: str, value: str, names: list[str], *, stored_at_all: bool = True
) -> None:
    """The value is in no file of the hub; the options stored (if the path stores any) name
    the secret variables only."""
    assert files_containing(hub.workdir, value) == []  # database, journal, log
    stored = stored_user_options(hub, user)
    if not stored_at_all and stored is None:
        return
    assert stored is not None and "secret_env" not in stored, stored
    assert stored["secret_env_names"] == names


async def test_rejected_rest_spawn_stores_no_secret_value(env, kube):
    user, value = new_user(), secret_value()
    await env.ensure_user(user)
    status, body = await env.api(
        "POST",
        f"/users/{user}/server",
        json={"image": "no-such-image:1", "secret_env": {"API_KEY": value}},
    )
    assert status == 400 and "image" in body["message"], (status, body)
    assert value not in json.dumps(body)
    assert await user_pods(kube, env.namespace, user) == []
    assert_only_names_stored(env, user, value, ["API_KEY"])


async def test_rejected_form_post_stores_no_secret_value(env, kube):
    user, value = new_user(), secret_value()
    await env.ensure_user(user)
    web = await env.login(user)
    try:
        status, page = await web.post_form(
            user,
            [
                ("image", "minimal:1.0"),
                ("gpus", "3"),
                ("secret_env_name", "DB_PASSWORD"),
                ("secret_env_value", value),
            ],
        )
    finally:
        await web.close()
    assert status == 400 and "gpus" in page, (status, page[:500])
    assert value not in page
    assert await user_pods(kube, env.namespace, user) == []
    # the spawn page validates a form before JupyterHub stores anything
    assert_only_names_stored(env, user, value, ["DB_PASSWORD"], stored_at_all=False)


async def test_pending_spawn_stores_no_secret_value(env, kube):
    user, value = new_user("held-"), secret_value()
    await env.ensure_user(user)
    spawn = asyncio.create_task(
        env.api(
            "POST",
            f"/users/{user}/server",
            json={"image": "minimal:1.0", "secret_env": {"TOKEN": value}},
        )
    )
    try:

        async def holding():
            return (env.workdir / f"holding-{user}").exists()

        await wait_for(holding, timeout=30)
        # JupyterHub has saved this request's user_options and the spawn waits.
        status, model = await env.api("GET", f"/users/{user}")
        assert status == 200 and model["pending"] == "spawn", model
        assert_only_names_stored(env, user, value, ["TOKEN"])
    finally:
        (env.workdir / f"release-{user}").touch()
    status, body = await spawn
    assert status in (201, 202), (status, body)
    await env.wait_ready(user)
    pod = (await user_pods(kube, env.namespace, user))[0]
    assert value not in json.dumps(pod)
    assert_only_names_stored(env, user, value, ["TOKEN"])
    await env.stop_server(user)


async def test_patched_user_options_keep_secret_values_out_of_log_and_database(env, kube):
    """JupyterHub's PATCH of a server logs the options it is given; the value stays out."""
    user, value = new_user(), secret_value()
    await env.ensure_user(user)
    status, body = await env.api(
        "PATCH",
        f"/users/{user}/servers/",
        json={"user_options": {"image": "minimal:1", "secret_env": {"K": value}}},
    )
    assert status == 200, (status, body)
    assert value not in json.dumps(body)
    log = env.log_path.read_text(errors="replace")
    assert f"Setting user_options on {user}/" in log  # the line is there, without the value
    assert value not in log
    assert_only_names_stored(env, user, value, ["K"])


# The body of the second review (issue 18, S2): 118 KiB of options with a JSON Infinity and
# "{1,1,1,…", which the hub's old log filter re-parsed from every "{" for 16.8 s.
def heavy_options(value: str) -> dict:
    return {
        "image": "minimal:1",
        "secret_env": {"K": value},
        "n": float("inf"),  # json.dumps writes it as Infinity, as the attack's body had it
        "pad": "{1,1,1," * 17300,
    }


async def test_large_patched_options_do_not_hold_up_other_requests(env):
    user, value = new_user(), secret_value()
    await env.ensure_user(user)
    body = json.dumps({"user_options": heavy_options(value)}).encode()
    assert b"Infinity" in body and len(body) > 118 * 1024
    patch = asyncio.create_task(env.api("PATCH", f"/users/{user}/servers/", data=body))
    slowest = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as other:
        while not patch.done():
            started = time.monotonic()
            async with other.get(f"{env.url}/hub/api/") as r:
                assert r.status == 200
            slowest = max(slowest, time.monotonic() - started)
    status, answer = await patch
    assert status == 200, (status, str(answer)[:300])
    assert slowest < 1.0, f"another client waited {slowest:.1f} s"
    assert_only_names_stored(env, user, value, ["K"])


SECRET_K = '"secret_env": {"K": "@"}'  # "@": the test's secret value


@pytest.mark.parametrize(
    "method, body, depth, status, message",
    [
        # options that are JSON but no Python literal (what the old log filter parsed)
        ("PATCH", '{"user_options": {S, "n": Infinity}}', 0, 200, None),
        ("PATCH", '{"user_options": {S, "d": D}}', 500, 200, None),
        ("POST", '{"image": "minimal:1.0", "cpu": Infinity, S}', 0, 400, "cpu"),
        # too deep for JSON: a body the hub cannot read at all
        ("POST", '{S, "d": D}', 100_000, 400, "Invalid JSON"),
        ("PATCH", '{"user_options": {S, "d": D}}', 100_000, 400, "Invalid JSON"),
    ],
    ids=["patch-infinity", "patch-deep", "post-infinity", "post-too-deep", "patch-too-deep"],
)
async def test_secret_value_stays_out_of_log_whatever_the_options_hold(
    env, kube, method, body, depth, status, message
):
    """``D``: lists nested ``depth`` deep."""
    user, value = new_user(), secret_value()
    await env.ensure_user(user)
    path = f"/users/{user}/server" if method == "POST" else f"/users/{user}/servers/"
    text = body.replace("S", SECRET_K).replace("D", "[" * depth + "]" * depth)
    got, answer = await env.api(method, path, data=text.replace("@", value).encode())
    assert got == status, (got, answer)
    if message:
        assert answer["message"].startswith(message), answer
    assert value not in json.dumps(answer)
    assert await user_pods(kube, env.namespace, user) == []
    assert files_containing(env.workdir, value) == []  # log, database, journal
