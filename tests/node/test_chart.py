"""The Helm chart installed on a real node, from images built from this repository.

`helm install` with helm/values-kubernetes.yaml plus values for this machine (images and build
registry on the node's local registry, the proxy's Service a NodePort on the node IP, the hub
database on a PersistentVolume the test provides, no user storage: the node has no volume
provisioner). Then, as a user in chromium through the proxy's Service: log in, build an example
repository on the builder page, Launch it, reach JupyterLab from the built image. `helm
upgrade` with a changed value keeps the running server and the finished build; `helm
uninstall` leaves only what docs/deploy.md says stays. The commands are the ones in
docs/deploy.md ("On a test node"). Screenshots go to test-artifacts/chart/.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness.browser import CHROMIUM, CHROMIUM_ARGS
from harness.helm_chart import CHART, egress_allows, helm, selects
from harness.node import NodeCluster, start_node_cluster, stop_node_cluster
from kubernetes_asyncio import client
from playwright.async_api import async_playwright, expect

from aicoe_devcluster import api_client
from aicoe_devcluster.controlplane import REPO_ROOT
from aicoe_devcluster.demo import EXAMPLE_REPOS
from aicoe_devcluster.gitserver import GitServer
from aicoe_devcluster.images import registry_digest

pytestmark = [pytest.mark.node, pytest.mark.timeout(2400)]

RELEASE = "aicoe-spawner"
NAMESPACE = "jupyterhub"
BUILDS = "jupyterhub-builds"  # the chart's default build namespace: "<namespace>-builds"
USER = "chart-user"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "chart"
COMPONENTS = ("hub", "proxy", "image-builder")


@pytest.fixture(scope="module")
def chart_node(tmp_path_factory) -> Iterator[tuple[NodeCluster, GitServer]]:
    """A node with cluster services (kube-proxy, CoreDNS, the API server on the node IP), the
    chart's images in its registry and the example repositories on a git server pods reach."""
    cluster = start_node_cluster(("notebook", "builder", "hub", "proxy"), cluster_services=True)
    node = cluster.node
    git = GitServer(tmp_path_factory.mktemp("git"), address=node.node_ip).start()
    try:
        for repo in EXAMPLE_REPOS.iterdir():
            if repo.is_dir():
                git.add_repo(
                    repo.name, repo, substitutions={"NOTEBOOK_IMAGE": node.images["notebook"]}
                )
        print(f"\nnode with cluster services ready in {node.timings['start']:.1f} s")
        yield cluster, git
    finally:
        git.stop()
        keep_pod_logs(node)
        stop_node_cluster(cluster)
    assert node.leftovers() == []


def keep_pod_logs(node) -> None:
    """Copy the logs of the pods on the node (hub, proxy, builder, builds, notebook) to
    test-artifacts/chart/pod-logs: a pod's logs go with the pod."""
    logs = Path(node.workdir) / "kubelet" / "pod-logs"
    if logs.exists():
        shutil.copytree(logs, ARTIFACTS / "pod-logs", dirs_exist_ok=True, symlinks=False)


