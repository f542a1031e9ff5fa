"""The product on the real node, as ``make demo`` runs it: JupyterHub from the example
``jupyterhub_config.py`` with the builder as a hub-managed service. A user builds the example
repositories (Dockerfile and source-to-image) through the builder's API; the Jobs run buildah
in the builder image on the node, clone from a git server pods reach, and push to the local
registry; the ImageStream gets the pushed digest; the user starts the built image and the
repository's notebook is in it (Jupyter contents API). Every user's home is a persistent
volume (a folder of the node): the image's home files are copied into it on first start and a
user's edit survives a restart. Every built image was checked (software annotations on its
tag); a Dockerfile without jupyterhub fails the check and the tag keeps its image.
Real public repositories with only environment files (tests/data/repos) are detected as
environment builds, install from the test cluster's package index, and the running server has
exactly the pinned versions."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import aiohttp
import pytest
import yaml
from harness.hub import run_in_kernel
from harness.node import (
    contents,
    data_repo,
    new_user_token,
    spawn_and_read,
    start_server,
    stop_server,
    stream_tag,
    stream_tag_or_none,
)
from kubernetes_asyncio import client

from aicoe_devcluster.demo import EXAMPLE_REPOS, NAMESPACE, Demo
from aicoe_devcluster.images import MANIFEST_TYPES, image_specs, registry_digest
from aicoe_spawner.home_seed import SEED_CONTAINER, marker_name

pytestmark = pytest.mark.node


async def build(demo: Demo, token: str, repo: str, timeout: float = 900) -> dict:
    """Build ``repo`` at ``v1`` as the token's user; the finished build with its log."""
    headers = {"Authorization": f"token {token}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.post(f"{demo.builder_url}/api/builds", json={"repo": repo, "ref": "v1"}) as r:
            assert r.status in (200, 202), (r.status, await r.text())
            submitted = await r.json()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with s.get(f"{demo.builder_url}/api/builds/{submitted['id']}") as r:
                current = await r.json()
            if current["phase"] in ("ready", "failed", "cancelled"):
                break
            await asyncio.sleep(2)
        async with s.get(f"{demo.builder_url}/api/builds/{submitted['id']}/logs") as r:
            current["log"] = await r.text()
    return current


@pytest.mark.timeout(1200)  # real builds and image pulls on a shared 2-core machine
@pytest.mark.parametrize(
    ("repo", "notebook", "title"),
    [
        ("dockerfile-notebook", "hello.ipynb", "Hello from a Dockerfile build"),
        ("source-notebook", "analysis.ipynb", "Hello from a source-to-image build"),
    ],
)
async def test_build_on_the_node_then_launch_the_built_image(
    demo, node_cluster, node_kube, repo, notebook, title
):
    user, token = await new_user_token(demo)
    result = await build(demo, token, demo.repos[repo])
    assert result["phase"] == "ready", result
    namespace, name_tag = result["image"].split("/", 1)
    stream, tag = name_tag.split(":")
    assert namespace == NAMESPACE

    # The ImageStream carries the digest the registry holds for the pushed image.
    is_ = await client.CustomObjectsApi(node_kube).get_namespaced_custom_object(
        "image.openshift.io", "v1", namespace, "imagestreams", stream
    )
    [status_tag] = [t for t in is_["status"]["tags"] if t["tag"] == tag]
    reference = status_tag["items"][0]["dockerImageReference"]
    registry, repository = reference.split("@")[0].split("/", 1)
    assert registry == node_cluster.node.registry
    assert reference.endswith(registry_digest(registry, repository, tag))

    # The image was checked: its software and top-level packages are on the tag (the card).
    assert f"(this hub: {metadata.version('jupyterhub')})" in result["log"], result["log"]
    spec_tag, _ = await stream_tag(node_kube, result["image"])
    software = json.loads(spec_tag["annotations"]["opendatahub.io/notebook-software"])
    assert [p["name"] for p in software] == ["Python", "JupyterLab", "JupyterHub"]
    assert software[2]["version"] == metadata.version("jupyterhub")
    assert software[0]["version"].startswith("3.11.")
    dependencies = json.loads(
        spec_tag["annotations"]["opendatahub.io/notebook-python-dependencies"]
    )
    assert {"name": "jupyterlab", "version": metadata.version("jupyterlab")} in dependencies

    # The notebook comes from the image through the user's (empty) home volume.
    pod, content = await spawn_and_read(demo, node_kube, user, token, result["image"], notebook)
    assert pod["spec"]["containers"][0]["image"] == reference
    [seed] = pod["spec"]["initContainers"]
    assert seed["name"] == SEED_CONTAINER and seed["image"] == reference
    assert content["type"] == "notebook"
    assert title in "".join(content["content"]["cells"][0]["source"])


@pytest.mark.timeout(1200)
async def test_a_persistent_home_gets_the_images_files_once_and_keeps_the_users_edit(
    demo, node_kube
):
    user, token = await new_user_token(demo)
    result = await build(demo, token, demo.repos["dockerfile-notebook"])  # shared if built
    assert result["phase"] == "ready", result
    pod = await start_server(demo, node_kube, user, result["image"])
    reference = pod["spec"]["containers"][0]["image"]
    first = await contents(demo, user, token, "hello.ipynb")
    assert "Hello from a Dockerfile build" in "".join(first["content"]["cells"][0]["source"])
    home = demo.homes / user
    assert (home / ".aicoe-spawner" / "seeded" / marker_name(reference)).is_file()
    # the user edits the notebook and adds one of their own
    edited = first["content"]
    edited["cells"][0]["source"] = ["# My own analysis\n"]
    model = {"type": "notebook", "format": "json", "content": edited}
    await contents(demo, user, token, "hello.ipynb", "PUT", model)
    await contents(demo, user, token, "mine.ipynb", "PUT", model)
    await stop_server(demo, node_kube, user)

    await start_server(demo, node_kube, user, result["image"])  # the same image again
    again = await contents(demo, user, token, "hello.ipynb")
    assert "".join(again["content"]["cells"][0]["source"]) == "# My own analysis\n"
    assert (await contents(demo, user, token, "mine.ipynb"))["type"] == "notebook"
    assert (home / "hello.ipynb").stat().st_uid == 1000  # the notebook user's files
    await stop_server(demo, node_kube, user)


@pytest.mark.timeout(1200)
async def test_a_dockerfile_without_jupyterhub_fails_the_check_and_the_tag_keeps_its_image(
    demo, node_kube, tmp_path
):
    """The repository's next release drops jupyterhub: its build fails with what to add, in
    the record's message, and the tag keeps serving the release before."""
    _, token = await new_user_token(demo)
    good = await build(demo, token, demo.repos["dockerfile-notebook"])  # shared if built
    assert good["phase"] == "ready", good
    _, served = await stream_tag(node_kube, good["image"])
    assert served and served["items"][0]["image"] == good["digest"]
    broken = tmp_path / "dockerfile-notebook"
    shutil.copytree(EXAMPLE_REPOS / "dockerfile-notebook", broken)
    with (broken / "Dockerfile").open("a") as f:
        f.write("USER root\nRUN pip uninstall -y jupyterhub\nUSER 1000:100\n")
    assert demo.git is not None
    substitutions = {"NOTEBOOK_IMAGE": demo.node.images["notebook"]}
    demo.git.add_repo("dockerfile-notebook", broken, substitutions=substitutions)
    try:
        bad = await build(demo, token, demo.repos["dockerfile-notebook"])
    finally:  # the example repository as it was, for the other tests
        demo.git.add_repo(
            "dockerfile-notebook",
            EXAMPLE_REPOS / "dockerfile-notebook",
            substitutions=substitutions,
        )
    assert bad["phase"] == "failed", bad
    assert bad["commit"] != good["commit"]
    major = metadata.version("jupyterhub").split(".")[0]
    message = " ".join(bad["message"].split())
    assert (
        "the image has no jupyterhub-singleuser, the program JupyterHub starts: add "
        f"`jupyterhub=={major}.*` to requirements.txt" in message
    ), bad["message"]
    spec_tag, status = await stream_tag(node_kube, good["image"])
    assert status["items"][0]["image"] == good["digest"]  # still the release before
    assert spec_tag["annotations"]["opendatahub.io/notebook-build-commit"] == good["commit"]
    assert spec_tag["annotations"]["aicoe-spawner.io/last-build"] == f"failed {bad['id']}"


# Environment builds done in this module: repository -> (the builder's token, the build), so
# that a later test starts from them instead of building the same commit again.
BUILT: dict[str, tuple[str, dict]] = {}

# Real public repositories (tests/data/repos, with their provenance): the files that decide the
# build, the versions the server must have, and programs apt.txt installs.
ENVIRONMENT_CASES = {
    "requirements-only": (
        ["requirements.txt"],
        {"requests": "2.32.3", "xmltodict": "0.13.0", "diskcache": "5.6.3"},
        [],
    ),
    "pipfile-lock": (
        ["Pipfile", "Pipfile.lock"],
        {"daiquiri": "2.0.0", "python-json-logger": "0.1.11"},
        [],
    ),
    # Poetry 1's tables, exported by micropipenv; the project itself cannot be built (noted)
    "poetry-lock": (
        ["pyproject.toml", "poetry.lock"],
        {"daiquiri": "2.0.0", "python-json-logger": "0.1.11"},
        [],
    ),
    "uv-lock": (
        ["pyproject.toml", "uv.lock"],
        {"fastapi": "0.118.0", "pydantic": "2.11.10", "uvicorn": "0.37.0"},
        [],
    ),
    "apt-postbuild": (["apt.txt", "postBuild"], {}, ["/usr/games/cowsay", "/usr/games/lolcat"]),
    # runtime.txt python-3.11 -> the admin's 3.11 base image; uv.lock wins over requirements.txt
    "runtime-uv-lock": (
        ["runtime.txt", "pyproject.toml", "uv.lock"],
        {"numpy": "2.2.6", "matplotlib": "3.10.3", "ipython": "9.2.0", "pyyaml": "6.0.2"},
        [],
    ),
}
#: What the record says of the files that did not decide (the notes the page shows).
ENVIRONMENT_NOTES = {
    "runtime-uv-lock": [
        ".python-version ignored: runtime.txt names the Python version",
        "requirements.txt ignored: uv.lock pins the packages",
    ],
}


@pytest.mark.timeout(2400)  # real builds with pip and apt on a shared 2-core machine
async def test_environment_builds_install_exactly_what_each_repository_pins(demo, node_kube):
    """Each repository URL and a tag, nothing else, built at once: detected as an
    environment build, the packages come from the test cluster's index and Debian
    repository, and a server started from the hub has exactly the pinned versions, the
    programs apt.txt names and the repository's files in its home."""
    users = {repo: await new_user_token(demo) for repo in ENVIRONMENT_CASES}
    urls = {repo: demo.git.add_repo(repo, data_repo(repo)) for repo in ENVIRONMENT_CASES}
    started = time.monotonic()

    async def timed(repo: str) -> dict:
        result = await build(demo, users[repo][1], urls[repo], timeout=2000)
        print(f"{repo}: {result['phase']} after {time.monotonic() - started:.0f} s")
        return result

    results = dict(
        zip(ENVIRONMENT_CASES, await asyncio.gather(*map(timed, ENVIRONMENT_CASES)), strict=True)
    )
    BUILT.update({repo: (users[repo][1], results[repo]) for repo in results})
    for repo, (decided_by, pins, programs) in ENVIRONMENT_CASES.items():
        result = results[repo]
        assert result["phase"] == "ready", (repo, result["message"], result["log"][-4000:])
        assert (result["strategy"], result["decided_by"]) == ("environment", decided_by), repo
        assert f"decided by: {' '.join(decided_by)}" in result["log"]
        for note in ENVIRONMENT_NOTES.get(repo, []):
            assert note in result["notes"], (repo, result["notes"])
        if repo == "poetry-lock":  # its root cannot be built: the lock's packages still are
            assert "pyproject.toml: the project itself is not installed" in result["log"]
        if "runtime.txt" in decided_by:  # the build checked the base image's Python
            assert "aicoe-env python runtime.txt 3.11" in result["log"], repo
        code = (
            "import importlib.metadata as m, json, os, shutil\n"
            f"names = {sorted(pins)!r}\n"
            f"programs = {programs!r}\n"
            "import sys\n"
            "print(json.dumps({'versions': {n: m.version(n) for n in names},\n"
            "  'python': '%d.%d' % sys.version_info[:2],\n"
            "  'programs': [p for p in programs if os.access(p, os.X_OK)],\n"
            f"  'file': os.path.exists(os.path.expanduser('~/{decided_by[-1]}'))}}))"
        )
        user, token = users[repo]
        await start_server(demo, node_kube, user, result["image"])
        try:
            got = json.loads(await run_in_kernel(demo, user, token, code))
        finally:
            await stop_server(demo, node_kube, user)
        want = {"versions": pins, "programs": programs, "file": True, "python": "3.11"}
        assert got == want, repo


def _stale_pipfile(files: Path) -> None:
    pipfile = files / "Pipfile"
    pipfile.write_text(pipfile.read_text().replace("[packages]\n", '[packages]\nxmltodict = "*"\n'))


def _tampered_lock(files: Path) -> None:
    lock = files / "Pipfile.lock"
    data = json.loads(lock.read_text())
    data["default"]["daiquiri"]["hashes"] = [
        h[:-4] + ("0000" if not h.endswith("0000") else "1111")
        for h in data["default"]["daiquiri"]["hashes"]
    ]
    lock.write_text(json.dumps(data, indent=4))


def _failing_postbuild(files: Path) -> None:
    (files / "postBuild").write_text("#!/bin/sh\necho 'setting up the data'\nexit 1\n")
    (files / "postBuild").chmod(0o755)


def _missing_apt_package(files: Path) -> None:
    (files / "apt.txt").write_text("cowsay\nno-such-package-aicoe\n")


BAD_ENVIRONMENTS = {
    "stale-pipfile": (
        "pipfile-lock",
        _stale_pipfile,
        "Pipfile.lock is out of date with Pipfile, or needs another Python: run `pipenv lock`",
    ),
    "tampered-lock": (
        "pipfile-lock",
        _tampered_lock,
        "Pipfile.lock: the downloaded daiquiri==2.0.0 does not match the hash in the lock",
    ),
    "failing-postbuild": (
        "requirements-only",
        _failing_postbuild,
        "postBuild exited with code 1",
    ),
    "missing-apt-package": (
        "apt-postbuild",
        _missing_apt_package,
        "apt.txt: apt-get could not install it: E: Unable to locate package no-such-package-aicoe",
    ),
}


@pytest.mark.timeout(1800)
async def test_a_broken_environment_fails_its_build_saying_why_and_registers_nothing(
    demo, node_kube, tmp_path
):
    """A stale lock, a tampered hash, a failing postBuild, an apt package that does not
    exist: each a failed build whose record message names the cause (not only its log), and
    no ImageStream tag. A Python version no base image offers is refused before any build."""
    urls = {}
    for name, (source, breaks, _) in BAD_ENVIRONMENTS.items():
        files = tmp_path / name
        shutil.copytree(data_repo(source), files)
        breaks(files)
        urls[name] = demo.git.add_repo(name, files)
    tokens = {name: (await new_user_token(demo))[1] for name in BAD_ENVIRONMENTS}
    results = await asyncio.gather(
        *(build(demo, tokens[name], urls[name], timeout=1500) for name in BAD_ENVIRONMENTS)
    )
    for (name, (_, _, reason)), result in zip(BAD_ENVIRONMENTS.items(), results, strict=True):
        assert result["phase"] == "failed", (name, result["phase"], result["log"][-3000:])
        assert reason in " ".join(result["message"].split()), (name, result["message"])
        _, status = await stream_tag_or_none(node_kube, result["image"])
        assert status is None, (name, status)

    url = demo.git.add_repo("runtime-python2", data_repo("runtime-python2"))
    _, token = await new_user_token(demo)
    headers = {"Authorization": f"token {token}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.post(f"{demo.builder_url}/api/builds", json={"repo": url, "ref": "v1"}) as r:
            assert r.status == 422, await r.text()
            body = await r.json()
    assert "runtime.txt" in json.dumps(body) and "Python 2.7 is not offered" in json.dumps(body)
    assert "versions offered: 3.11" in json.dumps(body)


def registry_layers(reference: str) -> list[str]:
    """The layer digests of ``registry/repository@digest`` (the local plain-HTTP registry)."""
    registry, rest = reference.split("/", 1)
    repository, digest = rest.split("@")
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{digest}",
        headers={"Accept": MANIFEST_TYPES},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return [layer["digest"] for layer in json.load(resp)["layers"]]


@pytest.mark.timeout(1500)
async def test_a_notebook_change_reuses_the_environment_image(demo, node_kube, tmp_path):
    """The next commit changes only a notebook: its build uses the environment image the
    first one kept, from the node's image store (the packages are not installed again, the
    image is not pulled) and the new image is that image's layers plus one."""
    if "requirements-only" in BUILT:  # built by the test above, at this commit
        token, first = BUILT["requirements-only"]
        url = first["repo"]
    else:
        _, token = await new_user_token(demo)
        url = demo.git.add_repo("requirements-only", data_repo("requirements-only"))
        first = await build(demo, token, url)
    assert first["phase"] == "ready", first["message"]
    files = tmp_path / "requirements-only"
    shutil.copytree(data_repo("requirements-only"), files)
    (files / "notes.ipynb").write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    demo.git.add_repo("requirements-only", files, tag="v1")
    started = time.monotonic()
    second = await build(demo, token, url)
    took = time.monotonic() - started
    assert second["phase"] == "ready", second["message"]
    assert second["commit"] != first["commit"]
    assert "==> environment image: reused" in second["log"], second["log"][-3000:]
    # the demo keeps environment images on the node (build_node_image_store): the first
    # build pod's keep step put it there, the second build used it where it lies (no pull)
    assert "from the node's image store" in second["log"], second["log"][-3000:]
    assert "aicoe-env requirements" not in second["log"]  # nothing installed again
    print(f"rebuild after a notebook change: {took:.0f} s")
    _, status = await stream_tag(node_kube, second["image"])
    now = registry_layers(status["items"][0]["dockerImageReference"])
    kept = [line for line in first["log"].splitlines() if "environment image" in line]
    assert kept, first["log"][-3000:]
    assert len(now) >= 2
    env_ref = second["log"].split("==> environment image: reused ", 1)[1].split()[0]
    registry, rest = env_ref.split("/", 1)
    repository, tag = rest.rsplit(":", 1)
    env_digest = registry_digest(registry, repository, tag)
    assert env_digest is not None
    assert registry_layers(f"{registry}/{repository}@{env_digest}") == now[:-1]


ODH_STREAM = (
    Path(__file__).parents[1]
    / "data"
    / "imagestreams"
    / ("odh-notebooks-jupyter-minimal-2025.yaml")
)


@pytest.mark.timeout(600)
async def test_an_imagestream_an_admin_points_at_a_registry_becomes_startable(demo, node_kube):
    """Open Data Hub's own ImageStream manifest, its tags pointed at an image in a registry by
    tag (as an admin points one at quay.io): the builder imports it (status.tags at the
    digest, as OpenShift writes them), the card is ready, and a user starts a server on it
    at that digest."""
    registry = demo.node.registry
    notebook = demo.node.images["notebook"]  # registry/aicoe/notebook@sha256:…
    repository = notebook.split("/", 1)[1].split("@")[0]
    tag = image_specs()["notebook"].key()  # the tag ImageBuilder.ensure pushed it with
    stream = yaml.safe_load(ODH_STREAM.read_text())
    stream["metadata"]["name"] = "imported-minimal"
    for spec in stream["spec"]["tags"]:
        spec["from"]["name"] = f"{registry}/{repository}:{tag}"  # a tag, not a digest
        spec["importPolicy"] = {"insecure": True}  # the test registry is plain HTTP
    api = client.CustomObjectsApi(node_kube)
    await api.create_namespaced_custom_object(
        "image.openshift.io", "v1", NAMESPACE, "imagestreams", stream
    )
    digest = notebook.split("@")[1]
    image = f"{NAMESPACE}/imported-minimal:2025.2"
    deadline = time.monotonic() + 120
    while True:
        _, status = await stream_tag_or_none(node_kube, image)
        if status and status.get("items"):
            break
        assert time.monotonic() < deadline, f"not imported: {status}"
        await asyncio.sleep(1)
    assert status["items"][0]["dockerImageReference"] == f"{registry}/{repository}@{digest}"
    assert status["items"][0]["image"] == digest
    user, token = await new_user_token(demo)
    pod = await start_server(demo, node_kube, user, image)
    try:
        assert pod["spec"]["containers"][0]["image"] == f"{registry}/{repository}@{digest}"
        assert (await contents(demo, user, token, ""))["type"] == "directory"
    finally:
        await stop_server(demo, node_kube, user)
