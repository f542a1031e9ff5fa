"""Image import on the real node (issue 19): a registry that asks for a password (the node's
second docker-registry, htpasswd auth), Open Data Hub's own ImageStream manifest pointed at
it by tag, the builder's importer resolving the tag to a digest with the namespace's pull
secret, and users starting servers on that digest — also after the tag moved, while the
running server keeps the image it started on. A tag that does not exist, a wrong password and
a registry that is down are each an ``ImportSuccess=False`` condition whose message the card
shows, and each recovers when fixed.

The demo's builder imports every second and re-imports scheduled tags every few seconds
(tests/node/conftest.py ``IMPORT_*``), so a moved tag is followed within the test's time."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import html
import json
import re
import secrets
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml
from harness.kube import user_pods
from harness.node import (
    IMPORT_INTERVAL,
    IMPORT_POLL,
    IMPORT_RETRY,
    new_user_token,
    start_server,
    stop_server,
    stream_tag_or_none,
)
from kubernetes_asyncio import client

from aicoe_devcluster.demo import NAMESPACE
from aicoe_devcluster.images import MANIFEST_TYPES

pytestmark = pytest.mark.node

ODH_STREAM = (
    Path(__file__).parents[1] / "data" / "imagestreams" / "odh-notebooks-jupyter-minimal-2025.yaml"
)
ROBOT = "odh-robot"
PASSWORD = secrets.token_hex(8)
REPOSITORY = "opendatahub/workbench-images"  # as on quay.io, in the registry with a password
PULL_SECRET = "workbench-images-pull"  # on the namespace's default ServiceAccount
GROUP, VERSION, PLURAL = "image.openshift.io", "v1", "imagestreams"
CARD_RE = r'<div class="card [^"]*aicoe-image-card" data-stream="([^"]+)"'
# the version's option on the spawn page's card
FAILED_OPTION = "2025.2 (recommended) \N{EN DASH} failed"


# -- the registry with a password ------------------------------------------------------------


def _auth_header(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _request(url: str, *, method: str = "GET", data: bytes | None = None, headers=None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(request, timeout=30)


def copy_image(source: str, host: str, tag: str) -> str:
    """Copy ``source`` (in the node's plain registry, or in ``host``) to ``host``/REPOSITORY:
    ``tag`` with the robot's password; the digest the registry serves for that tag."""
    creds = ["--src-creds", f"{ROBOT}:{PASSWORD}"] if source.startswith(f"{host}/") else []
    subprocess.run(
        [
            "skopeo",
            "copy",
            *creds,
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-creds",
            f"{ROBOT}:{PASSWORD}",
            f"docker://{source}",
            f"docker://{host}/{REPOSITORY}:{tag}",
        ],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    return tag_digest(host, tag)


def tag_digest(host: str, tag: str) -> str:
    with _request(
        f"http://{host}/v2/{REPOSITORY}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": MANIFEST_TYPES, **_auth_header(ROBOT, PASSWORD)},
    ) as resp:
        return resp.headers["Docker-Content-Digest"]


def push_rebuild(host: str, tag: str, label: str) -> str:
    """Push a new image to ``tag``: the image it names with one more label in its config (a
    rebuild that changed nothing but its metadata; the layers are already there). Returns the
    new manifest digest."""
    auth = _auth_header(ROBOT, PASSWORD)
    base = f"http://{host}/v2/{REPOSITORY}"
    with _request(f"{base}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES, **auth}) as r:
        media_type = r.headers["Content-Type"]
        manifest = json.load(r)
    with _request(f"{base}/blobs/{manifest['config']['digest']}", headers=auth) as r:
        config = json.load(r)
    config.setdefault("config", {}).setdefault("Labels", {})["aicoe.test/rebuild"] = label
    blob = json.dumps(config).encode()
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with _request(f"{base}/blobs/uploads/", method="POST", data=b"", headers=auth) as r:
        location = r.headers["Location"]
    if location.startswith("/"):
        location = f"http://{host}{location}"
    joiner = "&" if "?" in location else "?"
    with _request(
        f"{location}{joiner}digest={digest}",
        method="PUT",
        data=blob,
        headers={**auth, "Content-Type": "application/octet-stream"},
    ):
        pass
    manifest = copy.deepcopy(manifest)
    manifest["config"].update(digest=digest, size=len(blob))
    body = json.dumps(manifest).encode()
    with _request(
        f"{base}/manifests/{tag}",
        method="PUT",
        data=body,
        headers={**auth, "Content-Type": media_type},
    ) as r:
        assert r.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
        return r.headers["Docker-Content-Digest"]


def dockerconfig_secret(name: str, host: str, user: str, password: str) -> dict:
    config = {"auths": {host: {"username": user, "password": password}}}
    return {
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(node_cluster):
    """The node's registry with a password, holding the notebook image at ``2025.2`` and
    ``2025.1`` (ODH's two versions); yields (host, digest)."""
    node = node_cluster.node
    host = node.start_auth_registry(ROBOT, PASSWORD)
    started = time.monotonic()
    digest = copy_image(node.images["notebook"], host, "2025.2")
    assert copy_image(node.images["notebook"], host, "2025.1") == digest
    took = time.monotonic() - started
    print(f"\nnotebook image copied to the registry with a password in {took:.1f} s")
    yield host, digest
    node.stop_auth_registry()


@pytest.fixture(scope="module")
async def pull_secret(node_kube, registry):
    """The robot's credentials as a dockerconfigjson Secret on the namespace's ``default``
    ServiceAccount (``imagePullSecrets``): what the importer and the kubelet both use."""
    host, _ = registry
    core = client.CoreV1Api(node_kube)
    await core.create_namespaced_secret(
        NAMESPACE, dockerconfig_secret(PULL_SECRET, host, ROBOT, PASSWORD)
    )
    account = await core.read_namespaced_service_account("default", NAMESPACE)
    before = [s.name for s in account.image_pull_secrets or []]
    patch = {"imagePullSecrets": [{"name": n} for n in [*before, PULL_SECRET]]}
    await core.patch_namespaced_service_account("default", NAMESPACE, patch)
    yield PULL_SECRET
    await core.patch_namespaced_service_account(
        "default", NAMESPACE, {"imagePullSecrets": [{"name": n} for n in before] or None}
    )
    await core.delete_namespaced_secret(PULL_SECRET, NAMESPACE)


def odh_stream(name: str, host: str, tags: dict[str, str], annotations=None) -> dict:
    """Open Data Hub's jupyter-minimal-notebook ImageStream, renamed, its tags named in
    ``tags`` (spec tag -> registry tag) pointed at ``host``/REPOSITORY and followed
    (scheduled), the others left out."""
    stream = yaml.safe_load(ODH_STREAM.read_text())
    stream["metadata"]["name"] = name
    stream["metadata"]["annotations"].update(
        {"opendatahub.io/notebook-image-name": f"ODH minimal ({name})", **(annotations or {})}
    )
    kept = []
    for spec in stream["spec"]["tags"]:
        if spec["name"] in tags:
            spec["from"]["name"] = f"{host}/{REPOSITORY}:{tags[spec['name']]}"
            # plain HTTP registry; follow the tag when it moves
            spec["importPolicy"] = {"scheduled": True, "insecure": True}
            kept.append(spec)
    stream["spec"]["tags"] = kept
    return stream


async def apply_stream(kube, stream: dict) -> None:
    await client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, stream
    )


async def delete_stream(kube, name: str) -> None:
    try:
        await client.CustomObjectsApi(kube).delete_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, name
        )
    except client.ApiException as e:
        if e.status != 404:
            raise


async def wait_tag(kube, image: str, ok, what: str, timeout: float = 90) -> dict:
    """The status tag of ``image`` once ``ok(status_tag)``."""
    deadline = time.monotonic() + timeout
    while True:
        _, status = await stream_tag_or_none(kube, image)
        if status and ok(status):
            return status
        assert time.monotonic() < deadline, f"{image}: not {what} after {timeout} s: {status}"
        await asyncio.sleep(0.25)


def import_failure(status: dict) -> dict | None:
    return next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "ImportSuccess" and c.get("status") == "False"
        ),
        None,
    )


