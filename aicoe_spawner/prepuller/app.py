"""``aicoe-image-puller``: the pre-puller controller as a traitlets Application.

Settings are traits of :class:`ImagePuller` (``c.ImagePuller.<name>`` in a config file,
``--ImagePuller.<name>=…`` or the short flags on the command line).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from kubernetes_asyncio import client, config
from traitlets import Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import Application, catch_config_error

from ..options import parse_memory
from ..watch import ImageStreamWatch
from .controller import PullerController
from .plan import Limits
from .sizes import ImageSizes

SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class ImagePuller(Application):
    """Keeps the catalog's recommended notebook images on every user node."""

    name = "aicoe-image-puller"
    description = (
        "Follows the notebook ImageStreams and keeps the puller DaemonSet's init containers "
        "at the digests to keep on every node (docs/deploy.md, 'Pre-pulling images')."
    )
    examples = """
    aicoe-image-puller --daemonset=aicoe-image-puller --max-images=10
    aicoe-image-puller --config=/etc/aicoe/aicoe_image_puller_config.py
    """
    raise_config_file_errors = True

    aliases = {
        "config": "ImagePuller.config_file",
        "namespace": "ImagePuller.namespace",
        "daemonset": "ImagePuller.daemonset",
        "max-images": "ImagePuller.max_images",
        "tags-per-image": "ImagePuller.tags_per_image",
        "max-size": "ImagePuller.max_size",
        "log-level": "Application.log_level",
    }

    config_file = Unicode(
        "", config=True, help="Python config file to load (c.ImagePuller.<name> = …); none: ''."
    )
    kubeconfig = Unicode(
        "",
        config=True,
        help="Kubeconfig file; '' uses the in-cluster service account when running in a pod, "
        "else the default kubeconfig.",
    )
    namespace = Unicode(
        config=True,
        help="Namespace of the puller DaemonSet. Default: the pod's own namespace "
        "($POD_NAMESPACE, else the service account's), else 'default'.",
    )
    catalog_namespaces = List(
        Unicode(),
        config=True,
        help="Namespaces whose notebook ImageStreams are kept on the nodes, e.g. "
        "['jupyterhub', 'notebook-images']. Empty (default): the DaemonSet's namespace.",
    )
    label_selector = Unicode(
        "opendatahub.io/notebook-image=true",
        config=True,
        help="Label selector of the notebook ImageStreams (the spawner's "
        "AICoESpawner.image_label_selector).",
    )
    daemonset = Unicode(
        "aicoe-image-puller",
        config=True,
        help="Name of the DaemonSet whose 'pull-…' init containers this controller owns.",
    )
    max_images = Integer(
        20,
        min=0,
        config=True,
        help="At most this many images (distinct digests) are kept on each node; the catalog's "
        "first images win (each image's recommended tag before any second tag). 0: none.",
    )
    tags_per_image = Integer(
        1,
        min=0,
        config=True,
        help="Tags kept per image: 1 (default) keeps only the recommended (or default) tag; "
        "more adds the image's other ready, not outdated tags in spec order.",
    )
    max_size = Unicode(
        "",
        config=True,
        help="Total download size of the kept images per node, a quantity such as '50Gi'; "
        "'' (default): no size limit. Sizes come from the registry's manifests (compressed "
        "layers; unpacked on disk they take more); an image whose size cannot be read counts "
        "as 0, and an image that does not fit is skipped for a smaller one after it.",
    )
    platform = Unicode(
        "linux/amd64",
        config=True,
        help="The nodes' platform (os/arch[/variant]): whose manifest of a multi-platform "
        "image gives its size.",
    )
    registry_authfile = Unicode(
        "",
        config=True,
        help="A Docker config file (auths) for reading manifests of private registries, e.g. "
        "a mounted kubernetes.io/dockerconfigjson Secret's .dockerconfigjson; '': anonymous.",
    )
    insecure_registries = List(
        Unicode(),
        config=True,
        help="Registries (host[:port]) read over plain HTTP or without TLS verification.",
    )
    resync_interval = Float(
        60.0,
        min=1.0,
        config=True,
        help="Seconds between full checks of the DaemonSet (besides every catalog change): "
        "repairs hand edits of the DaemonSet.",
    )

    @default("namespace")
    def _namespace_default(self) -> str:
        if os.environ.get("POD_NAMESPACE"):
            return os.environ["POD_NAMESPACE"]
        try:
            return SA_NAMESPACE.read_text().strip() or "default"
        except OSError:
            return "default"

    @validate("max_size")
    def _valid_size(self, proposal) -> str:
        value = proposal["value"].strip()
        if value:
            try:
                parse_memory(value)
            except ValueError as e:
                raise TraitError(f"max_size: {e}") from None
        return value

    @default("log_level")
    def _log_level_default(self) -> int:
        return logging.INFO

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)

    def limits(self) -> Limits:
        return Limits(
            max_images=self.max_images,
            max_bytes=parse_memory(self.max_size) if self.max_size else 0,
            tags_per_image=self.tags_per_image,
        )

    async def api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not self.kubeconfig:
            config.load_incluster_config(client_configuration=configuration)
        else:
            await config.load_kube_config(
                config_file=self.kubeconfig or None, client_configuration=configuration
            )
        return client.ApiClient(configuration)

    def controller(self, api: client.ApiClient) -> PullerController:
        watch = ImageStreamWatch(
            client.CustomObjectsApi(api),
            tuple(self.catalog_namespaces or [self.namespace]),
            self.label_selector,
        )
        watch.start()
        return PullerController(
            api,
            watch,
            self.namespace,
            self.daemonset,
            self.limits(),
            sizes=ImageSizes(
                platform=self.platform,
                authfile=self.registry_authfile,
                insecure_registries=self.insecure_registries,
            )
            if self.max_size
            else None,
            resync=self.resync_interval,
            log=self.log,
        )

    async def serve(self) -> None:
        api = await self.api_client()
        try:
            await self.controller(api).run()
        finally:
            await api.close()

    def start(self) -> None:
        asyncio.run(self.serve())


def main(argv: list[str] | None = None) -> None:
    """The ``aicoe-image-puller`` command (``python -m aicoe_spawner.prepuller``)."""
    ImagePuller.launch_instance(argv)
