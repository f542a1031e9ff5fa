"""AICoESpawner: KubeSpawner with a live ImageStream catalog, strict user_options and pods
started on the image digest.

The class holds the settings and the spawn's flow; the concerns live in their own modules:
``form_view`` (the options form), ``pod`` (options and sizes shaped into the pod, per spawn),
``secret_env`` (the per-server Secret), ``spawn_page`` (the ``/hub/spawn`` page) and
``options`` (pure parsing and validation).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from sqlalchemy import event
from tornado import web
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default, validate

from . import options as opts
from .catalog import NOTEBOOK_IMAGE_LABEL
from .form_view import FormView
from .home_seed import HomeSeed
from .pod import ANNOTATION_PREFIX, APPLIED_TRAITS, PodShaping, check_pull_secret_entries
from .secret_env import SECRET_ENV_COMPONENT, SecretEnv, without_secret_values
from .spawn_page import OptionsRejected, attach_to_hub
from .watch import ImageStreamWatch

__all__ = [
    "ANNOTATION_PREFIX",
    "SECRET_ENV_COMPONENT",
    "AICoESpawner",
    "OptionsRejected",
    "without_secret_values",
]

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


@event.listens_for(orm.Spawner.user_options, "set", retval=True)
def _never_store_secret_values(target, value, oldvalue, initiator):
    """JupyterHub saves the user_options of every spawn request in its database before the
    spawner sees them (REST API, form, links): keep only the names of secret env vars there.
    The spawner still gets the values in memory (``Spawner.user_options``)."""
    return without_secret_values(value)


class AICoESpawner(FormView, PodShaping, SecretEnv, HomeSeed, KubeSpawner):
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
        (e.g. "2Gi"), default (true for the preselected size) and, as in a KubeSpawner
        profile, kubespawner_override (pod settings for this size only, e.g.
        {"node_selector": {"pool": "highmem"}, "tolerations": [...],
        "extra_resource_limits": {...}, "volumes": [...], "volume_mounts": [...],
        "extra_labels": {...}, "image": "quay.io/org/image:tag"}) and profile_options (selects
        whose choices override more, and unlisted_choice: a value the user types, checked by
        its validation_regex). Memory as in KubeSpawner: "2G" is 2 GiB, a number is bytes
        ("512Mi" is accepted too). A resource a size leaves out keeps c.KubeSpawner's value.
        A size with its own image starts it instead of the user's catalog choice, pinned to a
        digest where the catalog knows it. Checked when the hub starts; a mistake stops the
        hub with a message. If KubeSpawner's profile_list is set (e.g. z2jh
        singleuser.profileList), its profiles are the sizes and this setting must stay
        unset.""",
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
    min_cpu = Float(
        opts.DEFAULT_MIN_CPU,
        config=True,
        help="""Lower bound for a custom CPU request, in cores (form, links and REST alike).
        Default 0.1.""",
    )
    min_memory = Unicode(
        "256Mi",
        config=True,
        help="""Lower bound for a custom memory request, e.g. "512Mi" (form, links and REST
        alike). Default 256Mi: less does not start a notebook server usefully.""",
    )
    builder_url = Unicode(
        "",
        config=True,
        help="""URL of the image builder's page (e.g. "/services/image-builder/"). When set,
        the options form links to it: "Build an image from a repository".""",
    )
    form_poll_interval = Float(
        2.0,
        config=True,
        help="""Live updates of an open options form: 0 turns them off. With
        form_layout "lean" the form holds one request open to the hub that answers when an
        image changes (or after form_live_wait seconds), and waits this many seconds before
        asking again after an error; with "full" it re-reads its whole page every this many
        seconds.""",
    )
    form_live_wait = Float(
        25.0,
        config=True,
        help="""Seconds the hub holds an open form's live-update request when nothing
        changes (form_layout "lean"), before answering "no change". Lower it if a proxy in
        front of the hub closes idle requests sooner.""",
    )
    form_layout = Enum(
        ["lean", "full"],
        default_value="lean",
        config=True,
        help="""How the options form is sent. "lean" (default): image cards without their
        version and package lists (loaded when the user opens them), the page compressed
        with gzip when the browser accepts it and composed from cached compressed pieces,
        and live updates from a small endpoint that reports only what changed (hundreds of
        bytes). "full": every card with all its lists, sent uncompressed, and live updates
        that re-read the whole page (the form before issue 12; kept for comparison).""",
    )
    form_filter_threshold = Int(
        8, config=True, help="Show a filter box above the images when there are more than this."
    )
    seed_home = Bool(
        True,
        config=True,
        help="""Copy the image's home folder into the user's home volume when a server starts,
        so that the repository's files a built image keeps in the home are there although a
        persistent volume is mounted over it. Only when a writable volume is mounted at
        home_path: an init container runs the same image (same digest, securityContext and
        resources as the notebook) and copies every file or folder the volume does not have
        yet; nothing that exists is overwritten. Once per image digest (marker
        .aicoe-spawner/seeded/<digest> in the home): a file the user deleted comes back only
        with a new image. False: the volume is mounted as it is.""",
    )
    home_path = Unicode(
        "/home/jovyan",
        config=True,
        help="""The notebook user's home folder in the offered images (where built images keep
        the repository's files; /home/jovyan in Jupyter's images, /opt/app-root/src in Open
        Data Hub's). seed_home acts when a volume is mounted exactly here.""",
    )

    registry_pull_secrets = List(
        Dict(),
        config=True,
        help="""Pull Secrets for images under a registry path: a list of entries
        {"registry": "quay.io/my-org", "pullSecret": "my-org-pull"}. A server whose image
        lies under an entry's registry (the first that matches) gets its Secret as an
        imagePullSecret, besides KubeSpawner's image_pull_secrets; the Secret must exist in
        the users' namespace. The image builder's destinations (ImageBuilder.destinations)
        have this shape and fit as they are (the Helm chart renders builder.destinations to
        both). Only the admin's configuration decides it, never an image or a repository.""",
    )

    @validate("registry_pull_secrets")
    def _validate_registry_pull_secrets(self, proposal):
        try:
            check_pull_secret_entries(proposal["value"])
        except ValueError as e:
            raise TraitError(f"registry_pull_secrets: {e}") from None
        return proposal["value"]

    @validate("sizes")
    def _validate_sizes(self, proposal):
        self._check_sizes([opts.Size.from_config(s) for s in proposal["value"]])
        return proposal["value"]

    @validate("user_options")
    def _keep_secret_values_out(self, proposal):
        """JupyterHub sets ``user_options`` before group overrides, hooks and
        ``apply_user_options`` run; meanwhile the REST API shows them. Keep only the names of
        secret env vars there and hand the values to this spawn's ``apply_user_options``."""
        value = proposal["value"]
        stripped = without_secret_values(value)
        if stripped is not value:
            self._incoming_secret_env = (stripped, value["secret_env"])
        return stripped

    def __init__(self, *args, **kwargs) -> None:
        config_check = kwargs.pop("_config_check", False)
        self._incoming_secret_env = None
        self._configured = {}
        self._user_env = {}
        self._secret_env = {}
        self._secret_env_names = []
        self._options_applied = False
        super().__init__(*args, **kwargs)
        # Before any spawn changes them: the settings a spawn may set.
        self._remember_configured((*APPLIED_TRAITS, *sorted(opts.OVERRIDE_KEYS)))
        if config_check:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not in the hub (e.g. generating docs): the watch starts on first use
        self.catalog_watch()

    # -- catalog, sizes and policy ------------------------------------------------------------

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

    def _sizes_configured(self) -> bool:
        """Whether the admin set ``sizes`` (else the defaults apply)."""
        return any(
            "sizes" in self.config.get(cls.__name__, {})
            for cls in type(self).mro()
            if cls.__name__ in self.config
        )

    def configured_sizes(self) -> list[opts.Size]:
        """The sizes: ``sizes``, or KubeSpawner's ``profile_list`` read as sizes."""
        if self.profile_list:
            if self._sizes_configured():
                raise ValueError(
                    "both sizes and profile_list are set: keep one (profile_list is read as "
                    "sizes; to write sizes, move each profile into c.AICoESpawner.sizes)"
                )
            sizes = opts.sizes_from_profile_list(self.profile_list)
            self._check_sizes(sizes)
            return sizes
        return [opts.Size.from_config(s) for s in self.sizes]

    def _check_sizes(self, sizes: list[opts.Size]) -> None:
        """Unique names, and override values of the right type for their KubeSpawner trait."""
        names = [s.name for s in sizes]
        if len(set(names)) != len(names):
            raise ValueError(f"sizes: names must be unique, got {names}")
        traits = self.traits()
        for size in sizes:
            layers = (
                [(f"size {size.name!r}", size.overrides)]
                + [
                    (f"size {size.name!r}: option {o.name!r}: choice {c.name!r}", c.overrides)
                    for o in size.options
                    for c in o.choices
                ]
                + [
                    (f"size {size.name!r}: option {o.name!r}: unlisted", o.unlisted.overrides)
                    for o in size.options
                    if o.unlisted is not None
                ]
            )
            for where, overrides in layers:
                for key, value in overrides.items():
                    if callable(value):
                        continue
                    try:
                        traits[key].validate(self, value)
                    except TraitError as e:
                        raise ValueError(f"{where}: kubespawner_override {key!r}: {e}") from None

    def check_configuration(self) -> None:
        """Raise ValueError with a message for the admin if sizes, profile_list or policies
        cannot work. The hub runs this once at startup (see ``spawn_page.attach_to_hub``)."""
        self.configured_sizes()
        self.user_policy(groups=())

    def user_policy(self, groups=None) -> opts.Policy:
        """What this user may choose, from the default policy and their groups."""
        if groups is None:
            groups = [g.name for g in getattr(self.user, "groups", [])]
        return opts.effective_policy(
            sizes=self.configured_sizes(),
            default_policy=self.default_policy,
            group_policies=self.group_policies,
            groups=groups,
            max_gpus=self.max_gpus,
            allow_custom_resources=self.allow_custom_resources,
            max_cpu=self.max_cpu,
            max_memory=opts.parse_memory(self.max_memory),
            min_cpu=self.min_cpu,
            min_memory=self.min_memory,
            reserved_env_names=self.reserved_env_names,
            reserved_env_prefixes=self.reserved_env_prefixes,
            max_env_vars=self.max_env_vars,
            max_env_value_bytes=self.max_env_value_length,
        )

    # -- options: form, query and REST alike ------------------------------------------------

    @default("options_from_form")
    def _default_options_from_form(self):
        return _options_from_form

    def options_from_query(self, query_data):
        """``/hub/spawn?…`` links carry only image, size, cpu, memory and gpus: a link shares a
        choice; it never sets variables or secrets for whoever opens it."""
        for key in query_data:
            if key not in opts.LINK_FIELDS:
                raise OptionsRejected(
                    opts.OptionsError(
                        str(key)[:60],
                        "cannot be given in a link; links carry only "
                        + ", ".join(opts.LINK_FIELDS),
                    )
                )
        return _options_from_form(query_data)

    async def check_user_options(self, user_options: Any) -> opts.SpawnOptions:
        """``user_options`` validated against the live catalog and this user's policy;
        OptionsRejected (HTTP 400 naming the field) or 503 while there is no catalog."""
        watch = self.catalog_watch()
        if not await watch.wait_synced(self.catalog_sync_timeout):
            raise web.HTTPError(503, "image: the image catalog is not available yet, try again")
        try:
            return opts.validate(user_options, watch.catalog, self.user_policy(), self.namespace)
        except opts.OptionsError as e:
            raise OptionsRejected(e) from None

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return AICoESpawner.apply_aicoe_options

    async def _run_apply_user_options(self, user_options):
        # JupyterHub logs a traceback for any error here; a rejected choice is the user's
        # mistake, not the hub's: JupyterHub's one "Error starting …" line is enough.
        if self.apply_user_options is AICoESpawner.apply_aicoe_options:
            await self.apply_aicoe_options(user_options)
        else:
            await super()._run_apply_user_options(user_options)

    async def apply_aicoe_options(self, user_options: Any) -> None:
        """Validate ``user_options`` against the live catalog and the user's policy and
        configure the pod from them; any problem is HTTP 400 naming the field.

        JupyterHub calls this (as ``apply_user_options``) before ``start()`` for the form,
        ``/hub/spawn?…`` links and the REST API alike.
        """
        incoming, self._incoming_secret_env = self._incoming_secret_env, None
        if incoming is not None and incoming[0] is user_options:
            user_options = {**user_options, "secret_env": incoming[1]}
        # Whatever happens next, secret values do not stay in the spawner's user_options.
        self.user_options = without_secret_values(user_options)
        self._check_rest_body()
        chosen = await self.check_user_options(user_options)
        self.shape_pod(chosen)
        self._options_applied = True
        if chosen.own_image is not None:
            own = chosen.own_image
            self.log.info(
                "%s starts the image of size %r: %s (%s: %s)",
                self._log_name,
                chosen.size.name,
                own.ref,
                own.resolution,
                own.reason,
            )
        self._secret_env = dict(chosen.secret_env)
        self._secret_env_names = sorted(chosen.secret_env)
        canonical = chosen.to_user_options(self.namespace)
        self.user_options = canonical
        if self.orm_spawner is not None:
            # JupyterHub commits right after start() begins; no extra commit needed here.
            self.orm_spawner.user_options = canonical

    async def load_user_options(self) -> None:
        """KubeSpawner's hook, run at the start of ``start()``. In a hub spawn the options
        were applied by ``apply_user_options`` already; called directly (as KubeSpawner
        allows, e.g. ``spawner.user_options = {"profile": "gpu"}`` then this), it validates and
        applies ``user_options`` now. A refused choice raises OptionsRejected (a ValueError)."""
        if self._options_applied:
            self._options_applied = False
            return
        await self.apply_aicoe_options(self.user_options or {})
        self._options_applied = False

    def _check_rest_body(self) -> None:
        """JupyterHub starts with saved options when a REST body is falsy (``[]``, ``0``,
        ``false``, ``""``): anything but a JSON object is a 400 here."""
        handler = self.handler
        if not isinstance(handler, APIHandler) or handler.request.method != "POST":
            return
        body = (handler.request.body or b"").strip()
        if not body:
            return
        try:
            parsed = json.loads(body)
        except ValueError:
            return  # JupyterHub answered 400 already
        if not isinstance(parsed, dict):
            raise OptionsRejected(
                opts.OptionsError(
                    "user_options", f"must be a JSON object, got {opts.errors.type_name(parsed)}"
                )
            )

    @default("options_form")
    def _default_options_form(self):
        return AICoESpawner.render_options_form


def _options_from_form(form_data: dict[str, list[str]]) -> dict[str, Any]:
    """Form and query data -> raw user_options; validation happens in apply_aicoe_options."""
    try:
        return opts.options_from_form(form_data)
    except opts.OptionsError as e:
        raise OptionsRejected(e) from None


attach_to_hub(AICoESpawner)
