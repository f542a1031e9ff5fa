"""AICoESpawner: KubeSpawner with a live ImageStream catalog, strict user_options and pods
started on the image digest."""

from __future__ import annotations

import asyncio
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from tornado import web
from traitlets import Bool, Dict, Float, Int, List, Unicode, default, validate

from . import options as opts
from .catalog import NOTEBOOK_IMAGE_LABEL, format_image_ref
from .watch import ImageStreamWatch

ANNOTATION_PREFIX = "aicoe-spawner.io/"

DEFAULT_SIZES = [
    {
        "name": "small",
        "display_name": "Small",
        "description": "For exploring and light work",
        "cpu_guarantee": 0.5,
        "cpu_limit": 1,
        "mem_guarantee": "1Gi",
        "mem_limit": "2Gi",
        "default": True,
    },
    {
        "name": "medium",
        "display_name": "Medium",
        "description": "For everyday data science",
        "cpu_guarantee": 1,
        "cpu_limit": 2,
        "mem_guarantee": "4Gi",
        "mem_limit": "8Gi",
    },
    {
        "name": "large",
        "display_name": "Large",
        "description": "For training and big data sets",
        "cpu_guarantee": 2,
        "cpu_limit": 4,
        "mem_guarantee": "8Gi",
        "mem_limit": "16Gi",
    },
]

