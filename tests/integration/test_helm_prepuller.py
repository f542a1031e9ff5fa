"""The chart's pre-puller (prePuller.*): values reach the controller and the DaemonSet, and the
controller works with exactly the chart's ServiceAccount and Roles on the real API server."""

from __future__ import annotations

import asyncio

from harness.helm_chart import apply, by_kind, one, probe, render
from harness.kube import create_imagestream, reference, wait_for
from kubernetes_asyncio import client

from aicoe_devcluster import api_client
from aicoe_spawner.prepuller.app import ImagePuller
from aicoe_spawner.prepuller.controller import PullerController
from aicoe_spawner.prepuller.daemonset import DEFAULT_TEMPLATE, pulled_images, template_of
from aicoe_spawner.watch import ImageStreamWatch

NAME = "r-aicoe-spawner-image-puller"


def controller_app(docs: list[dict]) -> ImagePuller:
    """The controller as the chart's Deployment starts it (its command-line arguments)."""
    container = one(docs, "Deployment", NAME)["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["aicoe-image-puller"]
    app = ImagePuller()
    app.initialize(container["args"])
    return app


def test_values_reach_the_controller_and_the_daemonset():
    docs = render(
        namespace="jh",
        release="r",
        values={
            "prePuller.maxImages": 5,
            "prePuller.tagsPerImage": 2,
            "prePuller.nodeSelector": {"node-role/user": "true"},
            "imageStreams.namespaces": ["jh", "images"],
            "builder.imageImport.namespaces": ["jh", "images"],
            "singleuser.imagePullSecrets": ["notebooks-pull"],
        },
    )
    app = controller_app(docs)
    assert (app.daemonset, app.max_images, app.tags_per_image) == (NAME, 5, 2)
    assert app.catalog_namespaces == ["jh", "images"]
    pod = one(docs, "DaemonSet", NAME)["spec"]["template"]["spec"]
    # the kept images come from the users' registries: the users' pods' pull secrets
    assert pod["imagePullSecrets"] == [{"name": "notebooks-pull"}]
    assert pod["nodeSelector"] == {"node-role/user": "true"}
    assert {t["key"] for t in pod["tolerations"]} >= {"hub.jupyter.org/dedicated"}
    assert [c["name"] for c in pod["initContainers"]] == ["copy-busybox"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the catalog is read in every catalog namespace; the DaemonSet is the only thing written
    catalog = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == f"{NAME}-catalog"]
    assert sorted(r["metadata"]["namespace"] for r in catalog) == ["images", "jh"]
    own = one(docs, "Role", NAME)
    assert own["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["daemonsets"],
            "resourceNames": [NAME],
            "verbs": ["get", "patch"],
        }
    ]


def test_the_daemonset_says_how_pull_containers_look():
    ds = one(render(release="r"), "DaemonSet", NAME)
    template = template_of(ds)
    assert template is not DEFAULT_TEMPLATE  # the chart's annotation, not the fallback
    assert template["command"] == DEFAULT_TEMPLATE["command"]
    assert template["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"] for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert {m["name"] for m in template["volumeMounts"]} <= volumes


def test_disabled_renders_nothing():
    docs = render(release="r", values={"prePuller.enabled": False})
    assert not [d for d in docs if d["metadata"]["name"].startswith(NAME)]


def test_openshift_assigns_the_uids():
    docs = render("openshift", release="r")
    for doc in (one(docs, "DaemonSet", NAME), one(docs, "Deployment", NAME)):
        security = doc["spec"]["template"]["spec"]["securityContext"]
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(security)


async def sa_token(kube: client.ApiClient, namespace: str) -> str:
    request = await client.CoreV1Api(kube).create_namespaced_service_account_token(
        NAME, namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}}
    )
    return request.status.token


async def test_controller_runs_with_the_charts_service_account(kube, namespace, token_kubeconfig):
    docs = render(namespace=namespace, release="r")
    mine = [d for d in docs if d["metadata"]["name"].startswith(NAME)]
    await apply(kube, [d for d in mine if d["kind"] != "Deployment"], namespace)
    await create_imagestream(
        kube, namespace, "minimal", {"2025.2": {"opendatahub.io/default-image": "true"}}
    )
    app = controller_app(docs)
    api = await api_client(token_kubeconfig(await sa_token(kube, namespace), namespace))
    watch = ImageStreamWatch(
        client.CustomObjectsApi(api), tuple(app.catalog_namespaces), app.label_selector
    )
    watch.start()
    controller = PullerController(api, watch, namespace, app.daemonset, app.limits())
    task = asyncio.create_task(controller.run())
    try:

        async def patched():
            ds = await client.AppsV1Api(kube).read_namespaced_daemon_set(
                NAME, namespace, _preload_content=False
            )
            return pulled_images(await ds.json())

        want = [reference(namespace, "minimal", "2025.2")]
        assert await wait_for(patched, timeout=15) == want
        # and nothing more: another DaemonSet, pods, Secrets are refused
        assert await probe(api, "apps", "daemonsets", "patch", namespace, "other") == 403
        assert await probe(api, "apps", "daemonsets", "list", namespace) == 403
        assert await probe(api, "", "pods", "list", namespace) == 403
        assert await probe(api, "", "secrets", "get", namespace, "any") == 403
        assert await probe(api, "image.openshift.io", "imagestreams", "patch", namespace) == 403
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await watch.stop()
        await api.close()


def test_a_size_limit_reads_manifests_with_the_named_secret():
    docs = render(
        release="r",
        values={
            "prePuller.maxSize": "40Gi",
            "prePuller.registryAuthSecret": "registry-auth",
            "prePuller.insecureRegistries": ["10.0.0.5:5000"],
        },
    )
    app = controller_app(docs)
    assert app.limits().max_bytes == 40 * 2**30
    assert app.insecure_registries == ["10.0.0.5:5000"]
    pod = one(docs, "Deployment", NAME)["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "registry-auth"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "registry-auth"]
    assert volume["secret"]["secretName"] == "registry-auth"
    assert app.registry_authfile == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    # without a size limit there is nothing to read: no secret, no size arguments
    plain = controller_app(render(release="r"))
    assert (plain.max_size, plain.registry_authfile) == ("", "")