async def wait_routed(url: str, timeout: float = 120) -> None:
    """Wait until the proxy routes ``url`` to its service. The hub adds an external service's
    route once it has started and reached the service, which can be seconds after its pod
    reports Ready; until then the proxy's default route sends the request to the hub (404)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status = await asyncio.to_thread(http_status, url)
        except OSError as e:
            status, last = 0, str(e)
        if status == 200:
            return
        last = last or f"HTTP {status}"
        await asyncio.sleep(0.5)
    raise AssertionError(f"{url} not routed to its service after {timeout:.0f} s: {last}")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def local_image(node, name: str) -> dict[str, str]:
    """Chart image values (name, tag) of one of the node's images: the tag the session pushed
    at its digest (the hash of the image's inputs then, whatever they are now)."""
    reference, digest = node.images[name].split("@", 1)
    repository = reference.split("/", 1)[1]
    with urllib.request.urlopen(f"http://{node.registry}/v2/{repository}/tags/list") as r:
        tags = json.load(r)["tags"] or []
    tag = next(t for t in tags if registry_digest(node.registry, repository, t) == digest)
    return {"name": reference, "tag": tag}


def example_stream(node) -> dict:
    return {
        "name": "jupyterlab",
        "displayName": "JupyterLab (Debian)",
        "description": "JupyterLab on Debian, built on this machine",
        "order": 1,
        "tags": [
            {
                "name": "latest",
                "from": "{name}:{tag}".format(**local_image(node, "notebook")),  # by tag
                "scheduled": True,
                "insecure": True,
                "default": True,
                "recommended": True,
            }
        ],
    }


async def wait_imported(api: client.ApiClient, name: str, timeout: float = 120) -> dict:
    """The example stream's tag once the builder imported it: its status item."""
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    while True:
        stream = await custom.get_namespaced_custom_object(
            "image.openshift.io", "v1", NAMESPACE, "imagestreams", name
        )
        tags = (stream.get("status") or {}).get("tags") or []
        if tags and tags[0].get("items"):
            return tags[0]["items"][0]
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never imported: {stream.get('status')}")
        await asyncio.sleep(1)


def node_values(cluster: NodeCluster, git: GitServer) -> dict:
    """What this machine needs on top of helm/values-kubernetes.yaml."""
    node = cluster.node
    here = [f"{node.node_ip}/32"]  # DNS, the git server and the registry: all on the node IP
    return {
        "hub": {"image": local_image(node, "hub")},
        "proxy": {
            "chp": {"image": local_image(node, "proxy")},
            "service": {"type": "NodePort"},
        },
        "ingress": {"enabled": False},
        "networkPolicy": {"dnsCIDRs": here},  # CoreDNS runs on the node, not as a pod
        # the chart's example streams, pointed by tag at the node's registry: imported by the
        # chart's builder (plain HTTP there: importPolicy.insecure)
        "imageStreams": {"examples": {"enabled": True, "streams": [example_stream(node)]}},
        "singleuser": {"storage": {"type": "none"}},
        # the pre-puller's helper and pause images: the node's pause image (a static busybox)
        "prePuller": {
            "helper": {"image": local_image(node, "pause")},
            "pause": {"image": local_image(node, "pause")},
        },
        "builder": {
            # the builder chart's own copies of hub.image and networkPolicy.dnsCIDRs
            "image": local_image(node, "hub"),
            "registry": node.registry,
            "buildImage": node.images["builder"],
            "allowedHosts": [node.node_ip],
            # the git server and the registry are plain HTTP on the node's private address
            "extraEnv": {
                "AICOE_BUILDER_PRIVATE_HOSTS": node.node_ip,
                "AICOE_BUILDER_ALLOW_HTTP": "true",
                "AICOE_BUILDER_TLS_VERIFY": "false",
            },
            "networkPolicy": {
                "dnsCIDRs": here,
                "gitCIDRs": here,
                "gitExcept": [],
                "gitPorts": [git.port],
                "registryCIDRs": here,
                "registryPorts": [int(node.registry.rsplit(":", 1)[1])],
            },
        },
    }


def helm_run(cluster: NodeCluster, *args: str) -> str:
    proc = helm(*args, "--kubeconfig", str(cluster.plane.kubeconfig), check=False)
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


async def hub_db_volume(api: client.ApiClient, node) -> None:
    """A PersistentVolume for the hub's database claim (a cluster's provisioner would make
    one): a directory of the node."""
    path = Path(node.workdir) / "volumes" / "hub-db"
    path.mkdir(parents=True)
    path.chmod(0o777)
    await client.CoreV1Api(api).create_persistent_volume(
        {
            "metadata": {"name": "hub-db"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(path), "type": "Directory"},
            },
        }
    )