def at(digest: str):
    return lambda s: bool(s.get("items")) and s["items"][0]["image"] == digest


# -- what a user sees ------------------------------------------------------------------------


class Browser:
    """A user logged in to the hub (the demo's dummy authenticator, cookies as a browser keeps
    them), reading the spawn page and, as the page's script does when the user opens a card's
    versions, the full card."""

    def __init__(self, demo, user: str) -> None:
        self.demo, self.user = demo, user
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.logged_in = False

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def get(self, path: str, **kwargs) -> str:
        url = f"{self.demo.url}{path}"
        if not self.logged_in:
            async with self.session.get(f"{self.demo.url}/hub/login") as r:
                xsrf = re.search(r'name="_xsrf" value="([^"]+)"', await r.text()).group(1)
            async with self.session.post(
                f"{self.demo.url}/hub/login?next=",
                data={"username": self.user, "password": "x", "_xsrf": xsrf},
                allow_redirects=False,
            ) as r:
                assert r.status == 302, r.status
            self.logged_in = True
        async with self.session.get(url, **kwargs) as r:
            assert r.status == 200, (r.status, (await r.text())[:2000])
            return await r.text()

    async def card(self, stream: str) -> tuple[str, str] | None:
        """The card of ``stream`` as text: as the spawn page shows it (each version with its
        phase), and in full (its versions' status and messages, which the page loads when the
        user opens them). None while the page has no card for it."""
        page = await self.get(f"/hub/spawn/{self.user}")
        found = [
            m
            for m in re.finditer(
                r'<div class="card [^"]*aicoe-image-card" data-stream="([^"]+)"', page
            )
            if html.unescape(m.group(1)).split("/")[-1] == stream
        ]
        if not found:
            return None
        start = found[0].start()
        end = page.find("aicoe-image-card", found[0].end())
        shown = page[start : end if end > 0 else len(page)]
        answer = await self.get(
            f"/hub/aicoe/form-state/{self.user}",
            params={"card": html.unescape(found[0].group(1)), "full": "1"},
        )
        return _text(shown), _text(json.loads(answer)["html"])

    async def wait_card(self, stream: str, *texts: str, timeout: float = 30) -> tuple[str, str]:
        """The card of ``stream`` once its full text has each of ``texts``."""
        deadline = time.monotonic() + timeout
        while True:
            card = await self.card(stream)
            if card and all(text in card[1] for text in texts):
                return card
            assert time.monotonic() < deadline, f"{stream}: {texts!r} not on its card: {card}"
            await asyncio.sleep(0.25)