_templates = Environment(
    loader=PackageLoader("aicoe_spawner", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
_templates.filters["cpu"] = opts.format_cpu
_templates.filters["memory"] = opts.format_memory


def _literal(value: str) -> str:
    """Protect text from KubeSpawner's ``str.format`` expansion of annotations and labels."""
    return value.replace("{", "{{").replace("}", "}}")


class AICoESpawner(KubeSpawner):
    """Spawns notebook pods from Open Data Hub notebook ImageStreams, at a chosen size."""

    image_namespaces = List(
        Unicode(),
        config=True,
        help="""Namespaces whose notebook ImageStreams are offered.
        Default: the namespace the spawner starts pods in.""",
    )
    image_label_selector = Unicode(
        f"{NOTEBOOK_IMAGE_LABEL}=true",
        config=True,
        help="Label selector that picks the ImageStreams offered as notebook images.",
    )
    catalog_sync_timeout = Float(
        10,
        config=True,
        help="""Seconds to wait for the first listing of ImageStreams after the hub starts,
        before the form is shown without images and spawns are refused with 503.""",
    )
    sizes = List(
        Dict(),
        default_value=DEFAULT_SIZES,
        config=True,
        help="""Sizes a user can choose: a list of dicts with name, display_name, description,
        cpu_guarantee, cpu_limit (cores, e.g. 0.5 or "500m"), mem_guarantee, mem_limit
        (e.g. "2Gi") and default (true for the preselected size).""",
    )
    allow_custom_resources = Bool(
        False,
        config=True,
        help="Let users type their own CPU and memory (within max_cpu and max_memory).",
    )
    max_cpu = Float(8, config=True, help="Upper bound for a custom CPU request, in cores.")
    max_memory = Unicode(
        "32Gi", config=True, help='Upper bound for a custom memory request, e.g. "32Gi".'
    )
    gpu_resource_name = Unicode(
        "nvidia.com/gpu",
        config=True,
        help="Extended resource name that GPUs are requested as.",
    )
    max_gpus = Int(
        0,
        config=True,
        help="""GPUs any user may request. 0 offers no GPU choice; group_policies may allow
        more for some groups.""",
    )
    gpu_tolerations = List(
        Dict(),
        default_value=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        config=True,
        help="Tolerations added to pods that request at least one GPU.",
    )
    gpu_node_selector = Dict(
        config=True, help="Node selector added to pods that request at least one GPU."
    )
    reserved_env_names = List(
        Unicode(),
        config=True,
        help="""Environment variable names users may not set, in addition to the built-in
        JUPYTERHUB_*, JPY_*, JUPYTER_IMAGE*, MEM_* and CPU_* names.""",
    )
    reserved_env_prefixes = List(
        Unicode(),
        config=True,
        help="""Environment variable name prefixes users may not set, in addition to the
        built-in ones.""",
    )
    max_env_vars = Int(50, config=True, help="Most environment variables a user may set.")
    max_env_value_length = Int(
        32768, config=True, help="Longest environment variable value a user may set, in bytes."
    )
    default_policy = Dict(
        {"images": ["*"], "sizes": ["*"]},
        config=True,
        help="""What every user may choose: {"images": [patterns], "sizes": [patterns],
        "max_gpus": n}. Image patterns match "namespace/stream" or "stream" (fnmatch).""",
    )
    group_policies = Dict(
        config=True,
        help="""More choices for members of JupyterHub groups, by group name, in the shape of
        default_policy. A user gets the union of the default and their groups' policies.""",
    )

    @validate("sizes")
    def _validate_sizes(self, proposal):
        sizes = [opts.Size.from_config(s) for s in proposal["value"]]
        names = [s.name for s in sizes]
        if len(set(names)) != len(names):
            raise ValueError(f"sizes: names must be unique, got {names}")
        return proposal["value"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not in the hub (e.g. generating docs): the watch starts on first use
        self.catalog_watch()

    # -- catalog and policy -----------------------------------------------------------------

    @property
    def catalog_namespaces(self) -> tuple[str, ...]:
        return tuple(self.image_namespaces or [self.namespace])

    def catalog_watch(self) -> ImageStreamWatch:
        """The hub-wide ImageStream cache (started on first use)."""
        return ImageStreamWatch.shared(
            self.catalog_namespaces,
            self.image_label_selector,
            lambda: shared_client("CustomObjectsApi"),
            log=self.log,
        )

    def user_policy(self) -> opts.Policy:
        """What this user may choose, from the default policy and their groups."""
        return opts.effective_policy(
            sizes=[opts.Size.from_config(s) for s in self.sizes],
            default_policy=self.default_policy,
            group_policies=self.group_policies,
            groups=[g.name for g in getattr(self.user, "groups", [])],
            max_gpus=self.max_gpus,
            allow_custom_resources=self.allow_custom_resources,
            max_cpu=self.max_cpu,
            max_memory=opts.parse_memory(self.max_memory),
            reserved_env_names=self.reserved_env_names,
            reserved_env_prefixes=self.reserved_env_prefixes,
            max_env_vars=self.max_env_vars,
            max_env_value_bytes=self.max_env_value_length,
        )

    # -- options: form, query and REST alike ------------------------------------------------

    @default("options_from_form")
    def _default_options_from_form(self):
        return _options_from_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return AICoESpawner.apply_aicoe_options

    async def apply_aicoe_options(self, user_options: Any) -> None:
        """Validate ``user_options`` against the live catalog and the user's policy and
        configure the pod from them; any problem is HTTP 400 naming the field.

        JupyterHub calls this (as ``apply_user_options``) before ``start()`` for the form,
        ``/hub/spawn?…`` links and the REST API alike.
        """
        watch = self.catalog_watch()
        if not await watch.wait_synced(self.catalog_sync_timeout):
            raise web.HTTPError(503, "image: the image catalog is not available yet, try again")
        try:
            chosen = opts.validate(user_options, watch.catalog, self.user_policy(), self.namespace)
        except opts.OptionsError as e:
            raise web.HTTPError(400, str(e)) from None
        self._apply(chosen)
        canonical = chosen.to_user_options(self.namespace)
        self.user_options = canonical
        if self.orm_spawner is not None:
            self.orm_spawner.user_options = canonical

    _APPLIED_TRAITS = (
        "image",
        "cpu_guarantee",
        "cpu_limit",
        "mem_guarantee",
        "mem_limit",
        "extra_resource_limits",
        "tolerations",
        "node_selector",
        "extra_annotations",
    )

    def _apply(self, chosen: opts.SpawnOptions) -> None:
        # A Spawner object lives across spawns: start every spawn from the configured values.
        if self._configured is None:
            self._configured = {name: getattr(self, name) for name in self._APPLIED_TRAITS}
        for name, value in self._configured.items():
            setattr(self, name, value)
        size = chosen.size
        self.image = chosen.image_ref
        if chosen.cpu is not None:
            self.cpu_guarantee = self.cpu_limit = chosen.cpu
        else:
            self.cpu_guarantee, self.cpu_limit = size.cpu_guarantee, size.cpu_limit
        if chosen.memory is not None:
            self.mem_guarantee = self.mem_limit = chosen.memory
        else:
            self.mem_guarantee, self.mem_limit = size.mem_guarantee, size.mem_limit
        if chosen.gpus:
            self.extra_resource_limits = {
                **self.extra_resource_limits,
                self.gpu_resource_name: str(chosen.gpus),
            }
            self.tolerations = [*self.tolerations, *self.gpu_tolerations]
            self.node_selector = {**self.node_selector, **self.gpu_node_selector}
        self._user_env = dict(chosen.env)
        self.extra_annotations = {
            **self.extra_annotations,
            f"{ANNOTATION_PREFIX}image-stream": _literal(chosen.image.key),
            f"{ANNOTATION_PREFIX}image-tag": _literal(chosen.tag.name),
            f"{ANNOTATION_PREFIX}image-digest": _literal(chosen.tag.digest or ""),
            f"{ANNOTATION_PREFIX}size": _literal(size.name),
            f"{ANNOTATION_PREFIX}gpus": str(chosen.gpus),
        }

    _user_env: dict[str, str] = {}
    _configured: dict[str, Any] | None = None

    def get_env(self) -> dict[str, str]:
        """KubeSpawner's env plus the user's variables, set literally (never expanded)."""
        env = super().get_env()
        env.update(self._user_env)
        return env

    # -- the options form -------------------------------------------------------------------

    @default("options_form")
    def _default_options_form(self):
        return AICoESpawner.render_options_form

    async def render_options_form(self) -> str:
        """The options form, from the in-memory catalog (no API request)."""
        watch = self.catalog_watch()
        await watch.wait_synced(self.catalog_sync_timeout)
        catalog = watch.catalog
        policy = self.user_policy()
        selected = self._preselection(catalog, policy)
        images = [i for i in catalog.visible() if policy.allows_image(i)]
        return _templates.get_template("options_form.html").render(
            images=images,
            policy=policy,
            selected=selected,
            stale=watch.stale,
            default_namespace=self.namespace,
            format_image_ref=format_image_ref,
        )

    def _preselection(self, catalog, policy) -> dict[str, Any]:
        """The saved choices while still valid, else the defaults."""
        for candidate in (self.user_options or {}, {}):
            candidate = {k: v for k, v in dict(candidate).items() if k != "secret_env_names"}
            try:
                chosen = opts.validate(candidate, catalog, policy, self.namespace)
            except opts.OptionsError as e:
                if candidate:
                    self.log.info(
                        "Saved options for %s no longer valid (%s); using defaults",
                        self._log_name,
                        e,
                    )
                continue
            return {
                "image": format_image_ref(chosen.image, chosen.tag, self.namespace),
                "size": chosen.size.name,
                "cpu": chosen.cpu,
                "memory": chosen.memory,
                "gpus": chosen.gpus,
                "env": chosen.env,
            }
        return {"image": None, "size": None, "cpu": None, "memory": None, "gpus": 0, "env": {}}


def _options_from_form(form_data: dict[str, list[str]]) -> dict[str, Any]:
    """Form and query data -> raw user_options; validation happens in apply_aicoe_options."""
    try:
        return opts.options_from_form(form_data)
    except opts.OptionsError as e:
        raise web.HTTPError(400, str(e)) from None