async def wait_ready(core: client.CoreV1Api, timeout: float = 600) -> dict[str, str]:
    """Wait until one pod of each component is Ready; returns their names."""
    deadline = time.monotonic() + timeout
    while True:
        pods = await core.list_namespaced_pod(
            NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}"
        )
        ready = {}
        states = []
        for pod in pods.items:
            component = pod.metadata.labels.get("app.kubernetes.io/component")
            conditions = {c.type: c.status for c in pod.status.conditions or []}
            states.append(f"{pod.metadata.name}: {pod.status.phase} {conditions}")
            if conditions.get("Ready") == "True" and pod.metadata.deletion_timestamp is None:
                ready[component] = pod.metadata.name
        if all(c in ready for c in COMPONENTS):
            return ready
        if time.monotonic() > deadline:
            raise AssertionError("not all Ready:\n" + "\n".join(states))
        await asyncio.sleep(1)


async def restarts(core: client.CoreV1Api) -> dict[str, int]:
    pods = await core.list_namespaced_pod(
        NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}"
    )
    return {
        p.metadata.name: sum(s.restart_count for s in p.status.container_statuses or [])
        for p in pods.items
    }


async def test_admin_installs_the_chart_and_a_user_builds_and_launches_a_repository(
    chart_node, tmp_path: Path
):
    cluster, git = chart_node
    node = cluster.node
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    values = tmp_path / "values-node.yaml"
    values.write_text(yaml.safe_dump(node_values(cluster, git)))
    (ARTIFACTS / "values-node.yaml").write_text(values.read_text())
    timings: dict[str, float] = {}
    api = await api_client(cluster.plane.kubeconfig)
    core = client.CoreV1Api(api)
    try:
        await hub_db_volume(api, node)
        install = [
            RELEASE,
            str(CHART),
            "-n",
            NAMESPACE,
            "-f",
            str(REPO_ROOT / "helm" / "values-kubernetes.yaml"),
            "-f",
            str(values),
        ]
        started = time.monotonic()
        helm_run(cluster, "install", *install, "--create-namespace")
        pods = await wait_ready(core)
        timings["helm install → hub, proxy, builder Ready"] = time.monotonic() - started
        # the example stream (a post-install hook) becomes startable: imported at its digest
        started = time.monotonic()
        item = await wait_imported(api, "jupyterlab")
        timings["helm install → the example stream imported"] = time.monotonic() - started
        assert item["dockerImageReference"] == node.images["notebook"], item

        service = await core.read_namespaced_service(f"{RELEASE}-proxy-public", NAMESPACE)
        node_port = service.spec.ports[0].node_port
        url = f"http://{node.node_ip}:{node_port}"
        started = time.monotonic()
        await wait_routed(f"{url}/services/image-builder/health")
        timings["all Ready → the proxy routes the builder"] = time.monotonic() - started
        repo = f"{git.base_url}/dockerfile-notebook.git"

        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                login_started = time.monotonic()
                await page.goto(f"{url}/hub/login")
                await page.fill("input[name=username]", USER)
                await page.fill("input[name=password]", "any")
                await page.click("input[type=submit], button[type=submit]")
                await page.wait_for_url("**/hub/spawn**", timeout=60_000)
                await page.get_by_role(
                    "link", name=re.compile("Build an image from a repository")
                ).click()
                await page.wait_for_url("**/services/image-builder/**", timeout=60_000)
                await expect(page.locator("h1")).to_have_text("Build a notebook image")
                await page.screenshot(path=ARTIFACTS / "1-builder-page.png")
                await page.get_by_label("Repository URL").fill(repo)
                await page.get_by_label("Tag, branch or commit").fill("v1")
                build_started = time.monotonic()
                await page.get_by_role("button", name="Build").click()
                row = page.locator("#builds tr", has_text="dockerfile-notebook")
                launch = row.get_by_role("link", name=re.compile("^Launch"))
                await expect(launch).to_be_visible(timeout=900_000)
                timings["Build → image ready"] = time.monotonic() - build_started
                await page.screenshot(path=ARTIFACTS / "2-built.png")
                await policy_selects_build_pods_and_allows_their_peers(api, cluster, git)
                await launch.click()
                await page.wait_for_url(re.compile(r".*/(hub/spawn|user/).*"), timeout=60_000)
                if "/hub/spawn" in page.url and "pending" not in page.url:
                    await page.locator("form#spawn_form [type=submit]").click()
                await page.wait_for_url(f"**/user/{USER}/**", timeout=600_000)
                await page.wait_for_selector(".jp-DirListing-item", timeout=300_000)
                await page.locator(".jp-DirListing-itemText", has_text="hello.ipynb").dblclick()
                await expect(page.locator(".jp-Notebook .jp-RenderedMarkdown h1")).to_contain_text(
                    "Hello from a Dockerfile build", timeout=120_000
                )
                timings["login → JupyterLab from the built image"] = (
                    time.monotonic() - login_started
                )
                await page.screenshot(path=ARTIFACTS / "3-jupyterlab.png")
                assert errors == [], errors

                user_pod = await one_user_pod(core)
                await policies_select_their_pods(cluster, core, user_pod)
                built = (await core.read_namespaced_pod(user_pod, NAMESPACE)).spec.containers[0]
                assert built.image.startswith(f"{node.registry}/"), built.image
                restarted = {name: n for name, n in (await restarts(core)).items() if n}
                assert restarted == {}, restarted  # probes held: nothing was restarted
                for component in COMPONENTS:
                    await security_and_limits_hold(core, node, pods[component])

                # helm upgrade with a changed value: the hub restarts, the rest stays
                started = time.monotonic()
                helm_run(
                    cluster,
                    "upgrade",
                    *install,
                    "--set",
                    "hub.extraEnv.AICOE_UPGRADE_MARK=changed",
                )
                await wait_hub_replaced(core, pods["hub"])
                timings["helm upgrade → all Ready"] = time.monotonic() - started
                await wait_routed(f"{url}/services/image-builder/health")
                assert await one_user_pod(core) == user_pod  # the server kept running
                await page.goto(f"{url}/user/{USER}/lab")
                await page.wait_for_selector(".jp-DirListing-item", timeout=120_000)
                await page.goto(f"{url}/services/image-builder/")
                await expect(
                    page.locator("#builds tr", has_text="dockerfile-notebook").get_by_role(
                        "link", name=re.compile("^Launch")
                    )
                ).to_be_visible(timeout=60_000)
                await page.screenshot(path=ARTIFACTS / "4-after-upgrade.png")
            finally:
                await browser.close()

        started = time.monotonic()
        expected = expected_after_uninstall(user_pod)
        left = await release_leftovers(api, cluster, expected)
        timings["helm uninstall → release gone"] = time.monotonic() - started
        (ARTIFACTS / "left-after-uninstall.json").write_text(json.dumps(left, indent=2))
        assert left == expected, left
        # what docs/deploy.md says to run for the rest
        await core.delete_collection_namespaced_pod(
            NAMESPACE, label_selector="component=singleuser-server"
        )
        await core.delete_collection_namespaced_config_map(
            NAMESPACE, label_selector="app.kubernetes.io/managed-by=aicoe-image-builder"
        )
        deadline = time.monotonic() + 120
        while (await core.list_namespaced_pod(NAMESPACE)).items:
            assert time.monotonic() < deadline, "pods left after the documented clean-up"
            await asyncio.sleep(1)
    except BaseException:
        keep_pod_logs(node)  # before anything uninstalls the pods with their logs
        raise
    finally:
        await api.close()
        print("\n" + "\n".join(f"{k}: {v:.1f} s" for k, v in timings.items()))
        (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=2))