def _text(markup: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


async def pod_image(kube, user: str) -> str:
    """The image of the user's server, which the kubelet pulled with the pull secret that the
    ServiceAccount admission gave the pod."""
    [pod] = await user_pods(kube, NAMESPACE, user)
    assert {"name": PULL_SECRET} in pod["spec"].get("imagePullSecrets", []), pod["spec"]
    return pod["spec"]["containers"][0]["image"]


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.timeout(900)
async def test_a_tag_in_a_registry_with_a_password_is_started_at_its_digest_and_followed(
    demo, node_kube, registry, pull_secret
):
    """The admin applies ODH's stream pointed at the registry by tag, with the robot's pull
    secret on the namespace's default ServiceAccount: the tag becomes ready at the registry's
    digest and a user's server runs that digest. A new image pushed to the tag is imported
    within the scheduled interval, the next server runs it, the running one keeps its own."""
    host, first = registry
    name = "odh-minimal-private"
    early, _ = await new_user_token(demo)
    browser = Browser(demo, early)
    applied_at = time.monotonic()
    both = {"2025.2": "2025.2", "2025.1": "2025.1"}
    await apply_stream(node_kube, odh_stream(name, host, both))
    image = f"{NAMESPACE}/{name}:2025.2"
    try:
        shown, _ = await browser.wait_card(name, "2025.2 recommended ready", "2025.1 ready")
        ready_after = time.monotonic() - applied_at
        assert "2025.2 (recommended)" in shown and "failed" not in shown, shown
        print(
            f"\nimport latency: stream applied -> ready on the spawn page {ready_after:.1f} s "
            f"(poll {IMPORT_POLL} s)"
        )
        _, status = await stream_tag_or_none(node_kube, image)
        assert status["items"][0]["dockerImageReference"] == f"{host}/{REPOSITORY}@{first}"
        assert status["items"][0]["image"] == first
        assert import_failure(status) is None

        await start_server(demo, node_kube, early, image)
        assert await pod_image(node_kube, early) == f"{host}/{REPOSITORY}@{first}"

        moved_at = time.monotonic()
        second = await asyncio.to_thread(push_rebuild, host, "2025.2", "2")
        assert second != first
        status = await wait_tag(node_kube, image, at(second), "moved", IMPORT_INTERVAL * 3 + 30)
        latency = time.monotonic() - moved_at
        print(
            f"\nimport latency: tag moved in the registry -> status at the new digest "
            f"{latency:.1f} s (interval {IMPORT_INTERVAL} s, poll {IMPORT_POLL} s)"
        )
        assert [i["image"] for i in status["items"][:2]] == [second, first]
        _, older = await stream_tag_or_none(node_kube, f"{NAMESPACE}/{name}:2025.1")
        assert [i["image"] for i in older["items"]] == [first]  # its tag did not move

        late, _ = await new_user_token(demo)
        await start_server(demo, node_kube, late, image)
        assert await pod_image(node_kube, late) == f"{host}/{REPOSITORY}@{second}"
        assert await pod_image(node_kube, early) == f"{host}/{REPOSITORY}@{first}"
        await asyncio.gather(
            stop_server(demo, node_kube, early), stop_server(demo, node_kube, late)
        )
    finally:
        await browser.session.close()
        await delete_stream(node_kube, name)


@pytest.mark.timeout(600)
async def test_a_missing_tag_a_wrong_password_and_a_registry_that_is_down_show_and_recover(
    demo, node_cluster, node_kube, registry, pull_secret
):
    """Each failure is an ImportSuccess=False condition whose message the card shows (the
    stream is listed, the tag failed, with the registry's reason); each tag becomes ready
    once the cause is fixed: the tag pushed, the Secret's password corrected, the registry
    started again."""
    host, digest = registry
    core = client.CoreV1Api(node_kube)
    wrong = "workbench-images-pull-wrong"
    await core.create_namespaced_secret(
        NAMESPACE, dockerconfig_secret(wrong, host, ROBOT, "not-" + PASSWORD)
    )
    missing_tag = f"future-{secrets.token_hex(3)}"
    streams = {
        "odh-minimal-missing": odh_stream("odh-minimal-missing", host, {"2025.2": missing_tag}),
        # the stream's own Secret comes before the ServiceAccount's
        "odh-minimal-wrong-password": odh_stream(
            "odh-minimal-wrong-password",
            host,
            {"2025.2": "2025.2"},
            {"aicoe-spawner.io/pull-secrets": wrong},
        ),
    }
    user, _ = await new_user_token(demo)
    browser = Browser(demo, user)
    try:
        for stream in streams.values():
            await apply_stream(node_kube, stream)
        expected = {
            "odh-minimal-missing": (
                "NotFound",
                f"reading manifest {missing_tag} in {host}/{REPOSITORY}: manifest unknown",
            ),
            "odh-minimal-wrong-password": (
                "Unauthorized",
                f"reading manifest 2025.2 in {host}/{REPOSITORY}: unauthorized: "
                f"authentication required (with the credentials of pull secret '{wrong}')",
            ),
        }
        for name, (reason, message) in expected.items():
            status = await wait_tag(
                node_kube, f"{NAMESPACE}/{name}:2025.2", import_failure, "failed"
            )
            cond = import_failure(status)
            assert (cond["reason"], status.get("items") or []) == (reason, []), status
            assert message in cond["message"], cond
            print(f"\n{name}: {cond['reason']}: {cond['message']}")
            assert cond["generation"] == 1 and cond["lastTransitionTime"]
            shown, card = await browser.wait_card(name, "2025.2 recommended failed")
            assert FAILED_OPTION in shown, shown
            assert f"2025.2 recommended failed {cond['message']}" in card, card

        # the registry is down: a stream applied now fails saying so
        node_cluster.node.stop_auth_registry()
        name = "odh-minimal-registry-down"
        streams[name] = odh_stream(name, host, {"2025.2": "2025.2"})
        await apply_stream(node_kube, streams[name])
        status = await wait_tag(node_kube, f"{NAMESPACE}/{name}:2025.2", import_failure, "failed")
        cond = import_failure(status)
        assert cond["reason"] == "InternalError", cond
        assert f"pinging container registry {host}" in cond["message"], cond
        assert "connection refused" in cond["message"], cond
        print(f"\n{name}: {cond['reason']}: {cond['message']}")
        shown, card = await browser.wait_card(name, "2025.2 recommended failed")
        assert FAILED_OPTION in shown, shown
        assert f"2025.2 recommended failed {cond['message']}" in card, card

        # fixed: the registry back, the tag pushed, the password corrected
        fixed_at = time.monotonic()
        node_cluster.node.start_auth_registry(ROBOT, PASSWORD)
        pushed = await asyncio.to_thread(
            copy_image, f"{host}/{REPOSITORY}@{digest}", host, missing_tag
        )
        assert pushed == digest
        await core.replace_namespaced_secret(
            wrong, NAMESPACE, dockerconfig_secret(wrong, host, ROBOT, PASSWORD)
        )
        now = await asyncio.to_thread(tag_digest, host, "2025.2")  # moved by the test before
        for name in streams:
            want = digest if name == "odh-minimal-missing" else now
            status = await wait_tag(
                node_kube,
                f"{NAMESPACE}/{name}:2025.2",
                lambda s, want=want: at(want)(s) and import_failure(s) is None,
                "recovered",
                IMPORT_RETRY * 5 + 30,
            )
            shown, card = await browser.wait_card(name, "2025.2 recommended ready")
            assert "failed" not in shown and "failed" not in card, card
        print(
            f"\nrecovered {len(streams)} tags {time.monotonic() - fixed_at:.1f} s after the fixes"
        )
    finally:
        if not node_cluster.node.procs.get("auth-registry"):
            node_cluster.node.start_auth_registry(ROBOT, PASSWORD)
        for name in streams:
            await delete_stream(node_kube, name)
        await core.delete_namespaced_secret(wrong, NAMESPACE)
        await browser.session.close()