async def policy_selects_build_pods_and_allows_their_peers(
    api: client.ApiClient, cluster: NodeCluster, git: GitServer
) -> None:
    """Nothing here enforces NetworkPolicies (see docs/deploy.md): prove instead that the
    build policy's selector picks the build pods that ran (in the build namespace, admitted by
    the chart's admission policy) and only them, and that its egress rules admit what those
    pods used (DNS, the git server, the registry) and nothing else."""
    node = cluster.node
    api_path = f"/apis/networking.k8s.io/v1/namespaces/{BUILDS}/networkpolicies"
    policy = cluster.plane.get(f"{api_path}/{RELEASE}-builder-builds")
    assert policy is not None
    selector = policy["spec"]["podSelector"]["matchLabels"]
    pods = (await client.CoreV1Api(api).list_namespaced_pod(BUILDS)).items
    selected = [
        p.metadata.name for p in pods if selector.items() <= (p.metadata.labels or {}).items()
    ]
    builds = [p.metadata.name for p in pods if p.metadata.labels.get("job-name")]
    assert builds and sorted(selected) == sorted(builds), (selected, builds)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["spec"].get("ingress", []) == []
    registry_port = int(node.registry.rsplit(":", 1)[1])
    assert egress_allows(policy, node.node_ip, 53, "UDP")
    assert egress_allows(policy, node.node_ip, git.port)
    assert egress_allows(policy, node.node_ip, registry_port)
    assert not egress_allows(policy, node.node_ip, cluster.plane.apiserver_port)
    assert not egress_allows(policy, "10.0.0.1", 443)  # the API server's Service


async def policies_select_their_pods(
    cluster: NodeCluster, core: client.CoreV1Api, user_pod: str
) -> None:
    """Each NetworkPolicy of the release namespace selects exactly its component's pods that
    run (the user's notebook pod for the singleuser policy), and the user policy admits no
    private address (another user's pod, the metadata address) beyond DNS."""
    api_path = f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies"
    pods = [
        p
        for p in (await core.list_namespaced_pod(NAMESPACE)).items
        if p.metadata.deletion_timestamp is None
    ]
    expected = {
        f"{RELEASE}-hub": "hub",
        f"{RELEASE}-proxy": "proxy",
        f"{RELEASE}-builder": "image-builder",
        f"{RELEASE}-singleuser": None,
    }
    for name, component in expected.items():
        policy = cluster.plane.get(f"{api_path}/{name}")
        assert policy is not None, name
        selected = [
            p.metadata.name
            for p in pods
            if selects(policy["spec"]["podSelector"], p.metadata.labels or {})
        ]
        if component is None:
            assert selected == [user_pod], (name, selected)
        else:
            assert selected and all(
                p.metadata.labels.get("app.kubernetes.io/component") == component
                for p in pods
                if p.metadata.name in selected
            ), (name, selected)
    user = cluster.plane.get(f"{api_path}/{RELEASE}-singleuser")
    pod_ips = [p.status.pod_ip for p in pods if p.status.pod_ip]
    assert pod_ips and not [ip for ip in pod_ips if egress_allows(user, ip, 8888)]
    assert not egress_allows(user, "169.254.169.254", 80)


def parse_quantity(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for unit, factor in units.items():
        if value.endswith(unit):
            return int(value[: -len(unit)]) * factor
    return int(value)


async def security_and_limits_hold(core: client.CoreV1Api, node, pod_name: str) -> None:
    """The chart's securityContext and memory limit, as the kernel applies them to the
    container's processes: not root, no capabilities, no privilege escalation, the limit."""
    pod = await core.read_namespaced_pod(pod_name, NAMESPACE)
    container_id = pod.status.container_statuses[0].container_id.split("://", 1)[1]
    limit = parse_quantity(pod.spec.containers[0].resources.limits["memory"])
    await asyncio.to_thread(kernel_view_holds, node, pod_name, container_id, limit)


def kernel_view_holds(node, pod_name: str, container_id: str, limit: int) -> None:
    dirs = [
        d
        for root in node._cgroup_hierarchies()
        for d in (root / node.cgroup_root.lstrip("/")).rglob(container_id)
        if d.is_dir()
    ]
    limit_files = [f for d in dirs for f in (d / "memory.limit_in_bytes", d / "memory.max")]
    limit_files = [f for f in limit_files if f.exists()]
    assert limit_files, f"{pod_name}: no memory cgroup for {container_id}"
    assert int(limit_files[0].read_text()) == limit, (pod_name, limit_files[0].read_text())
    pids = (limit_files[0].parent / "cgroup.procs").read_text().split()
    assert pids, f"{pod_name}: no processes"
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in status)
        assert "0" not in fields["Uid"].split(), (pod_name, fields["Uid"])  # runAsNonRoot
        assert int(fields["CapEff"], 16) == 0, (pod_name, fields["CapEff"])  # drop ALL
        assert fields["NoNewPrivs"].strip() == "1", pod_name  # allowPrivilegeEscalation false


async def one_user_pod(core: client.CoreV1Api) -> str:
    pods = await core.list_namespaced_pod(NAMESPACE, label_selector="component=singleuser-server")
    names = [p.metadata.name for p in pods.items if p.metadata.deletion_timestamp is None]
    assert len(names) == 1, names
    return names[0]


async def wait_hub_replaced(core: client.CoreV1Api, old_hub: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ready = await wait_ready(core, timeout)
        if ready["hub"] != old_hub:
            return
        assert time.monotonic() < deadline, "the hub pod was not replaced"
        await asyncio.sleep(1)


# What `helm uninstall` leaves, as docs/deploy.md says: the ImageStream and ImageBuild CRDs and
# what they hold (the catalog with the built images, the build history), and what the hub and
# the builder made at run time, not Helm: running notebook servers and the builder's
# ConfigMaps (kept logs, the quota ledger). The build namespace goes, with its Jobs and pods.
def expected_after_uninstall(user_pod: str) -> dict:
    return {
        "pods": [user_pod],
        "configmaps": ["aicoe-image-builder-quota", "imgbuild-*"],  # + the quota ledger
        "imagestreams": ["dockerfile-notebook", "jupyterlab"],
        "imagebuilds": ["*"],  # the build history, with its CRD
        "crds": ["imagebuilds.aicoe-spawner.io", "imagestreams.image.openshift.io"],
    }


async def release_leftovers(api: client.ApiClient, cluster: NodeCluster, expected: dict) -> dict:
    """``helm uninstall``, then what is still in the namespace and of the release."""
    helm_run(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait")
    core = client.CoreV1Api(api)
    found: dict[str, list[str]] = {}
    listings = {
        "pods": core.list_namespaced_pod,
        "services": core.list_namespaced_service,
        "configmaps": core.list_namespaced_config_map,
        "secrets": core.list_namespaced_secret,
        "serviceaccounts": core.list_namespaced_service_account,
        "persistentvolumeclaims": core.list_namespaced_persistent_volume_claim,
        "deployments": client.AppsV1Api(api).list_namespaced_deployment,
        "jobs": client.BatchV1Api(api).list_namespaced_job,
        "roles": client.RbacAuthorizationV1Api(api).list_namespaced_role,
        "rolebindings": client.RbacAuthorizationV1Api(api).list_namespaced_role_binding,
        "networkpolicies": client.NetworkingV1Api(api).list_namespaced_network_policy,
    }
    deadline = time.monotonic() + 120
    while True:
        for kind, listing in listings.items():
            items = (await listing(NAMESPACE)).items
            names = sorted(
                {
                    re.sub(r"^imgbuild-.*", "imgbuild-*", i.metadata.name)
                    for i in items
                    if i.metadata.name not in ("default", "kube-root-ca.crt")
                    and i.metadata.deletion_timestamp is None
                }
            )
            if names:
                found[kind] = names
            else:
                found.pop(kind, None)
        kept = {
            k: v for k, v in expected.items() if k not in ("imagestreams", "imagebuilds", "crds")
        }
        try:
            await core.read_namespace(BUILDS)
            found["namespaces"] = [BUILDS]
        except client.ApiException as e:
            assert e.status == 404, e
            found.pop("namespaces", None)
        if found == kept or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    custom = client.CustomObjectsApi(api)
    streams = await custom.list_namespaced_custom_object(
        "image.openshift.io", "v1", NAMESPACE, "imagestreams"
    )
    found["imagestreams"] = sorted(s["metadata"]["name"] for s in streams["items"])
    builds = await custom.list_namespaced_custom_object(
        "aicoe-spawner.io", "v1", NAMESPACE, "imagebuilds"
    )
    found["imagebuilds"] = ["*"] if builds["items"] else []
    crds = await client.ApiextensionsV1Api(api).list_custom_resource_definition()
    found["crds"] = sorted(c.metadata.name for c in crds.items)
    return found
